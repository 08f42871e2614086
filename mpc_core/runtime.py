"""Run one SPMD program with every participant as a thread over the in-process transport.

This is how unit tests and in-process benchmarks execute secure code; the cluster runs the same
programs with one process per participant over gRPC.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mpc_core.context import PARTICIPANTS, Context
from mpc_core.prg import system_prg
from mpc_core.ring import FixedPoint
from mpc_core.suites import suite_class
from mpc_core.tensor import SharedTensor
from mpc_core.transport.inprocess import InProcessNetwork

Program = Callable[..., Any]


def share_inputs(suite: str, secrets: Sequence[np.ndarray], fp: FixedPoint) -> list[list[np.ndarray]]:
    """Encode and split float inputs as a data owner would: ``result[party][i]`` is party's share of i."""
    cls = suite_class(suite)
    prg = system_prg()
    per_secret = [cls.split(fp.encode(s), prg) for s in secrets]
    parties = len(per_secret[0]) if per_secret else (2 if suite == "2pc" else 3)
    return [[shares[p] for shares in per_secret] for p in range(parties)]


def run_parties(
    suite: str,
    program: Program,
    *secrets: np.ndarray,
    fp: FixedPoint | None = None,
    timeout_s: float = 300.0,
) -> list[Any]:
    """Run ``program(ctx, *shared_inputs)`` on every participant; returns each participant's result.

    The float ``secrets`` are shared as by an external data owner.  Any exception in one participant
    aborts the others and is re-raised here.
    """
    fp = fp or FixedPoint()
    network = InProcessNetwork(PARTICIPANTS, timeout_s=timeout_s)
    shares = share_inputs(suite, secrets, fp)
    results: list[Any] = [None] * PARTICIPANTS
    errors: list[BaseException | None] = [None] * PARTICIPANTS

    def body(participant: int) -> None:
        try:
            ctx = Context(participant, suite, network.transport(participant), fp)
            ctx.setup()
            own = shares[participant] if participant < len(shares) else [None] * len(secrets)
            inputs = [
                SharedTensor.from_share(ctx, share, np.shape(secret))
                for share, secret in zip(own, secrets, strict=True)
            ]
            results[participant] = program(ctx, *inputs)
        except BaseException as exc:  # re-raised in the caller thread
            errors[participant] = exc
            network.close()

    threads = [threading.Thread(target=body, args=(p,), name=f"party-{p}") for p in range(PARTICIPANTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first = next((e for e in errors if e is not None and not _is_abort(e)), None)
    first = first or next((e for e in errors if e is not None), None)
    if first is not None:
        raise first
    return results


def _is_abort(exc: BaseException) -> bool:
    from mpc_core.transport.base import TransportClosed

    return isinstance(exc, TransportClosed)
