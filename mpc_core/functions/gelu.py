"""GELU(x) = x Phi(x) = x/2 (1 + erf(x / sqrt 2)): a 7-term cosine series on |x| < 5, exact tails beyond.

Maths: GELU(x) = x/2 + g(x) with g(x) = (x/2) erf(x / sqrt 2), even and smooth, and GELU(x) - relu(x)
= -|x| Phi(-|x|), below 1.53e-5 for |x| >= 4.5.  So (:mod:`~mpc_core.functions.tailed_series`)

    GELU(x) ~ x [x >= 4.5] + S(x (1 - [x >= 4.5] - [x <= -4.5])) - ([x >= 4.5] + [x <= -4.5]) S(0),
    S(u) = u/2 + c_0 + sum_{k=1..7} c_k cos(2 pi k u / 16),

with the coefficients c_k a minimax fit of g on [0, 5] (``minimax_cosine_fit``, rounded to the 2^-16 grid
and recorded in GELU_COEFFICIENTS so every participant holds the same public numbers).  The comparisons
read only the carry bits from 2^-1 up to the domain's bound, so x in [4.5, 5) may take either branch;
the series is fitted up to 5 so both are right there.

Domain: |x| <= GELU_DOMAIN = 120 (the comparisons' bound: 8 carry bits, 2^-1 to 2^7).  Measured GELU inputs of
all-MiniLM-L6-v2 on SST-2 and AG News, with and without random prompts: [-20.7, 24.8] (99.8% within
[-5.5, 2.3]; docs/functions.md).  The former single series (18 odd harmonics, period 64, kept below as
``GELU``) was valid only on |x| <= 28 and followed its periodic extension beyond.

Error: the float64 model is within 1.85e-4 of GELU on the domain (series on |x| < 5: 1.85e-4 on a grid of
spacing 1e-5; tails: 1.53e-5), below GELU_SERIES_TARGET = 2.5e-4; the protocol adds at most
2.42 ulp sum_{k>=1} |c_k| + 1 ulp = 1.2e-4 (sum |c_k| = 2.74; the tails and bits are exact): max abs
error <= GELU_SERIES_TARGET + gelu_fixed_point_bound() = 3.7e-4, below the former 5.5e-4.  Tested
pointwise in both suites against the model (either branch in the fuzzy band) and against GELU.

Cost per element, 2pc (measured, bench/results/nonlinear_ab.json): 7 harmonics, so 14 dealt table values
(the former series dealt 36); one windowed msb of two values (8 carry bits each) and one product of x by
the two bits.  Dealer 157 B (was 296), parties 81 B (was 8), 8 rounds (was 2; 3pc 10, was 3).  CPU in-process
about the same as the former series (the comparisons and the product cost what the 11 saved harmonics
did); over gRPC 0.58x in 2pc, where moving the dealer's bytes costs CPU too.  The
comparisons' bound is kept at 124.5 (8 bits) for that reason: a 12-bit window (domain 2000) cost 1.26x.

The full-period wave ``GELU`` (P = 64, 18 odd harmonics, |x| <= 28, error <= 5.5e-4) stays for the
backward pass's GELU' (:mod:`mpc_core.nn.grad.ops` differentiates its series); ``gelu`` no longer uses it.
"""

from __future__ import annotations

import math

import numpy as np

from mpc_core.functions.tailed_series import TailedSeriesActivation
from mpc_core.functions.triangle_series import TriangleWaveActivation
from mpc_core.tensor import SharedTensor

#: |x| <= GELU_DOMAIN: where the tails' comparisons are exact (their window's bound).
GELU_DOMAIN = 120.0
#: The model's error target on the domain (the series' and the tails').
GELU_SERIES_TARGET = 2.5e-4
#: The tails start at GELU_THRESHOLD; x within GELU_RESOLUTION above it may still use the series.
GELU_THRESHOLD = 4.5
GELU_RESOLUTION = 0.5
#: The series' period (a power of two above 2 (T + r) = 10).
GELU_SERIES_PERIOD = 16.0
#: round(c_k 2^16), k = 0..7: minimax_cosine_fit(g, 16, 7, 5.0) on the grid (tests re-derive it).
GELU_COEFFICIENTS = (139141, -128788, 12848, -23584, 6028, -6157, 1264, -741)

#: The full-period triangle wave (GELU' in mpc_core.nn.grad.ops): period, domain, harmonics' limit.
GELU_PERIOD = 64.0
GELU_WAVE_DOMAIN = 28.0
MAX_HARMONICS = 40

_erf = np.frompyfunc(math.erf, 1, 1)


def gelu_reference(x: np.ndarray) -> np.ndarray:
    """Exact GELU in float64 (erf form, as BERT)."""
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))


def _half_x_erf(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * _erf(x / math.sqrt(2.0)).astype(np.float64)


def gelu_tail_error(t: float) -> float:
    """max_{|x| >= t} |GELU(x) - relu(x)| = t Phi(-t) for t >= 1 (x Phi(-x) decreases there)."""
    return t * 0.5 * math.erfc(t / math.sqrt(2.0))


GELU_TAILED = TailedSeriesActivation(
    name="gelu",
    even_part=_half_x_erf,
    reference=gelu_reference,
    tail_error=gelu_tail_error,
    coefficients=GELU_COEFFICIENTS,
    period=GELU_SERIES_PERIOD,
    threshold=GELU_THRESHOLD,
    resolution=GELU_RESOLUTION,
    domain=GELU_DOMAIN,
)
#: The float64 model (either branch of the fuzzy band) and the protocol's bound, by name.
gelu_model = GELU_TAILED.model
gelu_fixed_point_bound = GELU_TAILED.fixed_point_bound

GELU = TriangleWaveActivation(
    name="gelu",
    bump=_half_x_erf,
    reference=gelu_reference,
    period=GELU_PERIOD,
    domain=GELU_WAVE_DOMAIN,
    target=GELU_SERIES_TARGET,
    max_harmonics=MAX_HARMONICS,
)
#: The full-period wave's harmonics (18 odd ones), as mpc_core.nn.grad.ops reads them.
gelu_harmonics = GELU.harmonics


def gelu(x: SharedTensor) -> SharedTensor:
    """GELU(x) for |x| <= 120: max abs error <= 3.7e-4 (module docstring), 7 harmonics, 2 comparisons."""
    return GELU_TAILED.secure(x)
