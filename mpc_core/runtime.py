"""Building a participant (its context with the suite beside it) and running SPMD programs in one process.

:func:`make_context` is where a context and its suite meet: the suite is built beside the context and
attached to it.  :func:`run_threads` is the one in-process harness: every participant as a thread over
the in-process transport, the first real error re-raised.  Unit tests and in-process benchmarks run
secure code through :func:`run_parties` (inputs shared as by a data owner); the servers' in-process
reference (``server.execute.run_in_process``) uses the same harness.  The cluster runs the same programs
with one process per participant over gRPC.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from mpc_core.context import Context
from mpc_core.prg import system_prg
from mpc_core.ring import FixedPoint
from mpc_core.suites import Suite, suite_class
from mpc_core.tensor import SharedTensor
from mpc_core.transport.base import Transport, TransportClosed
from mpc_core.transport.inprocess import InProcessNetwork, Link
from mpc_core.transport.shaping import NetworkShape

Program = Callable[..., Any]


def make_context(participant: int, suite: str | type[Suite], transport: Transport, fp: FixedPoint) -> Context:
    """A participant's context with its suite built beside it and attached (call ``setup`` next)."""
    cls = suite_class(suite) if isinstance(suite, str) else suite
    ctx = Context(participant, transport, fp)
    ctx.attach(cls(ctx))
    return ctx


def share_inputs(suite: str, secrets: Sequence[np.ndarray], fp: FixedPoint) -> list[list[np.ndarray]]:
    """Encode and split float inputs as a data owner would: ``result[party][i]`` is party's share of i."""
    cls = suite_class(suite)
    prg = system_prg()
    per_secret = [cls.split(fp.encode(s), prg) for s in secrets]
    return [[shares[p] for shares in per_secret] for p in range(len(cls.compute_parties))]


def run_threads(
    body: Callable[[int, Transport], Any],
    participants: int,
    timeout_s: float = 300.0,
    shapes: Mapping[Link, NetworkShape] | None = None,
) -> list[Any]:
    """Run ``body(participant, transport)`` for every participant, each in its own thread, over one
    in-process network (its directed links shaped by ``shapes``); returns each participant's result.

    An exception in one participant closes the network (so the others stop waiting) and is re-raised
    here; a participant that only saw the network close is reported only if nobody failed for real.
    """
    network = InProcessNetwork(participants, timeout_s=timeout_s, shapes=shapes)
    results: list[Any] = [None] * participants
    errors: list[BaseException | None] = [None] * participants

    def run(participant: int) -> None:
        try:
            results[participant] = body(participant, network.transport(participant))
        except BaseException as exc:  # re-raised in the caller thread
            errors[participant] = exc
            network.close()

    threads = [threading.Thread(target=run, args=(p,), name=f"party-{p}") for p in range(participants)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first = next((e for e in errors if e is not None and not isinstance(e, TransportClosed)), None)
    first = first or next((e for e in errors if e is not None), None)
    if first is not None:
        raise first
    return results


def run_parties(
    suite: str,
    program: Program,
    *secrets: np.ndarray,
    fp: FixedPoint | None = None,
    timeout_s: float = 300.0,
    shapes: Mapping[Link, NetworkShape] | None = None,
) -> list[Any]:
    """Run ``program(ctx, *shared_inputs)`` on every participant; returns each participant's result.

    The float ``secrets`` are shared as by an external data owner.  Any exception in one participant
    aborts the others and is re-raised here.  ``shapes`` emulates a network on the named links.
    """
    fp = fp or FixedPoint()
    cls = suite_class(suite)
    shares = share_inputs(suite, secrets, fp)

    def body(participant: int, transport: Transport) -> Any:
        ctx = make_context(participant, cls, transport, fp)
        ctx.setup()
        own = shares[participant] if participant < len(shares) else [None] * len(secrets)
        inputs = [
            SharedTensor.from_share(ctx, share, np.shape(secret))
            for share, secret in zip(own, secrets, strict=True)
        ]
        return program(ctx, *inputs)

    return run_threads(body, cls.participants, timeout_s, shapes)
