"""reciprocal(x) = 1/x and rsqrt(x) = 1/sqrt(x) for positive x in a documented octave domain [lo, hi].

Initial guess (one batched comparison, no normalisation circuit): the bits [x >= lo 2^j] for every octave
boundary in (lo, hi) come from one msb call (:func:`~mpc_core.functions._common.octave_bits`); each octave
[t, 2t) gets the public constant that minimises the worst relative error of the guess on it, selected
locally.  Then a few quadratically convergent iterations:

* reciprocal (Goldschmidt): guess 2/(3t), so e0 = 1 - x y0 lies in [-1/3, 1/3]; y_{i+1} = y_i (1 + e_i),
  e_{i+1} = e_i^2 (both products in one round) gives y_K = (1 - e0^(2^K)) / x: relative error at most
  (1/3)^(2^K) = 1.53e-4 for K = 3 (always below 1/x), 2.3e-8 for K = 4.
* rsqrt (Newton, coupled): guess 2/((1 + sqrt 2) sqrt t), so |1 - y0 sqrt x| <= 0.172; g = x y,
  r = (3 - g y)/2, (g, y) <- (g r, y r) is Newton's y <- y (3 - x y^2)/2 in two rounds instead of three
  (the halving is exact: 3 - g y is read with one more fractional bit); relative error
  d_{i+1} = -(3/2) d_i^2 - d_i^3/2: 0.172 -> 0.047 -> 3.3e-3 -> 1.6e-5 after K = 3 iterations.

Precision: with exact truncation (the default) the iterations run with up to 28 fractional bits
(``working_bits``, sized from the domain so every raw product stays below 2^61), so the result is the
iteration's value rounded once to f bits: error <= approximation + about 1 ulp (2^-16) absolute.  The
result's own resolution is 2^-16 absolute, i.e. 2^-16 x relative for 1/x (1.6% at x = 1024).  With
probabilistic truncation the iterations run at f bits and add a few ulp relative to g = x y (up to 8 ulp
of the result for rsqrt at small x).

Inputs outside [lo, hi] are *not* detected: the guess of the first or last octave is used, and the
iteration diverges once |e0| >= 1 (reciprocal: x >= 1.5 hi or x <= 0; rsqrt: x >= 2.1 hi); below lo it
converges too slowly (relative error e0^(2^K)); and the working precision assumes the domain.
Measured domains on all-MiniLM-L6-v2 (SST-2, AG News, with random prompts): softmax denominators
in [1, 90] (always in [1, n]); LayerNorm variances in [0.11, 131]; squared norms of mean-pooled outputs
(similarity head) in [1.9, 55].

Cost: J = ceil(log2(hi/lo)) - 1 comparisons per element in one windowed msb (7 rounds 2pc, 8 in 3pc), then
1 + K products (reciprocal) or 1 + 2K products (rsqrt), each a product round plus a truncation round
(2 rounds in 2pc, 3 in 3pc with exact truncation).
"""

from __future__ import annotations

import numpy as np

from mpc_core.functions._common import (
    RAW_BITS,
    exact_truncation,
    mul_at,
    octave_bits,
    octave_edges,
    on_grid,
    piecewise_constant,
    piecewise_integer,
    reinterpret,
    rescale,
    split,
    working_bits,
)
from mpc_core.ring import FixedPoint
from mpc_core.tensor import SharedTensor

#: Default domains (callers that know tighter ones pass lo and hi: each octave costs one comparison).
RECIPROCAL_DOMAIN = (2.0**-4, 2.0**10)
RSQRT_DOMAIN = (2.0**-8, 2.0**8)
RECIPROCAL_ITERATIONS = 3
RSQRT_ITERATIONS = 3


def _magnitude_bits(largest: float) -> int:
    """Bits needed for values up to ``largest`` (at least 1)."""
    return max(1, int(np.ceil(np.log2(largest))))


def reciprocal(
    x: SharedTensor,
    lo: float = RECIPROCAL_DOMAIN[0],
    hi: float = RECIPROCAL_DOMAIN[1],
    iterations: int = RECIPROCAL_ITERATIONS,
    precise: bool = False,
) -> SharedTensor:
    """1/x for x in [lo, hi]: |error| <= 1.53e-4 / x + 1 ulp with 3 iterations (module docstring).

    ``precise`` returns the result with the working precision's fractional bits (up to 28) instead of f:
    the ulp of 1/x then shrinks from 2^-f to 2^-28, which matters for large x (1/x = 2^-8 has only 256
    ulp at f = 16).  The caller's next product truncates it back to f bits (SharedTensor tracks the scale).
    """
    with x.ctx.op("reciprocal"):
        f = x.ctx.fp.frac_bits
        edges = octave_edges(lo, hi, f)
        guess = 2.0 / (3.0 * edges[:-1])  # 2 / (t + 2t): |1 - x y0| <= 1/3 on [t, 2t]
        # working precision: y <= 4/(3 lo), |e| <= 1/3; the largest product is y (1 + e) <= 16/(9 lo)
        s = working_bits(x.ctx, _magnitude_bits(2.0 / edges[0]))
        y = rescale(piecewise_constant(octave_bits(x, edges), guess, x), f, s)
        e = 1 - mul_at(x, f, y, s, s)
        for _ in range(iterations - 1):
            y, e = split(mul_at(SharedTensor.stack([y, e]), s, SharedTensor.stack([1 + e, e]), s, s))
        out = s if precise else f
        return reinterpret(mul_at(y, s, 1 + e, s, out), out)


def rsqrt(
    x: SharedTensor,
    lo: float = RSQRT_DOMAIN[0],
    hi: float = RSQRT_DOMAIN[1],
    iterations: int = RSQRT_ITERATIONS,
    precise: bool = False,
) -> SharedTensor:
    """1/sqrt(x) for x in [lo, hi]: |error| <= 1.6e-5 / sqrt(x) + about 1 ulp (module docstring).

    ``precise`` returns the working precision's fractional bits (up to 28) instead of f, as
    :func:`reciprocal` does: for large x the result 1/sqrt(x) has few ulp at f bits.
    """
    with x.ctx.op("rsqrt"):
        f = x.ctx.fp.frac_bits
        edges = octave_edges(lo, hi, f)
        guess = 2.0 / ((1.0 + np.sqrt(2.0)) * np.sqrt(edges[:-1]))  # |1 - y0 sqrt(x)| <= 0.172
        # working precision: g = x y ~ sqrt(x) and y ~ 1/sqrt(x) (within 1.2x), times r <= 1.5 at s + 1 bits
        s = working_bits(x.ctx, 1 + _magnitude_bits(1.8 * max(np.sqrt(edges[-1]), 1.0 / np.sqrt(edges[0]))))
        y = rescale(piecewise_constant(octave_bits(x, edges), guess, x), f, s)
        g = mul_at(x, f, y, s, s)
        for i in range(iterations):
            # r = (3 - g y) / 2: the s-bit value 3 - g y read with s + 1 fractional bits (exact halving)
            r = reinterpret(3 - mul_at(g, s, y, s, s), s + 1)
            if i + 1 < iterations:
                g, y = split(mul_at(SharedTensor.stack([g, y]), s, SharedTensor.stack([r, r]), s + 1, s))
            else:
                y = mul_at(y, s, r, s + 1, s if precise else f)
        return reinterpret(y, s if precise else f)


#: Guess steps per octave of :func:`rsqrt_rows` (edges lo 2^(j/5)): |1 - x Y2| <= 0.0697 on every step.
RSQRT_ROWS_STEPS = 5
#: rsqrt_rows' correction: 1/sqrt(1 - e) to degree 3 in e, remainder <= (35/128) e^4 / (1 - e).
_ROOT_SERIES = (1.0, 0.5, 0.375, 0.3125)


def fine_edges(lo: float, hi: float, steps: int, frac_bits: int) -> np.ndarray:
    """Step edges lo 2^(j/steps) covering [lo, hi] (whole octaves), rounded to the fixed-point grid."""
    octaves = octave_edges(lo, hi, frac_bits)
    count = (octaves.size - 1) * steps
    edges = on_grid(lo * 2.0 ** (np.arange(count + 1) / steps), frac_bits)
    if np.any(np.diff(edges) <= 0):
        raise ValueError(f"steps of [{lo}, {hi}] are finer than the fixed-point grid")
    return edges


def rsqrt_rows_error(lo: float, hi: float, steps: int = RSQRT_ROWS_STEPS) -> float:
    """Relative error bound of :func:`rsqrt_rows` before its one-ulp output rounding (docstring)."""
    edges = fine_edges(lo, hi, steps, FixedPoint().frac_bits)
    ratio = float(np.max(edges[1:] / edges[:-1]))
    e = (ratio - 1) / (ratio + 1) + 2.0**-13  # the guess, plus an input read as the step below
    return 35 / 128 * e**4 / (1 - e) + 2.0**-20  # the series' remainder + the working precision's terms


def rsqrt_rows(
    x: SharedTensor, lo: float, hi: float, steps: int = RSQRT_ROWS_STEPS, precise: bool = False
) -> SharedTensor:
    """1/sqrt(x) for x in [lo, hi] in few rounds, for per-row use (LayerNorm): relative error
    <= rsqrt_rows_error(lo, hi) (7.8e-6 for [2^-5, 2^10]) plus one ulp of the output.

    Initial guess from ``steps`` steps per octave (steps times :func:`rsqrt`'s comparisons, all in one
    windowed msb, so the same rounds): on a step [t, t'), the public pair Y2 = 2 / (t + t') and
    y0 = sqrt(Y2) (both on the working grid) gives e = 1 - x Y2 with |e| <= (t'/t - 1)/(t'/t + 1), 0.0690
    for 5 steps (0.0697 with the edges on the grid).  Then 1/sqrt(x) = y0 / sqrt(1 - e)
    = y0 (1 + e/2 + 3e^2/8 + 5e^3/16 + ...): three product rounds, h = x Y2, then [y0 e, e^2], then
    [(y0 e) e, (y0 e) e^2], summed with the series' weights at 2s + 4 fractional bits and truncated once.
    The remainder is at most (35/128) e^4 / (1 - e) = 6.8e-6 relative; the working precision s (up to 27
    bits, exact truncation) adds about 2^-22 relative (y0 and sqrt(Y2) differ by half a unit of s), below
    2^-20 in all.  Rounds in 2pc: the msb's 7, then 6 (three products, each with its truncation), against
    :func:`rsqrt`'s 7 + 14.  Bytes grow with the comparisons (5 per octave and element): negligible for
    one value per row, large per element, which is why :func:`rsqrt` keeps its octave guess.

    With probabilistic truncation it runs at f bits (same rounds; the remainder and one ulp of x Y2 per
    product, still far below the documented 1.6e-5 of :func:`rsqrt`).  Outside [lo, hi] the first or last
    step's guess is used and |e| grows: no detection (as :func:`rsqrt`).
    """
    with x.ctx.op("rsqrt"):
        f = x.ctx.fp.frac_bits
        edges = fine_edges(lo, hi, steps, f)
        y2 = 2.0 / (edges[:-1] + edges[1:])
        largest = float(np.sqrt(y2[0]))  # y0 at the lowest step
        # working precision: the last sum carries y0 at 2s + 4 bits, below 2^61
        s = f
        if exact_truncation(x.ctx):
            s = max(f, min(27, int((RAW_BITS - 4 - np.log2(largest) - 0.01) // 2)))
        y2_ints = np.rint(y2 * 2.0**s).astype(np.int64)
        y0_ints = np.rint(np.sqrt(y2_ints / 2.0**s) * 2.0**s).astype(np.int64)
        bits = octave_bits(x, edges)
        y2_sel = reinterpret(piecewise_integer(bits, y2_ints, x), s)
        y0 = reinterpret(piecewise_integer(bits, y0_ints, x), s)
        e = 1 - mul_at(x, f, y2_sel, s, s)
        u, v = split(mul_at(SharedTensor.stack([y0, e]), s, SharedTensor.stack([e, e]), s, s))
        raw = reinterpret(SharedTensor.stack([u, u]), 0) * reinterpret(SharedTensor.stack([e, v]), 0)
        c = [int(w * 16) for w in _ROOT_SERIES]  # 16, 8, 6, 5: the weights at 2s + 4 bits
        total = (
            reinterpret(y0, 0) * (c[0] << s) + reinterpret(u, 0) * (c[1] << s) + raw[0] * c[2] + raw[1] * c[3]
        )
        out = s if precise else f
        return reinterpret(total.truncate(2 * s + 4 - out), out)
