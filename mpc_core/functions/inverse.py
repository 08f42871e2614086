"""reciprocal(x) = 1/x and rsqrt(x) = 1/sqrt(x) for positive x in a documented octave domain [lo, hi].

Initial guess (one batched comparison, no normalisation circuit): the bits [x >= lo 2^j] for every octave
boundary in (lo, hi) come from one msb call (:func:`~mpc_core.functions._common.octave_bits`); each octave
[t, 2t) gets the public constant that minimises the worst relative error of the guess on it, selected
locally.  Then a few quadratically convergent iterations (Goldschmidt; see each function):

* reciprocal: guess 2/(3t), so e0 = 1 - x y0 lies in [-1/3, 1/3]; y_{i+1} = y_i (1 + e_i),
  e_{i+1} = e_i^2 (both products in one round) gives y_K = (1 - e0^(2^K)) / x: relative error
  (1/3)^(2^K) = 1.5e-4 for K = 3, 2.3e-8 for K = 4.
* rsqrt: guess 2/((1 + sqrt 2) sqrt t), so |1 - y0 sqrt x| <= 0.172; the coupled iteration
  g = x y, r = (3 - g y)/2, (g, y) <- (g r, y r) is Newton's y <- y (3 - x y^2)/2 in two rounds instead
  of three (the halving is exact: 3 - g y is read with one more fractional bit); relative error
  d_{i+1} = -(3/2) d_i^2 - d_i^3/2: 0.172 -> 0.047 -> 3.3e-3 -> 1.6e-5 after K = 3 iterations.

Fixed-point floor: the result has absolute resolution 2^-16, so the relative error is at least
2^-16 / result: e.g. 1/x at x = 256 is 2^-8, resolved to 2^-8 relative.  Truncation errors add a few ulp
(Goldschmidt does not self-correct, but every factor 1 + e_i is within [2/3, 4/3]).

Inputs outside [lo, hi] (at the octave ends) are *not* detected: the guess of the first or last octave is
used, and the iteration diverges once |e0| >= 1 (reciprocal: x >= 1.5 hi or x <= 0; rsqrt: x >= 3.4 hi).
Measured domains on all-MiniLM-L6-v2 (SST-2, AG News, with random prompts): softmax denominators
in [1, 90] (always in [1, n]); LayerNorm variances in [0.11, 131]; squared norms of mean-pooled outputs
(similarity head) in [1.9, 55].

Cost: J = ceil(log2(hi/lo)) - 1 comparisons per element in one msb (8 rounds 2pc, 9 in 3pc), then
1 + K products (reciprocal) or 1 + 2K products (rsqrt), each one round in 2pc and two in 3pc.
"""

from __future__ import annotations

import numpy as np

from mpc_core.functions._common import (
    multiply_pairs,
    octave_bits,
    octave_edges,
    piecewise_constant,
    reinterpret,
)
from mpc_core.tensor import SharedTensor

#: Default domains (callers that know tighter ones pass lo and hi: each octave costs one comparison).
RECIPROCAL_DOMAIN = (2.0**-4, 2.0**10)
RSQRT_DOMAIN = (2.0**-6, 2.0**10)
RECIPROCAL_ITERATIONS = 3
RSQRT_ITERATIONS = 3


def reciprocal(
    x: SharedTensor,
    lo: float = RECIPROCAL_DOMAIN[0],
    hi: float = RECIPROCAL_DOMAIN[1],
    iterations: int = RECIPROCAL_ITERATIONS,
) -> SharedTensor:
    """1/x for x in [lo, hi]: relative error (1/3)^(2^iterations) + a few ulp / (1/x) (module docstring)."""
    with x.ctx.op("reciprocal"):
        edges = octave_edges(lo, hi, x.ctx.fp.frac_bits)
        guess = 2.0 / (3.0 * edges[:-1])  # 2 / (t + 2t): |1 - x y0| <= 1/3 on [t, 2t]
        y = piecewise_constant(octave_bits(x, edges), guess, x)
        e = 1.0 - x * y
        for _ in range(iterations - 1):
            y, e = multiply_pairs([y, e], [1.0 + e, e])
        return y * (1.0 + e)


def rsqrt(
    x: SharedTensor,
    lo: float = RSQRT_DOMAIN[0],
    hi: float = RSQRT_DOMAIN[1],
    iterations: int = RSQRT_ITERATIONS,
) -> SharedTensor:
    """1/sqrt(x) for x in [lo, hi]: relative error 1.6e-5 (3 iterations) + a few ulp / result."""
    with x.ctx.op("rsqrt"):
        edges = octave_edges(lo, hi, x.ctx.fp.frac_bits)
        guess = 2.0 / ((1.0 + np.sqrt(2.0)) * np.sqrt(edges[:-1]))  # |1 - y0 sqrt(x)| <= 0.172
        y = piecewise_constant(octave_bits(x, edges), guess, x)
        g = x * y
        for i in range(iterations):
            # r = (3 - g y) / 2: read the scale-f value 3 - g y with f + 1 fractional bits (exact halving)
            r = reinterpret(3 - g * y, x.ctx.fp.frac_bits + 1)
            if i + 1 < iterations:
                g, y = multiply_pairs([g, y], [r, r])
            else:
                y = y * r
        return y
