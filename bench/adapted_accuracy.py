"""Accuracy of the adapted random-feature checkpoints against exact softmax (issue 13), plain backend.

For every (mode, task, seed): ``secp-tune run --backend plain`` with the default recipe (the data owner's
command, nothing re-implemented here), then ``secp-tune eval RUN --split test --json`` once, which scores the
saved tuned prompt and the run's zero-shot prompt (z = 0).  ``softmax`` runs on the original checkpoint,
``favor`` / ``rfa`` on the folders ``secp-adapt-model`` wrote (their recorded attention configuration is
what the run uses).  Runs and evals already in the runs folder are reused, so the driver can be resumed.

    .venv/bin/python -m bench.adapted_accuracy --model favor=/tmp/h13/favor --model rfa=/tmp/h13/rfa \\
        --tasks sst2 ag_news --seeds 0 1 2 --runs /tmp/h13/runs --out bench/results/adapted_accuracy.json

``--secure N`` instead compares the secure forward of each adapted checkpoint (zero-shot logits of the first
N test examples of each task, weights shared in memory with the model owner's ``share_tensors``, all
participants as threads) with its float64 plaintext forward, in both suites: max abs logit error.

Nothing is hard-coded: every figure in the output is read from the runs' own records.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECP_TUNE = str(Path(sys.executable).parent / "secp-tune")


def _model_args(pairs: list[str]) -> dict[str, str]:
    models = {}
    for pair in pairs:
        mode, _, folder = pair.partition("=")
        if mode not in ("softmax", "rfa", "favor") or not folder:
            raise SystemExit(f"--model wants MODE=FOLDER with MODE softmax, rfa or favor, not {pair!r}")
        models[mode] = str(Path(folder).resolve())
    return models


def run_one(mode: str, model: str, task: str, seed: int, runs: Path, extra: list[str]) -> dict:
    """One tuning run and its single test evaluation (reused when already there)."""
    run = runs / f"{mode}_{task}_s{seed}"
    seconds = None
    if not (run / "report.json").is_file():
        if run.exists():
            raise SystemExit(f"{run} exists but is not a finished run; remove it or resume it by hand")
        cmd = [SECP_TUNE, "run", "--task", task, "--backend", "plain", "--model", model, "--attention", mode]
        cmd += ["--seed", str(seed), "--out", str(run), "--quiet", *extra]
        if mode != "softmax":  # the record says whether fidelity holds; the accuracy is measured either way
            cmd.append("--accept-low-fidelity")
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
        seconds = time.perf_counter() - start
    ev_file = run / "eval_test.json"
    if not ev_file.is_file():
        subprocess.run(
            [SECP_TUNE, "eval", str(run), "--split", "test", "--json"], check=True, capture_output=True
        )
    ev = json.loads(ev_file.read_text())
    report = json.loads((run / "report.json").read_text())
    return {
        "mode": mode,
        "task": task,
        "seed": seed,
        "run": str(run),
        "test_tuned": ev["tuned"],
        "test_zero_shot": ev["zero_shot"],
        "dev_best": report.get("best_dev"),
        "dev_zero_shot": report.get("zero_shot_dev"),
        "run_seconds": seconds,
    }


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    keys = sorted({(r["mode"], r["task"]) for r in rows})
    for mode, task in keys:
        sel = [r for r in rows if r["mode"] == mode and r["task"] == task]
        entry = {"mode": mode, "task": task, "seeds": sorted(r["seed"] for r in sel)}
        for field in ("test_tuned", "test_zero_shot"):
            vals = [r[field] for r in sel]
            entry[field] = {
                "mean": statistics.fmean(vals),
                "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                "min": min(vals),
                "max": max(vals),
            }
        out.append(entry)
    for entry in out:
        ref = next((e for e in out if e["mode"] == "softmax" and e["task"] == entry["task"]), None)
        if ref is not None:
            for field in ("test_tuned", "test_zero_shot"):
                entry[field]["minus_softmax"] = entry[field]["mean"] - ref[field]["mean"]
    return out


def secure_check(models: dict[str, str], tasks: list[str], count: int, suites: list[str]) -> list[dict]:
    """Secure vs float64 plaintext of each adapted checkpoint's whole zero-shot forward."""
    import numpy as np
    from transformers import AutoTokenizer

    from bench.fidelity import TASKS, read_tsv
    from contract.embedding import PublicEmbeddings
    from contract.inputs import encode_texts
    from model_owner.share import share_tensors
    from mpc_core.nn.adapted import attention_for, read_record
    from mpc_core.nn.backend import PlainBackend, SecureBackend
    from mpc_core.nn.batch import candidate_logits
    from mpc_core.nn.encoder import encode
    from mpc_core.nn.heads import SimilarityHead
    from mpc_core.nn.weights import load_checkpoint, split_public, wrap_shares
    from mpc_core.prg import system_prg
    from mpc_core.ring import FixedPoint
    from mpc_core.runtime import run_parties

    rows = []
    for mode, folder in models.items():
        cfg, weights = load_checkpoint(folder)
        attn = attention_for(mode, 64, read_record(folder))
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        emb = PublicEmbeddings.from_tensors(cfg, weights)
        _, secret = split_public(weights)
        shapes = {k: v.shape for k, v in secret.items()}
        for task in tasks:
            # anchors as the similarity head computes them: this model and mode, no prompt, in plaintext
            anchors_enc = encode_texts(tokenizer, TASKS[task], 0, 128)
            hid = encode(PlainBackend(weights), cfg, attn, emb(anchors_enc.input_ids), anchors_enc.mask)
            keep = anchors_enc.mask[..., None]
            anchors = (hid * keep).sum(1) / keep.sum(1)
            head = SimilarityHead(anchors / np.linalg.norm(anchors, axis=-1, keepdims=True), scale=20.0)
            texts, _ = read_tsv(ROOT / "data" / task / "test.tsv")
            enc = encode_texts(tokenizer, texts[:count], 0, 128)
            examples = emb(enc.input_ids)
            prompts = np.zeros((1, 0, cfg.hidden))
            ref = candidate_logits(PlainBackend(weights), cfg, attn, head, examples, prompts, enc.mask)
            for suite in suites:
                fp = FixedPoint(16)
                shares = share_tensors(secret, suite, fp, system_prg())

                def program(
                    ctx, E, P, shares=shares, head=head, mask=enc.mask, shapes=shapes, cfg=cfg, attn=attn
                ):
                    own = shares[ctx.participant] if ctx.participant < len(shares) else None
                    B = SecureBackend(ctx, wrap_shares(ctx, own, shapes))
                    return candidate_logits(B, cfg, attn, head, E, P, mask).reveal()

                start = time.perf_counter()
                got = run_parties(suite, program, examples, prompts, fp=fp)[0]
                seconds = time.perf_counter() - start
                err = float(np.abs(got - ref).max())
                row = {
                    "mode": mode,
                    "model": Path(folder).name,
                    "task": task,
                    "suite": suite,
                    "examples": count,
                    "tokens": int(enc.mask.sum()),
                    "max_abs_logit_error": err,
                    "max_abs_logit": float(np.abs(ref).max()),
                    "predictions_agree": float(np.mean(got.argmax(-1) == ref.argmax(-1))),
                    "wall_seconds": seconds,
                }
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def task_cosines(models: dict[str, str], tasks: list[str], count: int) -> list[dict]:
    """How closely each adapted model follows the original softmax model on task text (dev split only:
    an evaluation, nothing is fitted to it): the pooled sentence-embedding cosine of the adapted mode with
    the original's on the first ``count`` dev texts and the anchor texts, and the same for softmax on the
    adapted weights (what the similarity anchors are computed with today, ``heads.similarity_anchors``)."""
    import numpy as np
    from transformers import AutoTokenizer

    from bench.fidelity import TASKS, minilm_dir, read_tsv
    from contract.embedding import PublicEmbeddings
    from contract.inputs import encode_texts
    from mpc_core.nn.adapted import read_record
    from mpc_core.nn.backend import PlainBackend
    from mpc_core.nn.config import AttentionConfig
    from mpc_core.nn.encoder import encode
    from mpc_core.nn.weights import load_checkpoint

    cfg, original = load_checkpoint(minilm_dir())

    def pooled(hidden, mask):
        keep = mask[..., None]
        p = (hidden * keep).sum(1) / keep.sum(1)
        return p / np.linalg.norm(p, axis=-1, keepdims=True)

    rows = []
    for mode, folder in models.items():
        if mode == "softmax":
            continue
        _, weights = load_checkpoint(folder)
        attn = read_record(folder).attention
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        emb = PublicEmbeddings.from_tensors(cfg, original)
        for task in tasks:
            texts, _ = read_tsv(ROOT / "data" / task / "dev.tsv")
            for name, sel in (("dev", texts[:count]), ("anchors", TASKS[task])):
                enc = encode_texts(tokenizer, sel, 0, 128)
                x, m = emb(enc.input_ids), enc.mask
                teacher = pooled(encode(PlainBackend(original), cfg, AttentionConfig(), x, m), m)
                got = pooled(encode(PlainBackend(weights), cfg, attn, x, m), m)
                soft = pooled(encode(PlainBackend(weights), cfg, AttentionConfig(), x, m), m)
                row = {
                    "mode": mode,
                    "model": Path(folder).name,
                    "task": task,
                    "texts": name,
                    "count": len(sel),
                    "mode_cosine_mean": float((teacher * got).sum(-1).mean()),
                    "mode_cosine_min": float((teacher * got).sum(-1).min()),
                    "softmax_on_adapted_cosine_mean": float((teacher * soft).sum(-1).mean()),
                }
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def zero_shot(models: dict[str, str], tasks: list[str], batch: int = 64) -> list[dict]:
    """Zero-shot test accuracy without prompt rows (``[CLS] text [SEP]``, similarity head, scale 20), each
    mode on its own checkpoint, with the label anchors encoded two ways: with exact softmax on the
    checkpoint's weights (what ``heads.similarity_anchors`` does for every run today) and with the run's
    own attention mode (the same function the examples go through)."""
    import numpy as np
    from transformers import AutoTokenizer

    from bench.fidelity import TASKS, read_tsv
    from contract.embedding import PublicEmbeddings
    from contract.inputs import encode_texts
    from mpc_core.nn.adapted import attention_for, read_record
    from mpc_core.nn.backend import PlainBackend
    from mpc_core.nn.config import AttentionConfig
    from mpc_core.nn.encoder import encode
    from mpc_core.nn.weights import load_checkpoint

    def pooled(hidden, mask):
        keep = mask[..., None]
        p = (hidden * keep).sum(1) / keep.sum(1)
        return p / np.linalg.norm(p, axis=-1, keepdims=True)

    rows = []
    for mode, folder in models.items():
        cfg, weights = load_checkpoint(folder)
        attn = attention_for(mode, 64, read_record(folder))
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        emb = PublicEmbeddings.from_tensors(cfg, weights)
        B = PlainBackend(weights)
        for task in tasks:
            enc = encode_texts(tokenizer, TASKS[task], 0, 128)
            x = emb(enc.input_ids)
            anchors = {
                "softmax": pooled(encode(B, cfg, AttentionConfig(), x, enc.mask), enc.mask),
                "mode": pooled(encode(B, cfg, attn, x, enc.mask), enc.mask),
            }
            texts, labels = read_tsv(ROOT / "data" / task / "test.tsv")
            got = []
            for start in range(0, len(texts), batch):
                e = encode_texts(tokenizer, texts[start : start + batch], 0, 128)
                got.append(pooled(encode(B, cfg, attn, emb(e.input_ids), e.mask), e.mask))
            pooled_x = np.concatenate(got)
            row = {"mode": mode, "model": Path(folder).name, "task": task, "examples": len(texts)}
            for name, a in anchors.items():
                row[f"test_zero_shot_anchors_{name}"] = 100.0 * float(
                    np.mean((pooled_x @ a.T).argmax(-1) == labels)
                )
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", default=[], help="MODE=FOLDER (softmax: the original)")
    parser.add_argument("--tasks", nargs="+", default=["sst2", "ag_news"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--runs", default="/tmp/h13/runs", help="folder for the run folders (not committed)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--secure", type=int, default=0, help="secure-vs-plain check on N test examples")
    parser.add_argument("--suites", nargs="+", default=["2pc", "3pc"])
    parser.add_argument("--no-softmax", action="store_true", help="runs: skip the softmax runs")
    parser.add_argument("--zero-shot", action="store_true", help="zero-shot test accuracy, both anchor kinds")
    parser.add_argument("--cosine", type=int, default=0, help="task-text cosines on N dev texts per task")
    parser.add_argument("extra", nargs="*", help="after --: further secp-tune run options")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    models = _model_args(args.model)
    from bench.machine import machine_info

    machine = machine_info()
    if args.zero_shot:
        if "softmax" not in models:
            from bench.fidelity import minilm_dir

            models = {"softmax": str(minilm_dir()), **models}
        result = {"machine": machine, "rows": zero_shot(models, args.tasks)}
    elif args.cosine:
        result = {"machine": machine, "rows": task_cosines(models, args.tasks, args.cosine)}
    elif args.secure:
        rows = secure_check(models, args.tasks, args.secure, args.suites)
        result = {"machine": machine, "rows": rows}
    else:
        if "softmax" not in models and not args.no_softmax:
            from bench.fidelity import minilm_dir

            models = {"softmax": str(minilm_dir()), **models}
        runs = Path(args.runs)
        runs.mkdir(parents=True, exist_ok=True)
        rows = []
        for task in args.tasks:
            for seed in args.seeds:
                for mode, folder in models.items():
                    row = run_one(mode, folder, task, seed, runs, args.extra)
                    print(json.dumps(row), flush=True)
                    rows.append(row)
        records = {}
        for mode, folder in models.items():
            rec = Path(folder) / "secp_attention.json"
            records[mode] = json.loads(rec.read_text()) if rec.is_file() else None
        result = {
            "machine": machine,
            "models": models,
            "adaptation_records": records,
            "recipe": "secp-tune run defaults (plain backend) " + " ".join(args.extra),
            "rows": rows,
            "summary": summarise(rows),
        }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
