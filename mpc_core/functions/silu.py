"""SiLU(x) = x sigmoid(x) (LLaMA's SwiGLU gate) in one trig round, on a stated domain, as GELU is done.

Maths: SiLU(x) = x/2 + g(x) with g(x) = (x/2) tanh(x/2), an even, smooth function equal to |x|/2 up to
|x| / (1 + e^|x|) (1.8e-4 at |x| = 11, 1.8e-6 at 16).  Its periodic extension of period P,

    g_P(x) = g(x)              for |x| <= P/4,
    g_P(x) = P/4 - g(P/2 - |x|) for P/4 <= |x| <= P/2,

is a smoothed triangle wave (at |x| = P/4 = 32 both pieces equal 16 with slope 1/2 to double precision),
even and half-wave antisymmetric, so its cosine series has only odd harmonics (plus the constant P/8);
it equals g on |x| <= P/2 - 11 up to 1.8e-4.  So

    SiLU(x) = x/2 + P/8 + sum_{k odd} a_k cos(2 pi k x / P),

a linear combination of the cosines of one trig call, as :mod:`mpc_core.functions.gelu`.  tanh has poles
at +-i pi, so the coefficients fall only like e^(-2 pi^2 k / P) (GELU's like a Gaussian): SiLU needs more
harmonics than GELU for the same error.  Their number is the smallest whose series error on the domain is
at most SILU_SERIES_TARGET (:func:`silu_harmonics`, :func:`silu_error_table`).

Domain: |x| <= SILU_DOMAIN = 53 with P = 128 (a power of two in ring units, as trig requires).  Measured
gate pre-activations of SmolLM2-135M (all 30 layers, 32 SST-2 dev sentences): [-33.7, 52.8], so the
margin above is thin (docs/fidelity.md).  With P = 64 the domain would be |x| <= 20 with 15 harmonics.
Beyond |x| = 53 the series follows the periodic extension, not SiLU: wrong by 2.6e-3 at |x| = 56, by 6 at
|x| = 70 and by 32 at |x| = 96.

Error: the float64 model (coefficients on the 2^-16 grid) is within SILU_SERIES_TARGET = 2.5e-4 of SiLU on
the domain with 30 odd harmonics (:func:`silu_harmonics` picks the count); the protocol adds at most
2.42 ulp sum|a_k| + 1 ulp = 6.0e-4 (:func:`silu_fixed_point_bound`, from fourier.py): max abs error
<= 8.5e-4.  Both parts are tested pointwise in both suites (tests/test_nn_llama_functions.py).

Cost: one trig round and the series' truncation, as GELU; the dealer's tables grow with the 30 harmonics
(2 values each per element, offline), 1.7x GELU's 18.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from mpc_core.functions._common import on_grid
from mpc_core.functions.fourier import cosine_series, evaluate_series, fourier_coefficients
from mpc_core.ring import FixedPoint
from mpc_core.tensor import SharedTensor

SILU_PERIOD = 128.0
SILU_DOMAIN = 53.0
SILU_SERIES_TARGET = 2.5e-4
MAX_HARMONICS = 48


def silu_reference(x: np.ndarray) -> np.ndarray:
    """Exact SiLU in float64: x sigmoid(x) = x/2 (1 + tanh(x/2)) (no overflow for large |x|)."""
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * x * (1.0 + np.tanh(0.5 * x))


def _half_x_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * np.tanh(0.5 * x)


def periodic_bump(x: np.ndarray, period: float = SILU_PERIOD) -> np.ndarray:
    """g_P(x): the period-P smoothed triangle wave equal to (x/2) tanh(x/2) near 0."""
    wrapped = np.abs(np.mod(np.asarray(x, dtype=np.float64) + period / 2, period) - period / 2)
    quarter = period / 4
    return np.where(wrapped <= quarter, _half_x_tanh(wrapped), quarter - _half_x_tanh(period / 2 - wrapped))


@lru_cache(maxsize=4)
def _coefficients(period: float) -> np.ndarray:
    a, _b = fourier_coefficients(lambda x: periodic_bump(x, period), period)
    return a


def silu_series(x: np.ndarray, count: int, period: float = SILU_PERIOD) -> np.ndarray:
    """float64 model of the secure evaluation: x/2 + the series with coefficients on the 2^-16 grid."""
    a = on_grid(_coefficients(period), FixedPoint().frac_bits)
    ks = np.arange(1, 2 * count, 2)
    return 0.5 * np.asarray(x, dtype=np.float64) + evaluate_series(x, period, ks, a[ks], a[0])


def silu_fixed_point_bound(count: int, period: float = SILU_PERIOD) -> float:
    """Worst-case error the protocol adds to the float64 model: 2.42 ulp sum|a_k| + 1 ulp (fourier.py)."""
    a = _coefficients(period)
    ulp = 2.0 ** -FixedPoint().frac_bits
    return (1 + math.sqrt(2)) * ulp * float(np.sum(np.abs(a[1 : 2 * count : 2]))) + ulp


def silu_error_table(
    period: float = SILU_PERIOD, domain: float = SILU_DOMAIN, counts: range = range(8, 41, 4)
) -> dict[int, float]:
    """Max |series - SiLU| in float64 on [-domain, domain] for each number of odd harmonics."""
    grid = np.linspace(-domain, domain, 20001)
    exact = silu_reference(grid)
    return {m: float(np.max(np.abs(silu_series(grid, m, period) - exact))) for m in counts}


@lru_cache(maxsize=4)
def silu_harmonics(period: float = SILU_PERIOD, domain: float = SILU_DOMAIN) -> tuple[int, ...]:
    """The odd harmonics 1, 3, ..., 2m - 1 for the smallest m with series error <= SILU_SERIES_TARGET."""
    grid = np.linspace(-domain, domain, 20001)
    exact = silu_reference(grid)
    for m in range(1, MAX_HARMONICS + 1):
        if np.max(np.abs(silu_series(grid, m, period) - exact)) <= SILU_SERIES_TARGET:
            return tuple(range(1, 2 * m, 2))
    raise ValueError(f"no series of <= {MAX_HARMONICS} terms reaches {SILU_SERIES_TARGET} at |x| <= {domain}")


def silu(x: SharedTensor) -> SharedTensor:
    """SiLU(x) for |x| <= SILU_DOMAIN: error <= SILU_SERIES_TARGET + silu_fixed_point_bound (docstring)."""
    with x.ctx.op("silu"):
        harmonics = silu_harmonics()
        a = _coefficients(SILU_PERIOD)
        return cosine_series(x, SILU_PERIOD, harmonics, a[list(harmonics)], float(a[0]), extra=[(x, 0.5)])
