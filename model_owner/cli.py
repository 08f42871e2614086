"""``secp-share-model``: the command line of :func:`model_owner.share.share_model`.

    secp-share-model --model DIR --suite 2pc|3pc --out DIR [--frac-bits 16] [--force]

Exit status 0 on success, 2 on a usage or input error (message on stderr, nothing written).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from model_owner.share import share_model
from mpc_core.nn.config import SUPPORTED_ARCHS, UnsupportedModelError
from mpc_core.nn.weights import CheckpointError
from mpc_core.suites import SUITES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="secp-share-model",
        description=(
            "Secret-share a local Hugging Face checkpoint "
            f"({', '.join(SUPPORTED_ARCHS)}, with or without an MLM head) for the secure servers."
        ),
    )
    parser.add_argument("--model", required=True, help="local checkpoint folder (config.json + weights)")
    parser.add_argument(
        "--suite", required=True, choices=sorted(SUITES), help="protocol suite of the servers"
    )
    parser.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    parser.add_argument("--frac-bits", type=int, default=16, help="fixed-point fractional bits (default 16)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        manifest = share_model(args.model, args.suite, args.out, frac_bits=args.frac_bits, force=args.force)
    except (UnsupportedModelError, CheckpointError, FileExistsError, ValueError) as exc:
        print(f"secp-share-model: error: {exc}", file=sys.stderr)
        return 2
    total = sum(pf.bytes for pf in manifest.party_files)
    print(
        f"shared {manifest.arch} ({manifest.config.layers} layers, hidden {manifest.config.hidden}, "
        f"MLM head: {'yes' if manifest.config.has_mlm_head else 'no'}) for {manifest.suite}: "
        f"{len(manifest.tensors)} tensors, {len(manifest.party_files)} party files, "
        f"{total / 2**20:.1f} MiB of shares in {args.out}"
    )
    for pf in manifest.party_files:
        print(f"  {pf.file}  {pf.bytes / 2**20:.1f} MiB  sha256 {pf.sha256}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
