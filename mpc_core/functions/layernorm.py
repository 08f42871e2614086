"""LayerNorm over the last axis: (x - mean) rsqrt(var + eps) * weight + bias.

Maths: mu = sum(x)/H, d = x - mu, var = sum(d^2)/H (biased, as torch), y = d rsqrt(var + eps) w + b.
weight and bias may be public float arrays or SharedTensors (shape (H,), broadcast over rows).

Domain: var + eps in LAYERNORM_VAR_DOMAIN = [2^-5, 2^10] (rsqrt's domain).  Measured on all-MiniLM-L6-v2
(SST-2 and AG News, with and without random prompts, both LayerNorms of all six blocks): per-row
variances in [0.11, 131], so the domain has margins of 3.5x below and 7.8x above.  |x - mean| must stay
below 2^14 at the default f = 16 (raw squares at 2f bits below 2^60, so the bound halves with every
further fractional bit: 2^6 at f = 24; with probabilistic truncation each square also fails with
probability d^2 2^-32).

Rounds (exact truncation, the default; H = 2^a m with m odd):

1. D = H x - sum(x) is exact (ring integers), so the row's mean cancels before any rounding; one
   truncation of [D c_d, D c_q] by a + e gives d = D/H and q = D/(2^a m^1.5) (c = round(2^e/m), e = 24 - ...,
   relative error of each constant below 2^-20);
2. one product round: q^2 (and d w when the weight is shared); sum q^2 = sum d^2 / m = 2^a var exactly
   in the ring, so
3. one truncation by f + a gives var (d w is kept raw at 2f bits: it is only ever multiplied once more);
4. r = :func:`~mpc_core.functions.inverse.rsqrt_rows` (var + eps): 5 guess steps per octave in one msb
   and three products (13 rounds in 2pc, against rsqrt's 21);
5. y = (d w) r: one product and one truncation (by 2f).  At large f (3f + OUTPUT_BITS > RAW_BITS, so
   f >= 18) d w is brought to f bits in step 3's truncation instead (same rounds, H more elements).

So 18 rounds in 2pc with public or shared weights (was 28 with public weights, 30 shared) and 25 in 3pc
(was 41).  Odd parts m whose constant would be imprecise (m^1.5 2^-(e+1) > 2^-20) and probabilistic
truncation take the former path (mean, d^2, mean, rsqrt, d r, times w).

Error: with r = rsqrt(var + eps), y = d r w + b is within rel |y - b| + 4 ulp (1 + |w|) of exact, where
rel = 1.6e-5 (rsqrt) + 1.5 ulp sqrt(var) (r's own 2^-16 resolution: 1.7e-4 at var = 131)
+ 0.6 ulp / var (the variance's resolution: 1.4e-4 at var = 0.11).  The fast path's rsqrt is within
7.8e-6 relative (rsqrt_rows_error), its d within one ulp plus 2^-20 |d|, its var within one ulp: inside
the same bound, which the tests check per row at the measured and the domain's edges in both suites.
"""

from __future__ import annotations

import numpy as np

from mpc_core.functions._common import RAW_BITS, exact_truncation, mean_last, reinterpret, split
from mpc_core.functions.inverse import rsqrt, rsqrt_rows
from mpc_core.tensor import SharedTensor

LAYERNORM_VAR_DOMAIN = (2.0**-5, 2.0**10)
#: |x - mean| < 2^DIFF_BITS (the domain's guard above), which sizes the centring's constants.
DIFF_BITS = 14
#: |y - b| = |d r w| < 2^OUTPUT_BITS (|d r| <= sqrt(H), so H = 384 leaves |w| up to 13): sizes y = (d w) r.
OUTPUT_BITS = 8
#: The centring's constants must be within 2^-CONSTANT_BITS relatively, else the former path is taken.
CONSTANT_BITS = 20

Param = SharedTensor | np.ndarray | float


def _centring(h: int, frac_bits: int) -> tuple[int, int, int, int] | None:
    """(a, e, c_d, c_q) for H = 2^a m: d = D c_d / 2^(a+e), q = D c_q / 2^(a+e); None if imprecise."""
    a = (h & -h).bit_length() - 1
    m = h >> a
    # raw |D| c 2^f <= H 2^DIFF_BITS 2^f 2^e / m = 2^(a + DIFF_BITS + f + e) stays below 2^RAW_BITS
    e = RAW_BITS - a - DIFF_BITS - frac_bits
    if e < 0 or m**1.5 * 2.0 ** -(e + 1) > 2.0**-CONSTANT_BITS:
        return None
    return a, e, round(2**e / m), round(2**e / m**1.5)


def layer_norm(
    x: SharedTensor,
    weight: Param | None = None,
    bias: Param | None = None,
    eps: float = 1e-12,
    var_domain: tuple[float, float] = LAYERNORM_VAR_DOMAIN,
) -> SharedTensor:
    """LayerNorm over the last axis for rows with var + eps in ``var_domain`` (module docstring)."""
    with x.ctx.op("layernorm"):
        f = x.ctx.fp.frac_bits
        consts = _centring(x.shape[-1], f) if exact_truncation(x.ctx) else None
        if consts is None:
            return _layer_norm_direct(x, weight, bias, eps, var_domain)
        a, e, c_d, c_q = consts
        centred = x * x.shape[-1] - x.sum(axis=-1, keepdims=True)  # H x - sum(x): exact
        scaled = SharedTensor.stack([centred * c_d, centred * c_q])
        d, q = split(reinterpret(reinterpret(scaled, 0).truncate(a + e), f))
        shared_w = isinstance(weight, SharedTensor)
        if shared_w:
            w = weight.reshape((1,) * (d.ndim - weight.ndim) + weight.shape).broadcast_to(d.shape)
            raw = reinterpret(SharedTensor.stack([q, d]), 0) * reinterpret(SharedTensor.stack([q, w]), 0)
            squares, dw = raw[0], reinterpret(raw[1], 2 * f)
        else:
            squares = reinterpret(q, 0).square()
            if weight is None:
                dw = d
            else:
                ints = np.rint(np.asarray(weight, dtype=np.float64) * (1 << f)).astype(np.int64)
                dw = reinterpret(d * np.broadcast_to(ints, d.shape), 2 * f)
        total = squares.sum(axis=-1, keepdims=True)
        if dw.scale == 2 * f and 3 * f + OUTPUT_BITS > RAW_BITS:
            var, dw = _truncate_together(total, dw, f, a)
        else:
            var = reinterpret(total.truncate(f + a), f)
        r = rsqrt_rows(var + float(eps), lo=var_domain[0], hi=var_domain[1])
        y = dw * r  # (2f or f) + f bits, truncated back to f once
        if bias is not None:
            y = y + (bias if isinstance(bias, SharedTensor) else np.asarray(bias, dtype=np.float64))
        return y


def _truncate_together(
    total: SharedTensor, dw: SharedTensor, f: int, a: int
) -> tuple[SharedTensor, SharedTensor]:
    """var = total / 2^(f+a) and d w brought from 2f to f bits, in one truncation (the same round).

    Needed when f is large (3f + OUTPUT_BITS > RAW_BITS, f >= 18): d w kept at 2f bits times r at f would
    leave the ring.  d w is first multiplied by 2^a (exact) so that both take the same shift.
    """
    flat = SharedTensor.concatenate([total.reshape(-1), (reinterpret(dw, 0) * (1 << a)).reshape(-1)])
    cut = reinterpret(reinterpret(flat, 0).truncate(f + a), f)
    var = cut[: total.size].reshape(total.shape)
    return var, cut[total.size :].reshape(dw.shape)


def _layer_norm_direct(x, weight, bias, eps, var_domain) -> SharedTensor:
    """The former path: mean, d^2, mean, rsqrt (3 Newton steps), d r, times w (28 rounds in 2pc)."""
    d = x - mean_last(x)
    var = mean_last(d.square())
    r = rsqrt(var + float(eps), lo=var_domain[0], hi=var_domain[1])
    y = d * r
    if weight is not None:
        y = y * (weight if isinstance(weight, SharedTensor) else np.asarray(weight, dtype=np.float64))
    if bias is not None:
        y = y + (bias if isinstance(bias, SharedTensor) else np.asarray(bias, dtype=np.float64))
    return y
