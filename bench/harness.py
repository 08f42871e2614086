"""Measure one secure operation: wall seconds, per-party CPU seconds, bytes, rounds, error.

Each participant times only the operation itself (inputs are shared and fixed weights opened before the
clock starts, the result is revealed after it stops).  ``seconds`` is the slowest compute party's wall
time; ``bytes`` is what the compute parties sent each other; ``dealer_bytes`` what the 2pc dealer sent
(0 in 3pc, where every participant is a compute party); ``rounds`` the most rounds any party waited on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mpc_core.context import Context
from mpc_core.runtime import run_parties
from mpc_core.suites import suite_class
from mpc_core.tensor import SharedTensor

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


def measure(
    suite: str,
    name: str,
    operation: Operation,
    *inputs: np.ndarray,
    prepare: Prepare | None = None,
) -> Measurement:
    """Run ``operation(ctx, *prepared)`` once per participant under the op name ``name``."""

    def program(ctx: Context, *shared: SharedTensor) -> dict[str, Any]:
        prepared = prepare(ctx, *shared) if prepare else shared
        before = ctx.stats.total.as_dict()
        wall, cpu = time.perf_counter(), time.thread_time()
        with ctx.op(name):
            out = operation(ctx, *prepared)
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

    results = run_parties(suite, program, *inputs)
    facts = suite_class(suite)
    parties = facts.compute_parties
    return Measurement(
        seconds=max(results[p]["wall"] for p in parties),
        party_cpu_seconds=[round(r["cpu"], 4) for r in results],
        bytes=sum(results[p]["bytes"] for p in parties),
        dealer_bytes=results[facts.dealer]["bytes"] if facts.dealer is not None else 0,
        rounds=max(results[p]["rounds"] for p in parties),
        output=results[0]["value"],
    )
