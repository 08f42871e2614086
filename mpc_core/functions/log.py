"""Natural logarithm log(x) for positive x in a documented octave domain [lo, hi].

Maths: with the octave bits [x >= lo 2^j] (one batched msb, as for reciprocal), x = t u with t = lo 2^j
the start of x's octave and u in [1, 2); log x = log t + log u.  Both t-dependent constants (log t and
2/t) are selected locally from the bits; v = 2u - 3 = x (2/t) - 3 in [-1, 1) costs one product; log u =
log(3/2 + v/2) is a degree-6 polynomial in v (Chebyshev interpolant converted to the power basis at import,
max error 1.7e-6 on [-1, 1]), with v^2..v^6 in three rounds and one truncation for the sum.

Domain: x in [lo, hi], default [2^-8, 2^8] (cross-entropy needs log of sum(exp(z - max z)) in [1, C] for
C classes: pass lo=1, hi=C).  Outside it the first or last octave's constants are used and the polynomial
is evaluated outside [-1, 1]: wrong without warning.

Error: |log x - result| <= 1.7e-6 (polynomial) + about 4 ulp (truncations) + 2^-16 / x (the input's own
fixed-point resolution: 4e-3 at x = 2^-8, negligible for x >= 1).

Cost: J = ceil(log2(hi/lo)) - 1 comparisons per element in one windowed msb (7 rounds 2pc, 8 in 3pc) and four
products (4 rounds in 2pc, 9 in 3pc with the final truncation).
"""

from __future__ import annotations

import numpy as np
from numpy.polynomial import Chebyshev, Polynomial

from mpc_core.functions._common import (
    linear_combination,
    octave_bits,
    octave_edges,
    piecewise_constant,
    powers,
)
from mpc_core.tensor import SharedTensor

LOG_DOMAIN = (2.0**-8, 2.0**8)
LOG_DEGREE = 6


def _log_coefficients(degree: int) -> np.ndarray:
    """Power-basis coefficients of the Chebyshev interpolant of log(3/2 + v/2) on [-1, 1]."""
    cheb = Chebyshev.interpolate(lambda v: np.log(1.5 + 0.5 * v), degree)
    return cheb.convert(kind=Polynomial).coef


_COEFFS = _log_coefficients(LOG_DEGREE)


def log(x: SharedTensor, lo: float = LOG_DOMAIN[0], hi: float = LOG_DOMAIN[1]) -> SharedTensor:
    """log(x) for x in [lo, hi]; absolute error <= 1.7e-6 + 4 ulp + 2^-16/x (module docstring)."""
    with x.ctx.op("log"):
        edges = octave_edges(lo, hi, x.ctx.fp.frac_bits)
        starts = edges[:-1]
        bits = octave_bits(x, edges)
        v = x * piecewise_constant(bits, 2.0 / starts, x) - 3.0
        poly = linear_combination(SharedTensor.stack(powers(v, LOG_DEGREE)), _COEFFS[1:], _COEFFS[0])
        return poly + piecewise_constant(bits, np.log(starts), x)
