"""Small programs: for tests, benchmarks and checking a cluster end to end.

* ``affine``: y = x @ w + b on uploaded shares.  With ``integer: true`` the inputs are ring integers
  and nothing is truncated, so the reconstructed y is exactly x @ w + b mod 2^64 whatever the
  randomness (a deterministic program: two runs must agree bit for bit).
* ``mlp``: a tiny two-layer network y = act(x @ w1 + b1) @ w2 + b2, act = ReLU (via the sign bit) or
  cos (via the one-round trig protocol): products, truncation and both nonlinear kernels.
* ``rounds``: y = x^(2^rounds) by ``rounds`` sequential squarings, one round each: a long job with
  little data (fault injection, round-latency measurements).
* ``model_linear``: y = x @ W (+ b) with W, b from the loaded shared model: the model path end to end.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from mpc_core.tensor import SharedTensor
from server.programs.base import PlanError, Program, require_inputs


class AffineParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    integer: bool = False


class Affine(Program):
    name = "affine"
    Params = AffineParams

    def plan(self, inputs, params, model):
        require_inputs(self.name, inputs, ("x", "w", "b"))
        x, w, b = inputs["x"], inputs["w"], inputs["b"]
        if len(x) < 1 or len(w) != 2 or len(b) != 1:
            raise PlanError(f"affine needs x [..., k], w [k, m], b [m]; got x{x}, w{w}, b{b}")
        if x[-1] != w[0] or w[1] != b[0]:
            raise PlanError(f"affine shapes do not chain: x{x} @ w{w} + b{b}")
        return {"y": (*x[:-1], w[1])}

    def run(self, ctx, inputs, params, model, state):
        x, w, b = inputs["x"], inputs["w"], inputs["b"]
        if params.integer:
            x, w, b = (SharedTensor(ctx, t.data, 0) for t in (x, w, b))
        return {"y": x @ w + b}


class MlpParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    activation: Literal["relu", "cos"] = "relu"


class Mlp(Program):
    name = "mlp"
    Params = MlpParams

    def plan(self, inputs, params, model):
        require_inputs(self.name, inputs, ("x", "w1", "b1", "w2", "b2"))
        x, w1, b1, w2, b2 = (inputs[k] for k in ("x", "w1", "b1", "w2", "b2"))
        if len(x) != 2 or len(w1) != 2 or len(w2) != 2 or len(b1) != 1 or len(b2) != 1:
            raise PlanError("mlp needs x [n, d], w1 [d, h], b1 [h], w2 [h, c], b2 [c]")
        if x[1] != w1[0] or w1[1] != b1[0] or w1[1] != w2[0] or w2[1] != b2[0]:
            raise PlanError(f"mlp shapes do not chain: x{x} w1{w1} b1{b1} w2{w2} b2{b2}")
        return {"y": (x[0], w2[1])}

    def run(self, ctx, inputs, params, model, state):
        with ctx.op("mlp.layer1"):
            h = inputs["x"] @ inputs["w1"] + inputs["b1"]
        with ctx.op(f"mlp.{params.activation}"):
            if params.activation == "relu":
                h = h - h * h.msb()
            else:
                (cos,), _ = h.trig(64.0, [1])
                h = cos
        with ctx.op("mlp.layer2"):
            y = h @ inputs["w2"] + inputs["b2"]
        return {"y": y}


class RoundsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rounds: int = Field(default=100, ge=1, le=1_000_000)


class Rounds(Program):
    name = "rounds"
    Params = RoundsParams

    def plan(self, inputs, params, model):
        require_inputs(self.name, inputs, ("x",))
        return {"y": inputs["x"]}

    def run(self, ctx, inputs, params, model, state):
        y = inputs["x"]
        with ctx.op("rounds"):
            for _ in range(params.rounds):
                y = y.square()
        return {"y": y}


class ModelLinearParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weight: str
    bias: str | None = None


class ModelLinear(Program):
    """y = x @ W (+ b) with W and b tensors of the loaded (secret-shared) model, named in the params."""

    name = "model_linear"
    Params = ModelLinearParams
    uses_model = True

    def plan(self, inputs, params, model):
        require_inputs(self.name, inputs, ("x",))
        shapes = model.shapes
        w = shapes.get(params.weight)
        if w is None or len(w) != 2:
            raise PlanError(f"the model has no matrix named {params.weight!r}")
        if params.bias is not None and shapes.get(params.bias) != (w[1],):
            raise PlanError(f"the model has no bias {params.bias!r} of shape {(w[1],)}")
        x = inputs["x"]
        if x[-1] != w[0]:
            raise PlanError(f"x{x} does not chain with {params.weight}{w}")
        return {"y": (*x[:-1], w[1])}

    def run(self, ctx, inputs, params, model, state):
        with ctx.op("model_linear"):
            y = inputs["x"] @ model[params.weight]
            if params.bias is not None:
                y = y + model[params.bias]
        return {"y": y}


def _builtin() -> tuple[type[Program], ...]:
    from server.programs.ops import Op

    return (Affine, Mlp, Rounds, ModelLinear, Op)


BUILTIN: tuple[type[Program], ...] = _builtin()
