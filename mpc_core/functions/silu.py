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
at most SILU_SERIES_TARGET (:func:`silu_harmonics`, ``SILU.error_table``).

Domain: |x| <= SILU_DOMAIN = 53 with P = 128 (a power of two in ring units, as trig requires).  Measured
gate pre-activations of SmolLM2-135M (all 30 layers, 32 SST-2 dev sentences): [-33.7, 52.8], so the
margin above is thin (docs/fidelity.md).  With P = 64 the domain would be |x| <= 20 with 15 harmonics.
Beyond |x| = 53 the series follows the periodic extension, not SiLU: wrong by 2.6e-3 at |x| = 56, by 6 at
|x| = 70 and by 32 at |x| = 96.

Error: the float64 model (coefficients on the 2^-16 grid) is within SILU_SERIES_TARGET = 2.5e-4 of SiLU on
the domain and within SILU_CORE_TARGET = 5e-5 on |x| <= 8 with 36 odd harmonics (:func:`silu_harmonics`
picks the count: 2.2e-4 and 4.6e-5; 30 harmonics, which meet the first target alone, leave 2.0e-4 on
|x| <= 8).  The core target is there because SmolLM2's 30 layers compound a systematic error: with the
series in place of SiLU in the float64 forward, 8 SST-2 dev texts' verbalizer logits moved by up to
6.6e-3 with 30 harmonics and 1.8e-3 with 36 (docs/fidelity.md).  The protocol adds at most
2.42 ulp sum|a_k| + 1 ulp = 6.0e-4 (:func:`silu_fixed_point_bound`, from fourier.py): max abs error
<= 8.5e-4.  Both parts are tested pointwise in both suites (tests/test_nn_llama_secure.py).

Cost: one trig round and the series' truncation, as GELU; the dealer's tables grow with the 36 harmonics
(2 values each per element, offline), 2x GELU's 18.
"""

from __future__ import annotations

import numpy as np

from mpc_core.functions.triangle_series import TriangleWaveActivation
from mpc_core.tensor import SharedTensor

SILU_PERIOD = 128.0
SILU_DOMAIN = 53.0
SILU_SERIES_TARGET = 2.5e-4
#: Where most gate pre-activations lie, and the error allowed there (36 harmonics instead of 30).
SILU_CORE_DOMAIN = 8.0
SILU_CORE_TARGET = 5e-5
MAX_HARMONICS = 48


def silu_reference(x: np.ndarray) -> np.ndarray:
    """Exact SiLU in float64: x sigmoid(x) = x/2 (1 + tanh(x/2)) (no overflow for large |x|)."""
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * x * (1.0 + np.tanh(0.5 * x))


def _half_x_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * np.tanh(0.5 * x)


SILU = TriangleWaveActivation(
    name="silu",
    bump=_half_x_tanh,
    reference=silu_reference,
    period=SILU_PERIOD,
    domain=SILU_DOMAIN,
    target=SILU_SERIES_TARGET,
    max_harmonics=MAX_HARMONICS,
    core_domain=SILU_CORE_DOMAIN,
    core_target=SILU_CORE_TARGET,
)
#: The float64 model of the secure evaluation, its fixed-point bound and the harmonics used, by name.
silu_series = SILU.series
silu_fixed_point_bound = SILU.fixed_point_bound
silu_harmonics = SILU.harmonics


def silu(x: SharedTensor) -> SharedTensor:
    """SiLU(x) for |x| <= SILU_DOMAIN: error <= SILU_SERIES_TARGET + silu_fixed_point_bound (docstring)."""
    return SILU.secure(x)
