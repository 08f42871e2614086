"""``secp-adapt-model``: the command line of :func:`model_owner.adapt.adapt_checkpoint` (plaintext).

    secp-adapt-model --model DIR --attention rfa|favor --out DIR [--features 64] [--steps 150]
                     [--tune scales|attention|all] [--batch 8] [--max-len 48] [--lr 0.05]
                     [--weight-lr 1e-4] [--threads 2] [--force]

Writes an adapted checkpoint folder (the original files, ``secp_attention.safetensors`` with the learned
tensors, ``secp_attention.json`` with the mode and the measured fidelity); share it with
``secp-share-model --model OUT ...``, which copies the record into the manifest.  Exit status 0 on success,
2 on a usage or input error (message on stderr, nothing written).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from model_owner.adapt import TUNE_CHOICES
from mpc_core.nn.adapted import FIDELITY_MIN_COSINE
from mpc_core.nn.config import UnsupportedModelError
from mpc_core.nn.weights import CheckpointError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="secp-adapt-model",
        description="Distil a softmax checkpoint to random-feature attention before sharing it (plaintext).",
    )
    parser.add_argument("--model", required=True, help="local checkpoint folder (config.json + weights)")
    parser.add_argument("--attention", required=True, choices=["rfa", "favor"])
    parser.add_argument("--out", required=True, help="adapted checkpoint folder (must not exist or be empty)")
    parser.add_argument("--features", type=int, default=64, help="random features m (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="feature and corpus seed (default 0)")
    parser.add_argument("--steps", type=int, default=120, help="distillation steps (default 120)")
    parser.add_argument(
        "--tune",
        choices=list(TUNE_CHOICES),
        default="scales",
        help="what is trained: the per-head scales only (block-local), also the query/key projections "
        "(block-local), or all: every block's tensors, end to end through all blocks",
    )
    parser.add_argument("--batch", type=int, default=8, help="sequences per step (default 8)")
    parser.add_argument("--max-len", type=int, default=48, help="most tokens per corpus sequence")
    parser.add_argument("--lr", type=float, default=0.05, help="Adam rate of the log scales (default 0.05)")
    parser.add_argument(
        "--weight-lr", type=float, default=1e-4, help="--tune all: peak Adam rate of the weights"
    )
    parser.add_argument(
        "--replace",
        type=float,
        default=0.0,
        help="--tune all: add a copy of every corpus sequence with this fraction of its tokens replaced",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from model_owner.adapt import adapt_checkpoint

    try:
        record = adapt_checkpoint(
            args.model,
            args.attention,
            args.out,
            features=args.features,
            seed=args.seed,
            steps=args.steps,
            tune=args.tune,
            batch=args.batch,
            max_len=args.max_len,
            lr=args.lr,
            weight_lr=args.weight_lr,
            replace=args.replace,
            threads=args.threads,
            force=args.force,
            log=lambda line: print(line, file=sys.stderr, flush=True),
        )
    except (UnsupportedModelError, CheckpointError, FileExistsError, ValueError, OSError) as exc:
        print(f"secp-adapt-model: error: {exc}", file=sys.stderr)
        return 2
    f, b = record.fidelity, record.before
    verdict = "holds" if f.holds() else f"does NOT hold (needs >= {FIDELITY_MIN_COSINE})"
    print(
        f"adapted to {record.attention.mode} (m = {record.attention.features}) in {record.seconds:.0f} s on "
        f"{record.threads} threads: sentence-embedding cosine with softmax {b.pooled_cosine_mean:.3f} -> "
        f"{f.pooled_cosine_mean:.3f}, fidelity {verdict}; written to {args.out}"
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
