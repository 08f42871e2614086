"""Measure one secure operation: wall seconds, per-party CPU seconds, bytes, rounds, error.

Each participant times only the operation itself (inputs are shared and fixed weights opened before the
clock starts, the result is revealed after it stops).  ``seconds`` is the slowest compute party's wall
time; ``bytes`` is what the compute parties sent each other; ``dealer_bytes`` what the 2pc dealer sent
(0 in 3pc, where every participant is a compute party); ``rounds`` the most rounds any party waited on.

``network`` shapes every link with an emulated LAN or WAN (the in-process transport's virtual wire,
``mpc_core.transport.shaping``).  ``phases`` (2pc) separates the offline phase from the online one: the
dealer runs the operation first and its material crosses to the parties (P1 buffers it), then the parties
start.  ``offline_seconds`` is the dealer's time until its last message has arrived, ``seconds`` the
parties' online time; without ``phases`` the dealer runs beside the parties, as the servers do, and
``seconds`` is the overlapped time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mpc_core.context import Context
from mpc_core.runtime import run_parties
from mpc_core.suites import suite_class
from mpc_core.tensor import SharedTensor
from mpc_core.transport.shaping import NO_SHAPING, NetworkShape

Prepare = Callable[..., tuple[Any, ...]]
Operation = Callable[..., SharedTensor]


@dataclass
class Measurement:
    seconds: float
    party_cpu_seconds: list[float]
    bytes: int
    dealer_bytes: int
    rounds: int
    output: np.ndarray
    offline_seconds: float | None = None


def link_shapes(
    suite: str, network: NetworkShape, dealer_network: NetworkShape | None = None
) -> dict[tuple[int, int], NetworkShape]:
    """Every directed link's emulated network: ``network``, or ``dealer_network`` on the dealer's links."""
    facts = suite_class(suite)
    n = facts.participants

    def shape(a: int, b: int) -> NetworkShape:
        touches_dealer = facts.dealer in (a, b)
        return dealer_network if touches_dealer and dealer_network is not None else network

    return {(a, b): shape(a, b) for a in range(n) for b in range(n) if a != b}


def measure(
    suite: str,
    name: str,
    operation: Operation,
    *inputs: np.ndarray,
    prepare: Prepare | None = None,
    network: NetworkShape = NO_SHAPING,
    phases: bool = False,
    dealer_network: NetworkShape | None = None,
) -> Measurement:
    """Run ``operation(ctx, *prepared)`` once per participant under the op name ``name``.

    ``dealer_network`` shapes the 2pc dealer's links apart from the parties' (default: ``network``).
    """
    facts = suite_class(suite)
    if phases and facts.dealer is None:
        raise ValueError(f"suite {suite!r} has no dealer: its correlations are not an offline phase")
    offline_done = threading.Event()

    def program(ctx: Context, *shared: SharedTensor) -> dict[str, Any]:
        prepared = prepare(ctx, *shared) if prepare else shared
        dealing = phases and ctx.participant == facts.dealer
        if phases and not dealing and not offline_done.wait(timeout=3600):
            raise TimeoutError("the dealer's offline phase did not finish within an hour")
        before = ctx.stats.total.as_dict()
        wall, cpu = time.perf_counter(), time.thread_time()
        with ctx.op(name):
            out = operation(ctx, *prepared)
        if dealing:  # the offline phase ends when the last correction has reached the parties
            network = ctx.transport.network
            arrived = max(network.drained_at((ctx.participant, p)) for p in facts.compute_parties)
            time.sleep(max(0.0, arrived - time.monotonic()))
            offline_done.set()
        wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
        after = ctx.stats.total.as_dict()
        value = out.reveal()
        return {
            "wall": wall,
            "cpu": cpu,
            "bytes": after["bytes"] - before["bytes"],
            "rounds": after["rounds"] - before["rounds"],
            "value": value,
        }

    results = run_parties(suite, program, *inputs, shapes=link_shapes(suite, network, dealer_network))
    parties = facts.compute_parties
    return Measurement(
        seconds=max(results[p]["wall"] for p in parties),
        party_cpu_seconds=[round(r["cpu"], 4) for r in results],
        bytes=sum(results[p]["bytes"] for p in parties),
        dealer_bytes=results[facts.dealer]["bytes"] if facts.dealer is not None else 0,
        rounds=max(results[p]["rounds"] for p in parties),
        output=results[0]["value"],
        offline_seconds=results[facts.dealer]["wall"] if phases else None,
    )
