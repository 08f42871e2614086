"""`make bench`: measure, then write bench/results/latest.json and latest.md.

Sections measured in this run replace the same sections of the previous file; sections not measured are
kept, so one slow section can be refreshed alone (``--only ops``).  Run on an idle machine with one BLAS
thread per participant (the Makefile sets OPENBLAS_NUM_THREADS=1).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

from bench.machine import machine_info
from bench.targets import evaluate
from mpc_core.allocator import tune_allocator

RESULTS = Path(__file__).resolve().parent / "results"


def _sections() -> dict[str, object]:
    from bench.cluster_bench import bench_network, bench_tuning
    from bench.grpc_ops_bench import bench_grpc_ops
    from bench.model_bench import bench_attention, bench_forward
    from bench.ops_bench import bench_ops
    from bench.ring_matmul_bench import bench_ring_matmul

    return {
        "ring_matmul": bench_ring_matmul,
        "ops": lambda: bench_ops() + bench_grpc_ops(),
        "attention": bench_attention,
        "forward": bench_forward,
        "network": bench_network,
        "tuning": bench_tuning,
    }


def render_markdown(results: dict) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"Measured {results['measured_at']} on {results['machine']['cpu']} "
        f"({results['machine']['cores']} cores), BLAS {results['machine']['blas']}.",
        "",
        "## Targets",
        "",
        "| target | goal | ours | met |",
        "|---|---|---|---|",
    ]
    for row in results["targets"]:
        met = {True: "yes", False: "**no**", None: "-"}[row["met"]]
        lines.append(f"| {row['target']} | {row['goal']} | {row['ours']} | {met} |")
    if results.get("ring_matmul"):
        lines += [
            "",
            "## ring_matmul (seconds)",
            "",
            "| shape | ring | ring, fixed operand | numpy uint64 | float64 | speed-up vs uint64 |",
            "|---|---|---|---|---|---|",
        ]
        for r in results["ring_matmul"]:
            lines.append(
                f"| {r['shape']} | {r['ring_s']:.4f} | {r['ring_fixed_operand_s']:.4f} "
                f"| {r['numpy_uint64_s']:.4f} "
                f"| {r['float64_s']:.4f} | {r['numpy_uint64_s'] / r['ring_s']:.1f}x |"
            )
    if results.get("ops"):
        lines += [
            "",
            "## ops",
            "",
            "| suite | op | shape | transport | seconds | party CPU s | MiB | dealer MiB | rounds "
            "| max abs err |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in results["ops"]:
            lines.append(
                f"| {r['suite']} | {r['op']} | {r['shape']} | {r['transport']} | {r['seconds']:.3f} "
                f"| {r['party_cpu_seconds']} | {r['bytes'] / 2**20:.2f} | {r['dealer_bytes'] / 2**20:.2f} "
                f"| {r['rounds']} | {r['max_abs_err']:.1e} |"
            )
    if results.get("attention"):
        lines += [
            "",
            "## attention (one layer's attention core, 12 heads of 64, batch 1)",
            "",
            "| suite | attention | seq | seconds | MiB | dealer MiB | rounds "
            "| err vs plaintext (same mode) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in results["attention"]:
            lines.append(
                f"| {r['suite']} | {r['attention']} | {r['seq_len']} | {r['seconds']:.2f} "
                f"| {r['bytes'] / 2**20:.1f} | {r['dealer_bytes'] / 2**20:.1f} | {r['rounds']} "
                f"| {r['max_abs_err_vs_plaintext_same_mode']:.1e} |"
            )
    if results.get("forward"):
        lines += [
            "",
            "## forward (all-MiniLM-L6-v2, similarity head)",
            "",
            "| suite | attention | batch x seq | seconds | x plaintext fp32 | party CPU s | MiB | dealer MiB "
            "| rounds | max abs logit err |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in results["forward"]:
            lines.append(
                f"| {r['suite']} | {r['attention']} | {r['batch']} x {r['seq_len']} | {r['seconds']:.1f} "
                f"| {r['seconds'] / r['plaintext_seconds']:.0f}x | {r['party_cpu_seconds']} "
                f"| {r['bytes'] / 2**20:.0f} | {r['dealer_bytes'] / 2**20:.0f} | {r['rounds']} "
                f"| {r['max_abs_err']:.1e} |"
            )
    if results.get("network"):
        lines += [
            "",
            "## network (all-MiniLM-L6-v2 forward over gRPC, shaped peer links, similarity head)",
            "",
            "| suite | network | attention | batch x seq | seconds | party CPU s | MiB (all peers) "
            "| rounds |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in results["network"]:
            lines.append(
                f"| {r['suite']} | {r['network']} | {r['attention']} | {r['batch']} x {r['seq_len']} "
                f"| {r['seconds']:.1f} | {r['party_cpu_seconds']} | {r['bytes'] / 2**20:.0f} "
                f"| {r['rounds']} |"
            )
    if results.get("tuning"):
        lines += [
            "",
            "## tuning (one CMA-ES generation: popsize 20 x 32 SST-2 rows, L = 5, d = 50, softmax)",
            "",
            "| backend | seconds | party CPU s | MiB (all peers) | rounds | max abs loss err vs plain |",
            "|---|---|---|---|---|---|",
        ]
        for r in results["tuning"]:
            err = f"{r['max_abs_loss_err']:.1e}" if "max_abs_loss_err" in r else "-"
            lines.append(
                f"| {r['backend']} | {r['seconds']:.1f} | {r.get('party_cpu_seconds', '-')} "
                f"| {r['bytes'] / 2**20:.0f} | {r['rounds']} | {err} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sections = _sections()
    parser.add_argument("--only", default=",".join(sections), help="comma-separated sections to measure")
    args = parser.parse_args(argv)
    tune_allocator()  # as the servers do (mpc_core/allocator.py)
    RESULTS.mkdir(parents=True, exist_ok=True)
    latest = RESULTS / "latest.json"
    results = json.loads(latest.read_text()) if latest.exists() else {}
    for name in args.only.split(","):
        if name not in sections:
            parser.error(f"unknown section {name!r}; choose from {sorted(sections)}")
        print(f"bench: {name}", flush=True)
        results[name] = sections[name]()
    results["measured_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    results["machine"] = machine_info()
    results["targets"] = evaluate(results)
    latest.write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "latest.md").write_text(render_markdown(results))
    print(render_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
