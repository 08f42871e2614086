"""Forward with a tape, and backward, of the encoder's layers, written once for both backends.

Each ``*_forward`` computes exactly what the forward in :mod:`mpc_core.nn` computes, through the same
Backend calls in the same order (linear layers, ``B.softmax``, ``B.gelu``, the LayerNorm steps of
:func:`mpc_core.functions.layer_norm`), and returns the values its backward needs (the tape).  Each
``*_backward`` takes the upstream gradient dL/dy and returns dL/dx, adding the weight gradients to
``grads`` when the layer is trainable.  Gradients carry a public loss scale S (see
:mod:`mpc_core.nn.grad.model`): every formula is linear in the upstream gradient, so the scale passes
through unchanged, and fixed-point gradients keep S times more significant bits.

Derivatives (exact maths; the secure error bounds are those of the products' truncations, 1 ulp per
product output, plus the functions named):

* linear y = x W + b: dx = dy W^T, dW = x^T dy, db = sum dy (rows flattened);
* LayerNorm y = xhat w + b, xhat = (x - mean) r, r = rsqrt(var + eps):
  dx = r (g - mean(g) - xhat mean(g xhat)) with g = dy w; dw = sum dy xhat, db = sum dy;
* GELU: dz = dh GELU'(z), GELU' from the sine series of :mod:`mpc_core.nn.grad.ops` (7e-4, |z| <= 28);
* softmax attention p = softmax(q k^T / sqrt d) (public mask): dS = p (dp - sum_j dp_j p_j),
  dq = dS k / sqrt d, dk = dS^T q / sqrt d, dv = p^T dctx (masked keys have p = 0 exactly, so they get no
  gradient in either backend).

Only softmax attention has a backward here (the random-feature modes do not yet).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mpc_core.functions.layernorm import LAYERNORM_VAR_DOMAIN
from mpc_core.nn.attention import merge_heads, split_heads
from mpc_core.nn.backend import Value
from mpc_core.nn.config import EncoderConfig
from mpc_core.nn.grad.ops import GradOps

#: Tested bounds on shares, relative to the largest entry of the gradient (tests/test_backward_functions.py),
#: about 4x the measured worst case (LayerNorm: 1.5e-4 per row at the variance domain's edges, plus 4 ulp;
#: attention: 7e-4 for dx, 4e-4 for the weight gradients); measured, not derived.
LAYERNORM_GRAD_RTOL = 1e-3
ATTENTION_GRAD_RTOL = 3e-3

Grads = dict[str, Value]
Trainable = Callable[[str], bool]


def frozen(name: str) -> bool:
    """No weight is trained (prompt tuning)."""
    return False


def _accumulate(grads: Grads, name: str, value: Value) -> None:
    grads[name] = value if name not in grads else grads[name] + value


def _flat(x: Value) -> Value:
    return x.reshape(-1, x.shape[-1])


# ---------------------------------------------------------------------------------------------- linear
def linear_forward(ops: GradOps, x: Value, name: str) -> Value:
    """x W + b through the backend (the tape is x itself)."""
    return ops.B.linear(x, name)


def linear_backward(
    ops: GradOps, dy: Value, x: Value, name: str, grads: Grads, trainable: Trainable, need_dx: bool = True
) -> Value | None:
    """dx = dy W^T; dW = x^T dy and db = sum dy when ``name`` is trainable."""
    with ops.op("linear_grad"):
        dy2 = _flat(dy)
        if trainable(name):
            _accumulate(grads, f"{name}.weight", _flat(x).T @ dy2)
            _accumulate(grads, f"{name}.bias", dy2.sum(axis=0))
        if not need_dx:
            return None
        dx = dy2 @ ops.transposed_weight(f"{name}.weight")
        return dx.reshape(*dy.shape[:-1], dx.shape[-1])


# ---------------------------------------------------------------------------------------------- LayerNorm
@dataclass
class LayerNormTape:
    xhat: Value
    r: Value


def layer_norm_forward(ops: GradOps, x: Value, name: str, eps: float) -> tuple[Value, LayerNormTape]:
    """LayerNorm as :func:`mpc_core.functions.layer_norm` computes it, keeping xhat and r = rsqrt(var+eps)."""
    B = ops.B
    with ops.op("layernorm"):
        d = x - ops.row_mean(x)
        var = ops.row_mean(B.square(d))
        r = ops.rsqrt(var + float(eps), *LAYERNORM_VAR_DOMAIN)
        xhat = d * r
        y = xhat * B.param(f"{name}.weight") + B.param(f"{name}.bias")
    return y, LayerNormTape(xhat, r)


def layer_norm_backward(
    ops: GradOps, dy: Value, tape: LayerNormTape, name: str, grads: Grads, trainable: Trainable
) -> Value:
    B = ops.B
    with ops.op("layernorm_grad"):
        if trainable(name):
            _accumulate(grads, f"{name}.weight", _flat(dy * tape.xhat).sum(axis=0))
            _accumulate(grads, f"{name}.bias", _flat(dy).sum(axis=0))
        g = dy * B.param(f"{name}.weight")
        centred = g - ops.row_mean(g) - tape.xhat * ops.row_mean(g * tape.xhat)
        return centred * tape.r


# ---------------------------------------------------------------------------------------------- attention
@dataclass
class AttentionTape:
    x: Value
    q: Value  # already scaled by 1/sqrt(d), [N, h, T, d]
    k: Value
    v: Value
    probs: Value
    merged: Value


def _qkv_names(layer: int) -> list[str]:
    return [f"layer.{layer}.attn.{p}" for p in ("q", "k", "v")]


def attention_forward(
    ops: GradOps, cfg: EncoderConfig, layer: int, x: Value, mask: np.ndarray
) -> tuple[Value, AttentionTape]:
    """Softmax self-attention with its output projection, as :func:`mpc_core.nn.attention.self_attention`."""
    B = ops.B
    names = _qkv_names(layer)
    with ops.op("linear"):
        w = ops.fused_weight(names)
        b = B.concatenate([B.param(f"{n}.bias") for n in names], axis=0)
        y = _flat(x) @ w + b
        y = y.reshape(*x.shape[:-1], y.shape[-1])
    hidden = cfg.hidden
    q, k, v = (split_heads(y[..., i * hidden : (i + 1) * hidden], cfg.heads) for i in range(3))
    qs = q * (1.0 / math.sqrt(q.shape[-1]))
    scores = qs @ k.swapaxes(-1, -2)
    probs = B.softmax(scores, np.asarray(mask)[:, None, None, :].astype(np.int64))
    merged = merge_heads(probs @ v)
    out = linear_forward(ops, merged, f"layer.{layer}.attn.out")
    return out, AttentionTape(x, qs, k, v, probs, merged)


def attention_backward(
    ops: GradOps,
    cfg: EncoderConfig,
    layer: int,
    dout: Value,
    tape: AttentionTape,
    grads: Grads,
    trainable: Trainable,
    need_dx: bool = True,
) -> Value | None:
    B = ops.B
    dmerged = linear_backward(ops, dout, tape.merged, f"layer.{layer}.attn.out", grads, trainable)
    with ops.op("attention_grad"):
        dctx = split_heads(dmerged, cfg.heads)
        dprobs = dctx @ tape.v.swapaxes(-1, -2)
        dv = tape.probs.swapaxes(-1, -2) @ dctx
        dscores = tape.probs * (dprobs - (dprobs * tape.probs).sum(axis=-1, keepdims=True))
        dq = (dscores @ tape.k) * (1.0 / math.sqrt(tape.q.shape[-1]))
        dk = dscores.swapaxes(-1, -2) @ tape.q
        dy = B.concatenate([merge_heads(dq), merge_heads(dk), merge_heads(dv)], axis=-1)
    names = _qkv_names(layer)
    with ops.op("linear_grad"):
        dy2 = _flat(dy)
        if any(trainable(n) for n in names):
            dw = _flat(tape.x).T @ dy2
            db = dy2.sum(axis=0)
            h = cfg.hidden
            for i, n in enumerate(names):
                _accumulate(grads, f"{n}.weight", dw[:, i * h : (i + 1) * h])
                _accumulate(grads, f"{n}.bias", db[i * h : (i + 1) * h])
        if not need_dx:
            return None
        w = ops.fused_weight(names)
        wt = w.T.fixed(f"{w.fixed_key}^T") if getattr(w, "fixed_key", None) else w.T
        dx = dy2 @ wt
        return dx.reshape(*dout.shape[:-1], dx.shape[-1])


# ---------------------------------------------------------------------------------------------- block
@dataclass
class BlockTape:
    attention: AttentionTape
    ln1: LayerNormTape
    a: Value
    z: Value
    h: Value
    ln2: LayerNormTape


def block_forward(
    ops: GradOps, cfg: EncoderConfig, layer: int, x: Value, mask: np.ndarray
) -> tuple[Value, BlockTape]:
    """One post-LayerNorm block, as :func:`mpc_core.nn.encoder.encoder_layer` (softmax attention)."""
    B = ops.B
    prefix = f"layer.{layer}"
    att, t_att = attention_forward(ops, cfg, layer, x, mask)
    a, t_ln1 = layer_norm_forward(ops, att + x, f"{prefix}.attn.ln", cfg.layer_norm_eps)
    z = linear_forward(ops, a, f"{prefix}.ffn.in")
    h = B.gelu(z)
    o = linear_forward(ops, h, f"{prefix}.ffn.out")
    y, t_ln2 = layer_norm_forward(ops, o + a, f"{prefix}.ffn.ln", cfg.layer_norm_eps)
    return y, BlockTape(t_att, t_ln1, a, z, h, t_ln2)


def block_backward(
    ops: GradOps,
    cfg: EncoderConfig,
    layer: int,
    dy: Value,
    tape: BlockTape,
    grads: Grads,
    trainable: Trainable,
    need_dx: bool = True,
) -> Value | None:
    prefix = f"layer.{layer}"
    ds2 = layer_norm_backward(ops, dy, tape.ln2, f"{prefix}.ffn.ln", grads, trainable)
    dh = linear_backward(ops, ds2, tape.h, f"{prefix}.ffn.out", grads, trainable)
    with ops.op("gelu_grad"):
        dz = dh * ops.gelu_derivative(tape.z)
    da = linear_backward(ops, dz, tape.a, f"{prefix}.ffn.in", grads, trainable) + ds2
    ds1 = layer_norm_backward(ops, da, tape.ln1, f"{prefix}.attn.ln", grads, trainable)
    dx = attention_backward(ops, cfg, layer, ds1, tape.attention, grads, trainable, need_dx)
    return None if dx is None else dx + ds1
