"""Fixed PRG seeds for a job (development and tests only).

A job may carry a ``test_seed``; a server whose configuration sets ``development.allow_fixed_seeds``
then derives every pairwise seed and its private seed from it instead of agreeing fresh ones.  Whoever
knows the test seed can recompute every mask, so this destroys privacy: it exists only so that tests
can check that a run over gRPC produces exactly the ring values (shares included) of an in-process run.
"""

from __future__ import annotations

import hashlib

from mpc_core.context import PARTICIPANTS, Context
from mpc_core.prg import PRG, SEED_BYTES

MAX_TEST_SEED_BYTES = 64


def derive_seed(test_seed: bytes, label: str) -> bytes:
    return hashlib.sha256(b"secp-test-seed\x00" + test_seed + b"\x00" + label.encode()).digest()[:SEED_BYTES]


def seeded_setup(ctx: Context, test_seed: bytes) -> None:
    """Stand-in for ``ctx.setup()``: the same PRGs every run with the same ``test_seed``, no traffic."""
    me = ctx.participant
    for peer in range(PARTICIPANTS):
        if peer != me:
            low, high = sorted((me, peer))
            ctx._pair_prgs[peer] = PRG(derive_seed(test_seed, f"pair {low} {high}"))
    ctx.private_prg = PRG(derive_seed(test_seed, f"private {me}"))
