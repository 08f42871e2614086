"""RMSNorm over the last axis (LLaMA): x rsqrt(mean(x^2) + eps) * weight.

Maths: ms = sum(x^2)/H, y = x rsqrt(ms + eps) w.  ``weight`` may be a public float array or a SharedTensor
(shape (H,), broadcast over rows).  Unlike LayerNorm there is no mean to subtract.

Why two algorithms.  LLaMA-family models carry "massive activations": a few entries of the residual stream
of one or two tokens reach |x| ~ 2^15 (SmolLM2-135M: 27,202, mean square up to 1.3e6), while ordinary rows
have mean squares down to 0.007.  At f = 16 the direct formula cannot serve both: the raw square of such an
x (x^2 2^32) leaves the ring's safe range, and rsqrt(ms) = 1/1140 has only 57 ulp at f bits.

* **Normalised** (exact truncation, the default): RMSNorm is invariant to a per-row scale, so each row is
  scaled by a secret power of two chosen from its own octave before anything large or tiny is formed:

  1. x is read with s_x <= f fractional bits (one truncation, s_x sized so that H hi 2^(2 s_x) < 2^61) and
     S = sum x^2 + H eps is kept as a raw ring integer with 2 s_x bits: no truncation, no overflow;
  2. the octave j of ms = S/H in [lo 2^j, lo 2^(j+1)) comes from one batched comparison (one msb call);
     its public constants c2_j = 1/(lo 2^j) (powers of two: exact) and k_j = sqrt(H c2_j) are selected
     locally from the comparison bits;
  3. U = S c2_j lies in [H, 2H) for every row, so one Newton rsqrt on that single octave (no comparison,
     3 iterations, up to 28 working bits) returns rsqrt(U) with about 2^-27 resolution;
  4. r = k_j rsqrt(U) = rsqrt(ms + eps) exactly in real arithmetic, kept with s_r (up to 40) fractional bits,
     and y = x r truncated to f.  |x r| <= sqrt(H) keeps that raw product small whatever the row's scale.

  Every raw product stays below 2^61 because what is multiplied is bounded by the domain (S <= H hi, U < 2H,
  r <= 1/sqrt(lo), x r <= sqrt(H)), not by the size of its factors' encodings.

* **Direct** (probabilistic truncation): ms = mean(x^2) at f bits, r = rsqrt(ms + eps) over the domain's
  octaves, y = x r.  Probabilistic truncation fails with probability |raw| 2^-64, so the normalised
  algorithm's wide raw values are not safe there; the direct one needs |x| < 2^14 and a mean-square domain
  ending at or below 2^12, and a wider domain is refused (no silent loss of accuracy).

Domain: ms + eps up to hi of ``ms_domain`` (default RMSNORM_MS_DOMAIN = [2^-14, 2^22], powers of two).
SmolLM2-135M's measured mean squares lie in [0.0073, 1.3e6] (docs/fidelity.md).  Below lo the normalised
algorithm *floors*: r = rsqrt(max(ms + eps, lo)), from one more threshold in the same comparison, so rows of
zeros (padding) and tiny random test models get a defined result; :func:`rms_norm_reference` is that
function in float64 and the plaintext backend uses it.  Above hi nothing is detected on shares (Newton
diverges once U >= 4.2 H, ms above about 2.1 hi, and the raw-value budget ends near 2 hi): the plaintext
backend refuses such rows (:func:`rms_norm_domain_error`).  The direct algorithm does not floor (below lo its
Newton converges too slowly).

Error (normalised): r has relative error 1.6e-5 (Newton, 3 iterations; 4 give 1e-9) + about 2^-20 (the
resolutions of U, k_j and r) + the error of reading x with s_x bits in the mean square: each x^2 moves by at
most 2 |x| 2^-s_x, so ms by at most 2 rms 2^-s_x and r by at most 2^-s_x / rms relative (worst case, all
errors of one sign; for independent errors sqrt(H) times less).  For H = 576 (s_x = 14): 7.8e-3 at the
domain's lowest mean square 2^-14, 7e-4 at SmolLM2's lowest measured one (0.0073), below 1e-5 for
ms >= 37; the direct algorithm's corresponding term, 0.6 ulp / ms, is 0.15 and 1.3e-3 there.  Each x
then enters y = x r with its own f-bit value, so y w is within rel |y w| + 2 ulp (1 + |w|) of exact.
Tested against float64 on rows with massive activations and on tiny rows, both suites
(tests/test_nn_llama_secure.py).

Cost (normalised, 2pc, public weight): one truncation of x, x^2 (one product of the row size), one msb
over J = 36 thresholds per row (the octaves' lower edges, the floor's included), three products per row
(S c2, k r_u, and the Newton chain's 7), x r (one product of the row size); 31 rounds in 2pc and 44 in
3pc (bench/measure.py).  The direct algorithm: about 28 rounds.
"""

from __future__ import annotations

import math

import numpy as np

from mpc_core.functions._common import (
    RAW_BITS,
    exact_truncation,
    mean_last,
    mul_at,
    piecewise_integer,
    reinterpret,
    rescale,
)
from mpc_core.functions.inverse import rsqrt
from mpc_core.tensor import SharedTensor

#: Default domain of mean(x^2) + eps: [2^-14, 2^22] (36 octaves): LLaMA's massive activations above, and
#: randomly initialised test models (embeddings of std 0.02: ms ~ 4e-4) below.
RMSNORM_MS_DOMAIN = (2.0**-14, 2.0**22)
#: The widest mean-square domain the direct algorithm (probabilistic truncation) serves: |x| < 2^14.
DIRECT_MS_DOMAIN = (2.0**-10, 2.0**12)
#: Newton iterations of the normalised algorithm's rsqrt on [H, 2H).
RMSNORM_ITERATIONS = 3
#: Fractional bits of the per-octave constants' selection and of r (bounded by the raw-product budget).
_R_BITS = 40

Param = SharedTensor | np.ndarray | float


def rms_norm(
    x: SharedTensor,
    weight: Param | None = None,
    eps: float = 1e-6,
    ms_domain: tuple[float, float] = RMSNORM_MS_DOMAIN,
    iterations: int = RMSNORM_ITERATIONS,
) -> SharedTensor:
    """RMSNorm over the last axis for rows with mean(x^2) + eps in ``ms_domain`` (module docstring)."""
    lo, hi = _check_domain(ms_domain)
    with x.ctx.op("rmsnorm"):
        if exact_truncation(x.ctx):
            y = _normalised(x, float(eps), lo, hi, iterations)
        else:
            if lo < DIRECT_MS_DOMAIN[0] or hi > DIRECT_MS_DOMAIN[1]:
                raise ValueError(
                    f"RMSNorm over mean squares in [{lo:g}, {hi:g}] needs exact truncation; with "
                    f"probabilistic truncation the domain must lie within {DIRECT_MS_DOMAIN}"
                )
            ms = mean_last(x.square())
            y = x * rsqrt(ms + float(eps), lo=lo, hi=hi)
        if weight is not None:
            y = y * (weight if isinstance(weight, SharedTensor) else np.asarray(weight, dtype=np.float64))
        return y


def rms_norm_reference(
    x: np.ndarray, weight: np.ndarray | float | None, eps: float, ms_domain: tuple[float, float]
) -> np.ndarray:
    """The float64 function the normalised secure RMSNorm computes: x rsqrt(max(ms + eps, lo)) w.

    Rows above the domain are refused (:func:`rms_norm_domain_error`): the secure function cannot serve them.
    """
    lo, hi = _check_domain(ms_domain)
    ms = np.mean(np.square(x), axis=-1, keepdims=True) + eps
    problem = _above_domain(ms, hi)
    if problem:
        raise ValueError(problem)
    y = x / np.sqrt(np.maximum(ms, lo))
    return y if weight is None else y * weight


def rms_norm_domain_error(x: np.ndarray, eps: float, ms_domain: tuple[float, float]) -> str | None:
    """Why float64 rows ``x`` would leave the secure RMSNorm's domain, or None when they fit.

    Only rows above the domain are errors (rows below it are floored, the same in both backends); the
    message names the domain, never the data's values.
    """
    _, hi = _check_domain(ms_domain)
    return _above_domain(np.mean(np.square(x), axis=-1) + eps, hi)


def _above_domain(ms_plus_eps: np.ndarray, hi: float) -> str | None:
    above = int(np.count_nonzero(ms_plus_eps > hi))
    if above:
        return f"{above} RMSNorm row(s) have a mean square above the secure domain's end {hi:g}"
    return None


def _check_domain(ms_domain: tuple[float, float]) -> tuple[float, float]:
    lo, hi = float(ms_domain[0]), float(ms_domain[1])
    if not 0 < lo < hi or not (math.log2(lo).is_integer() and math.log2(hi).is_integer()):
        raise ValueError(f"an RMSNorm mean-square domain needs powers of two 0 < lo < hi, got {ms_domain}")
    return lo, hi


def _normalised(x: SharedTensor, eps: float, lo: float, hi: float, iterations: int) -> SharedTensor:
    """y = x rsqrt(max(mean(x^2) + eps, lo)) by per-row power-of-two normalisation (module docstring)."""
    f = x.ctx.fp.frac_bits
    h = x.shape[-1]
    # 1. S = sum x^2 + H eps as a raw integer with 2 s_x fractional bits, below 2^RAW_BITS for ms <= hi
    s_x = min(f, (RAW_BITS - math.ceil(math.log2(h * hi))) // 2)
    xs = reinterpret(rescale(x, f, s_x), 0)
    total = xs.square().sum(axis=-1, keepdims=True) + round(h * eps * 2.0 ** (2 * s_x))
    # 2. the row's octave: bits b_j = [S >= H lo 2^j 2^(2 s_x)] for j = 0 .. J-1, one msb call
    octaves = round(math.log2(hi / lo))
    edges = h * lo * 2.0 ** np.arange(octaves + 1) * 2.0 ** (2 * s_x)
    bound = 2.0 * edges[-1]  # |S - edge| < 2 H hi 2^(2 s_x) for rows in the domain
    resolution = edges[0] / 4096.0  # S just above an edge may read as below it: U < 2H (1 + 2^-12)
    thresholds = np.rint(-edges[:-1]).astype(np.int64).reshape(-1, *([1] * x.ndim))
    bits = 1 - (total.expand_dims(0) + thresholds).msb(bound=bound, resolution=resolution)
    # c2 = 1 / (lo 2^j) with s_c fractional bits (exact powers of two), 0 below the domain, where
    # (1 - b_0) H puts U at H itself: r = rsqrt(lo), the floor
    s_c = RAW_BITS - 2 * s_x - math.ceil(math.log2(2 * h)) - 1
    if 2.0**s_c * (2.0 / hi) < 1:
        raise ValueError(f"the RMSNorm domain [{lo:g}, {hi:g}] is too wide for rows of {h} at f = {f}")
    c2 = 1.0 / (lo * 2.0 ** np.arange(octaves))
    c2_ints = np.concatenate([[0], np.rint(c2 * 2.0**s_c)]).astype(np.int64)
    floor = (1 - bits[0]) * (h << (2 * s_x + s_c))
    scaled = reinterpret(total * piecewise_integer(bits, c2_ints, total) + floor, 0)
    # 3. U = S c2_j = H ms / (lo 2^j) in [H, 2H): one Newton rsqrt on that single octave, at up to 28 bits
    hu = reinterpret(scaled.truncate(2 * s_x + s_c - f), f)
    r_u = rsqrt(hu, lo=float(h), hi=float(2 * h), iterations=iterations, precise=True)
    # 4. r = k_j rsqrt(U) with k_j = sqrt(H c2_j) (k_0 below the domain); r <= 1/sqrt(lo) budgets k's bits
    s_k = RAW_BITS - r_u.scale - math.ceil(math.log2(1.0 / math.sqrt(lo))) - 2
    k = np.sqrt(h * c2)
    k_ints = np.rint(np.concatenate([k[:1], k]) * 2.0**s_k).astype(np.int64)
    s_r = min(_R_BITS, RAW_BITS - f - math.ceil(math.log2(math.sqrt(h))) - 2)
    r = mul_at(piecewise_integer(bits, k_ints, total), s_k, r_u, r_u.scale, s_r)
    return reinterpret(mul_at(x, f, r, s_r, f), f)
