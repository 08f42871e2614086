"""``op``: one secure operation on uploaded shares, the catalogue `make bench` times in both transports.

The same :data:`OPS` entries run in-process (bench/ops_bench.py) and inside a cluster job (this
program), so the two transports are compared on identical secure code.  ``matmul_fixed_weight`` marks
its weight fixed: the first batch of a job opens the weight's mask, later batches reuse it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from mpc_core import functions as fn
from mpc_core.tensor import SharedTensor
from server.programs.base import PlanError, Program, Shape, require_inputs


@dataclass(frozen=True)
class SecureOp:
    inputs: tuple[str, ...]
    run: Callable[..., SharedTensor]
    output_shape: Callable[..., Shape]


def _same(x: Shape, *_: Shape) -> Shape:
    return x


def _matmul_shape(x: Shape, w: Shape) -> Shape:
    if len(x) < 2 or len(w) != 2 or x[-1] != w[0]:
        raise PlanError(f"matmul needs x [..., k] and w [k, m]; got x{x}, w{w}")
    return (*x[:-1], w[1])


OPS: dict[str, SecureOp] = {
    "matmul": SecureOp(("x", "w"), lambda x, w: x @ w, _matmul_shape),
    "matmul_fixed_weight": SecureOp(("x", "w"), lambda x, w: x @ w.fixed("op:w"), _matmul_shape),
    "softmax": SecureOp(("x",), lambda x: fn.softmax(x, axis=-1), _same),
    "gelu": SecureOp(("x",), fn.gelu, _same),
    "layernorm": SecureOp(("x", "weight", "bias"), lambda x, w, b: fn.layer_norm(x, w, b, 1e-12), _same),
    "exp": SecureOp(("x",), fn.exp, _same),
    "reciprocal": SecureOp(("x",), fn.reciprocal, _same),
    "rsqrt": SecureOp(("x",), fn.rsqrt, _same),
    "cos": SecureOp(("x",), lambda x: x.trig(64.0, [1])[0][0], _same),
    "compare": SecureOp(("x", "y"), fn.less_than, _same),
}


class OpParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    op: str


class Op(Program):
    name = "op"
    Params = OpParams

    def plan(self, inputs, params, model):
        entry = OPS.get(params.op)
        if entry is None:
            raise PlanError(f"unknown op {params.op!r}; choose one of {sorted(OPS)}")
        require_inputs(self.name, inputs, entry.inputs)
        return {"y": entry.output_shape(*(inputs[k] for k in entry.inputs))}

    def run(self, ctx, inputs, params, model, state):
        entry = OPS[params.op]
        with ctx.op(f"op:{params.op}"):
            y = entry.run(*(inputs[k] for k in entry.inputs))
        return {"y": y}
