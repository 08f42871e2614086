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
from mpc_core.functions.rmsnorm import rms_norm
from mpc_core.functions.silu import silu
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


#: One BERT-base encoder block (hidden 768, 12 heads, FFN 3072, exact softmax attention), weights shared.
BERT_BASE = {"hidden": 768, "heads": 12, "intermediate": 3072, "layer_norm_eps": 1e-12}


def _bert_layer_shapes() -> dict[str, tuple[int, ...]]:
    """Canonical tensor name -> shape of the block's weights, in the op's input order."""
    h, f = BERT_BASE["hidden"], BERT_BASE["intermediate"]
    matrices = {"attn.q": (h, h), "attn.k": (h, h), "attn.v": (h, h), "attn.out": (h, h)}
    matrices |= {"ffn.in": (h, f), "ffn.out": (f, h)}
    shapes: dict[str, tuple[int, ...]] = {}
    for part in ("attn.q", "attn.k", "attn.v", "attn.out", "attn.ln", "ffn.in", "ffn.out", "ffn.ln"):
        weight = (h,) if part.endswith(".ln") else matrices[part]
        shapes[f"layer.0.{part}.weight"] = weight
        shapes[f"layer.0.{part}.bias"] = (weight[-1],)
    return shapes


BERT_LAYER_SHAPES = _bert_layer_shapes()
BERT_LAYER_WEIGHTS = tuple(BERT_LAYER_SHAPES)


def bert_layer_forward(backend, x, layer_norm_eps: float = BERT_BASE["layer_norm_eps"]):
    """The block on one unpadded sequence x [T, H], on either backend (the secure op and its reference)."""
    import numpy as np

    from mpc_core.nn.config import AttentionConfig, EncoderConfig
    from mpc_core.nn.encoder import encoder_layer

    cfg = EncoderConfig(
        arch="bert",
        layers=1,
        vocab=1,
        max_positions=512,
        type_vocab=0,
        pad_token_id=0,
        **(BERT_BASE | {"layer_norm_eps": layer_norm_eps}),
    )
    mask = np.ones((1, x.shape[0]), dtype=np.int64)
    return encoder_layer(backend, cfg, AttentionConfig(mode="softmax"), 0, x[None], mask)[0]


def _bert_layer(x: SharedTensor, *weights: SharedTensor) -> SharedTensor:
    """The block on shares; 2-D weights fixed as a loaded model's are."""
    from mpc_core.nn.backend import SecureBackend

    named = {
        name: w.fixed(f"op:{name}") if w.ndim == 2 else w
        for name, w in zip(BERT_LAYER_WEIGHTS, weights, strict=True)
    }
    return bert_layer_forward(SecureBackend(x.ctx, named), x)


def _bert_layer_shape(x: Shape, *weights: Shape) -> Shape:
    h = BERT_BASE["hidden"]
    if len(x) != 2 or x[1] != h or [tuple(w) for w in weights] != list(BERT_LAYER_SHAPES.values()):
        raise PlanError(f"bert_layer needs x [T, {h}] and the BERT-base block's weights in order")
    return tuple(x)


OPS: dict[str, SecureOp] = {
    "matmul": SecureOp(("x", "w"), lambda x, w: x @ w, _matmul_shape),
    "matmul_fixed_weight": SecureOp(("x", "w"), lambda x, w: x @ w.fixed("op:w"), _matmul_shape),
    "softmax": SecureOp(("x",), lambda x: fn.softmax(x, axis=-1), _same),
    "gelu": SecureOp(("x",), fn.gelu, _same),
    "layernorm": SecureOp(("x", "weight", "bias"), lambda x, w, b: fn.layer_norm(x, w, b, 1e-12), _same),
    "rmsnorm": SecureOp(("x", "weight"), lambda x, w: rms_norm(x, w, 1e-5), _same),
    "silu": SecureOp(("x",), silu, _same),
    "exp": SecureOp(("x",), fn.exp, _same),
    "reciprocal": SecureOp(("x",), fn.reciprocal, _same),
    "rsqrt": SecureOp(("x",), fn.rsqrt, _same),
    "cos": SecureOp(("x",), lambda x: x.trig(64.0, [1])[0][0], _same),
    "compare": SecureOp(("x", "y"), fn.less_than, _same),
    "bert_layer": SecureOp(("x", *BERT_LAYER_WEIGHTS), _bert_layer, _bert_layer_shape),
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
