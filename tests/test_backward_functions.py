"""Each derivative of the backward pass against float64 / torch autograd on its stated domain, both suites.

As in tests/test_functions.py, references are computed on the *encoded* inputs where a bound is stated in
ulp, and domain edges are included.  Bounds (mpc_core/nn/grad/ops.py, layers.py):

* GELU': 7e-4 absolute on |x| <= 28 (6.3e-4 series + 6.9e-5 protocol); the series leaves GELU' beyond;
* linear backward: dx = dy W^T and dW = x^T dy within 1 ulp of the exact product of the encoded operands;
* LayerNorm backward: within LAYERNORM_GRAD_RTOL of max |dx| for row variances at the domain's edges;
* softmax-attention backward (dq, dk, dv): within ATTENTION_GRAD_RTOL of each tensor's max |.|;
* the public-constant products (scale, combine): 2^-21 relative per constant plus 1 ulp.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from mpc_core.functions.layernorm import LAYERNORM_VAR_DOMAIN
from mpc_core.nn.backend import PlainBackend, SecureBackend
from mpc_core.nn.config import EncoderConfig
from mpc_core.nn.grad.layers import (
    ATTENTION_GRAD_RTOL,
    LAYERNORM_GRAD_RTOL,
    attention_backward,
    attention_forward,
    layer_norm_backward,
    layer_norm_forward,
    linear_backward,
)
from mpc_core.nn.grad.ops import (
    GELU_DERIVATIVE_BOUND,
    gelu_derivative_exact,
    gelu_derivative_series,
    grad_ops,
)
from mpc_core.ring import FixedPoint
from mpc_core.runtime import run_parties

FP = FixedPoint()
ULP = 2.0**-FP.frac_bits


def enc(x):
    return FP.decode(FP.encode(x))


def opened(suite, program, *inputs):
    """Party 0's opened result of program(ctx, *shares); both compute parties must agree."""
    results = run_parties(suite, program, *inputs)
    first = results[0]
    flat = first if isinstance(first, tuple) else (first,)
    other = results[1] if isinstance(results[1], tuple) else (results[1],)
    for a, b in zip(flat, other, strict=True):
        np.testing.assert_array_equal(a, b)
    return first


# ---------------------------------------------------------------------------------------------- GELU'
def test_gelu_derivative_series_bound_in_float64():
    x = np.linspace(-28.0, 28.0, 56001)
    err = np.abs(gelu_derivative_series(x) - gelu_derivative_exact(x))
    assert err.max() <= 6.3e-4
    # the periodic extension is not GELU' beyond the domain (why it stops at 28)
    assert abs(gelu_derivative_series(np.array([40.0]))[0] - 1.0) > 0.5
    torch_x = torch.tensor(x[::97], requires_grad=True)
    torch.nn.functional.gelu(torch_x).sum().backward()
    np.testing.assert_allclose(gelu_derivative_exact(x[::97]), torch_x.grad.numpy(), atol=1e-12)


def test_gelu_derivative_bound_on_shares(suite):
    x = np.concatenate([np.linspace(-28, 28, 4001), [-28.0, -ULP, 0.0, ULP, 28.0]])

    def program(ctx, t):
        return grad_ops(SecureBackend(ctx, {})).gelu_derivative(t).reveal()

    got = opened(suite, program, x)
    assert np.abs(got - gelu_derivative_exact(enc(x))).max() <= GELU_DERIVATIVE_BOUND


# ---------------------------------------------------------------------------------------------- linear
def test_linear_backward_is_one_ulp_from_the_encoded_product(suite):
    rng = np.random.default_rng(1)
    x, dy, w = rng.normal(size=(2, 5, 6)), rng.normal(scale=3, size=(2, 5, 4)), rng.normal(size=(6, 4))

    def program(ctx, x_, dy_, w_, b_):
        B = SecureBackend(ctx, {"l.weight": w_.fixed("l.weight"), "l.bias": b_})
        grads = {}
        dx = linear_backward(grad_ops(B), dy_, x_, "l", grads, lambda name: True)
        return dx.reveal(), grads["l.weight"].reveal(), grads["l.bias"].reveal()

    dx, dw, db = opened(suite, program, x, dy, w, np.zeros(4))
    xe, dye, we = enc(x), enc(dy), enc(w)
    assert np.abs(dx - dye @ we.T).max() <= 1.0 * ULP
    assert np.abs(dw - xe.reshape(-1, 6).T @ dye.reshape(-1, 4)).max() <= 1.0 * ULP
    assert np.abs(db - dye.reshape(-1, 4).sum(0)).max() == 0  # a sum of shares is exact


# ---------------------------------------------------------------------------------------------- LayerNorm
def _torch_layer_norm_grads(x, w, b, dy, eps):
    tx, tw, tb = (torch.tensor(v, requires_grad=True) for v in (x, w, b))
    y = torch.nn.functional.layer_norm(tx, (x.shape[-1],), tw, tb, eps)
    (y * torch.tensor(dy)).sum().backward()
    return y.detach().numpy(), tx.grad.numpy(), tw.grad.numpy(), tb.grad.numpy()


def _layer_norm_rows(rng, h=32):
    """Rows whose variances sit at the domain's edges and in the middle (means up to 8)."""
    lo, hi = LAYERNORM_VAR_DOMAIN
    stds = np.sqrt(np.array([lo * 1.05, 0.11, 1.0, 131.0, hi * 0.95]))
    rows = rng.normal(size=(len(stds), h))
    rows = (rows - rows.mean(-1, keepdims=True)) / rows.std(-1, keepdims=True)
    return rows * stds[:, None] + rng.uniform(-8, 8, size=(len(stds), 1))


def test_layer_norm_backward_plain_equals_torch():
    rng = np.random.default_rng(2)
    x = _layer_norm_rows(rng)
    w, b, dy = rng.normal(size=32), rng.normal(size=32), rng.normal(size=x.shape)
    ops = grad_ops(PlainBackend({"ln.weight": w, "ln.bias": b}))
    y, tape = layer_norm_forward(ops, x, "ln", 1e-12)
    grads = {}
    dx = layer_norm_backward(ops, dy, tape, "ln", grads, lambda name: True)
    ry, rdx, rdw, rdb = _torch_layer_norm_grads(x, w, b, dy, 1e-12)
    np.testing.assert_allclose(y, ry, atol=1e-10)
    np.testing.assert_allclose(dx, rdx, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(grads["ln.weight"], rdw, atol=1e-10)
    np.testing.assert_allclose(grads["ln.bias"], rdb, atol=1e-10)


def test_layer_norm_backward_on_shares(suite):
    rng = np.random.default_rng(3)
    x = _layer_norm_rows(rng)
    w, b, dy = 1 + 0.3 * rng.normal(size=32), rng.normal(size=32), 4 * rng.normal(size=x.shape)

    def program(ctx, x_, w_, b_, dy_):
        ops = grad_ops(SecureBackend(ctx, {"ln.weight": w_, "ln.bias": b_}))
        _, tape = layer_norm_forward(ops, x_, "ln", 1e-12)
        grads = {}
        dx = layer_norm_backward(ops, dy_, tape, "ln", grads, lambda name: True)
        return dx.reveal(), grads["ln.weight"].reveal(), grads["ln.bias"].reveal()

    dx, dw, db = opened(suite, program, x, w, b, dy)
    _, rdx, rdw, rdb = _torch_layer_norm_grads(enc(x), enc(w), enc(b), enc(dy), 1e-12)
    for row in range(x.shape[0]):  # per row: the rows' scales differ by 2^7.5 (r = rsqrt(var))
        err = np.abs(dx[row] - rdx[row]).max()
        assert err <= LAYERNORM_GRAD_RTOL * np.abs(rdx[row]).max() + 4 * ULP, (row, err)
    assert np.abs(dw - rdw).max() <= LAYERNORM_GRAD_RTOL * np.abs(rdw).max()
    assert np.abs(db - rdb).max() == 0


# ---------------------------------------------------------------------------------------------- attention
def _attention_case(rng):
    cfg = EncoderConfig(
        arch="bert", hidden=16, heads=2, layers=1, intermediate=32, layer_norm_eps=1e-12, vocab=10,
        max_positions=16, type_vocab=0, pad_token_id=0,
    )  # fmt: skip
    h = cfg.hidden
    weights = {}
    for part in ("q", "k", "v", "out"):
        weights[f"layer.0.attn.{part}.weight"] = rng.normal(scale=0.5, size=(h, h))
        weights[f"layer.0.attn.{part}.bias"] = rng.normal(scale=0.1, size=h)
    x = rng.normal(size=(2, 7, h))
    mask = np.ones((2, 7), dtype=np.int64)
    mask[1, 4:] = 0
    dout = rng.normal(scale=4.0, size=(2, 7, h))
    return cfg, weights, x, mask, dout


def _torch_attention_grads(cfg, weights, x, mask, dout):
    t = {k: torch.tensor(v, requires_grad=True) for k, v in weights.items()}
    tx = torch.tensor(x, requires_grad=True)
    n, length, h = x.shape
    d = h // cfg.heads

    def proj(part, inp):
        y = inp @ t[f"layer.0.attn.{part}.weight"] + t[f"layer.0.attn.{part}.bias"]
        return y

    def heads(y):
        return y.reshape(n, length, cfg.heads, d).transpose(1, 2)

    q, k, v = (heads(proj(p, tx)) for p in ("q", "k", "v"))
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    scores = scores.masked_fill(torch.tensor(mask)[:, None, None, :] == 0, float("-inf"))
    ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(n, length, h)
    out = proj("out", ctx)
    (out * torch.tensor(dout)).sum().backward()
    return tx.grad.numpy(), {k: v.grad.numpy() for k, v in t.items()}


def test_attention_backward_plain_equals_torch():
    cfg, weights, x, mask, dout = _attention_case(np.random.default_rng(4))
    ops = grad_ops(PlainBackend(weights))
    _, tape = attention_forward(ops, cfg, 0, x, mask)
    grads = {}
    dx = attention_backward(ops, cfg, 0, dout, tape, grads, lambda name: True)
    rdx, rgrads = _torch_attention_grads(cfg, weights, x, mask, dout)
    np.testing.assert_allclose(dx, rdx, rtol=1e-9, atol=1e-10)
    for name, ref in rgrads.items():
        np.testing.assert_allclose(grads[name], ref, rtol=1e-9, atol=1e-10)


def test_attention_backward_on_shares(suite):
    cfg, weights, x, mask, dout = _attention_case(np.random.default_rng(5))
    names = sorted(weights)

    def program(ctx, x_, dout_, *ws):
        shared = {n: (w.fixed(n) if w.ndim == 2 else w) for n, w in zip(names, ws, strict=True)}
        ops = grad_ops(SecureBackend(ctx, shared))
        _, tape = attention_forward(ops, cfg, 0, x_, mask)
        grads = {}
        dx = attention_backward(ops, cfg, 0, dout_, tape, grads, lambda name: True)
        return dx.reveal(), {n: g.reveal() for n, g in grads.items()}

    results = run_parties(suite, program, x, dout, *(weights[n] for n in names))
    dx, grads = results[0]
    rdx, rgrads = _torch_attention_grads(
        cfg, {n: enc(w) for n, w in weights.items()}, enc(x), mask, enc(dout)
    )
    assert np.abs(dx - rdx).max() <= ATTENTION_GRAD_RTOL * np.abs(rdx).max()
    for name, ref in rgrads.items():
        if name.endswith("k.bias"):  # exactly 0: softmax ignores a shift of every key
            assert (
                np.abs(grads[name]).max()
                <= ATTENTION_GRAD_RTOL * np.abs(rgrads[name.replace("k.", "v.")]).max()
            )
            continue
        assert np.abs(grads[name] - ref).max() <= ATTENTION_GRAD_RTOL * np.abs(ref).max(), name


# ---------------------------------------------------------------------------------------------- constants
def test_public_constant_products_keep_relative_precision(suite):
    x = np.linspace(-50, 50, 201)
    constants = [1e-3, 0.0123, 0.9, 1.0 - 1e-3]

    def program(ctx, t):
        ops = grad_ops(SecureBackend(ctx, {}))
        scaled = [ops.scale(t, c).reveal() for c in constants]
        combined = ops.combine([(t, 0.999), (t, 1e-3)]).reveal()
        return (*scaled, combined)

    got = opened(suite, program, x)
    xe = enc(x)
    for c, g in zip(constants, got[:-1], strict=False):
        assert np.abs(g - xe * c).max() <= 2.0**-21 * np.abs(xe).max() * c + ULP, c
    assert np.abs(got[-1] - xe).max() <= 2.0**-21 * np.abs(xe).max() + ULP
