"""Running a registered program on one participant's context, and all participants in one process.

:func:`run_program` is what a server's job runs in its worker thread; :func:`run_in_process` runs the
same code with every participant as a thread over the in-process transport (the engine's one harness,
``mpc_core.runtime.run_threads``): the reference a cluster's results are compared with (with the same
``test_seed`` the two produce identical shares).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel

from mpc_core.context import Context
from mpc_core.ring import RING_DTYPE, FixedPoint
from mpc_core.runtime import make_context, run_threads
from mpc_core.suites import suite_class
from mpc_core.tensor import SharedTensor
from mpc_core.transport.base import Transport
from server.model_store import LoadedModel
from server.programs import Program, get_program
from server.seeding import seeded_setup

Shape = tuple[int, ...]


def start_context(
    participant: int, suite: str, transport: Transport, frac_bits: int, test_seed: bytes = b""
) -> Context:
    """A participant's context with its PRG seeds agreed (or derived from a development test seed)."""
    ctx = make_context(participant, suite, transport, FixedPoint(frac_bits))
    if test_seed:
        seeded_setup(ctx, test_seed)
    else:
        ctx.setup()
    return ctx


def run_program(
    ctx: Context,
    program: Program,
    params: BaseModel,
    shares: Mapping[str, np.ndarray] | None,
    shapes: Mapping[str, Shape],
    model: Mapping[str, SharedTensor] | None = None,
    state: dict[str, Any] | None = None,
) -> dict[str, SharedTensor]:
    """Wrap the input shares (None at the dealer) and run ``program`` on this participant.

    ``state`` is the job's per-participant state that persists across batches (fresh if None).
    """
    inputs = {
        name: SharedTensor.from_share(ctx, None if shares is None else shares[name], shape)
        for name, shape in shapes.items()
    }
    return program.run(ctx, inputs, params, model, {} if state is None else state)


def run_in_process(
    suite: str,
    program_name: str,
    params_json: str,
    shares: Sequence[Mapping[str, np.ndarray]],
    shapes: Mapping[str, Shape],
    *,
    frac_bits: int = 16,
    test_seed: bytes = b"",
    models: Sequence[LoadedModel] | None = None,
    timeout_s: float = 120.0,
) -> list[dict[str, tuple[np.ndarray | None, int]]]:
    """Every participant's ``{output: (share or None at the dealer, scale)}`` of one in-process run."""
    program = get_program(program_name)
    params = program.parse_params(params_json)

    def body(p: int, transport: Transport) -> dict[str, tuple[np.ndarray | None, int]]:
        ctx = start_context(p, suite, transport, frac_bits, test_seed)
        model = models[p].wrap(ctx) if models is not None else None
        own = shares[p] if p < len(shares) and not ctx.is_dealer else None
        out = run_program(ctx, program, params, own, shapes, model)
        return {
            name: (None if ctx.is_dealer else np.ascontiguousarray(t.data, dtype=RING_DTYPE), t.scale)
            for name, t in out.items()
        }

    return run_threads(body, suite_class(suite).participants, timeout_s)
