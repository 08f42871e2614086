"""What the backward pass needs beyond :class:`~mpc_core.nn.backend.Backend`, for both backends.

The forward's Backend has no row mean of full precision, no rsqrt with a caller's domain, no GELU
derivative, no comparison bit to keep (the hinge loss's relu) and no product with a small public constant
at more than f bits; the backward and Adam need all five.  They live here, in a separate adapter (one
class per backend, chosen once by :func:`grad_ops`), so the forward's files stay as they are.
Nothing here decides anything from a secret value.

GELU derivative (same Fourier machinery as :mod:`mpc_core.functions.gelu`): GELU(x) = x/2 + g_P(x) with
g_P = a_0 + sum_{k odd} a_k cos(2 pi k x / P), so

    GELU'(x) = 1/2 - sum_{k odd} a_k (2 pi k / P) sin(2 pi k x / P),

the sine series of the derivative of the same periodic extension, evaluated with one trig round (the
period-64 wave's 18 odd harmonics, ``functions.gelu.GELU``; the forward GELU now uses a shorter series with
exact tails, ``functions.tailed_series``).  Domain |x| <= GELU_WAVE_DOMAIN = 28.  Error: the float64
model with coefficients on the 2^-16 grid is within 6.3e-4 of Phi(x) + x phi(x) on [-28, 28] (the series'
truncation: 22 harmonics would give 5e-5 on |x| <= 24 and 5.2e-4 at the domain's edge, for 22/18 of the
cost); the protocol adds at most 2.42 ulp sum|b_k| + 1 ulp
= 6.9e-5 (sum|b_k| = 1.48): GELU_DERIVATIVE_BOUND = 7e-4 (tests/test_backward_functions.py).
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from mpc_core.nn.backend import Backend, PlainBackend, SecureBackend, Value

if TYPE_CHECKING:
    from mpc_core.tensor import SharedTensor

#: Max |secure GELU' - exact GELU'| on |x| <= 28 (module docstring).
GELU_DERIVATIVE_BOUND = 7e-4
#: Bits of a public constant's integer numerator in :meth:`GradOps.scale` (relative error 2^-21).
SCALE_BITS = 20


@lru_cache(maxsize=2)
def gelu_derivative_coefficients() -> tuple[tuple[int, ...], np.ndarray]:
    """(odd harmonics, sine coefficients b_k = -a_k 2 pi k / P on the 2^-16 grid) of GELU' - 1/2."""
    from mpc_core.functions._common import on_grid
    from mpc_core.functions.gelu import GELU, GELU_PERIOD, gelu_harmonics
    from mpc_core.ring import FixedPoint

    harmonics = gelu_harmonics()
    ks = np.asarray(harmonics, dtype=np.float64)
    a = GELU.coefficients[list(harmonics)]
    return harmonics, on_grid(-a * 2.0 * math.pi * ks / GELU_PERIOD, FixedPoint().frac_bits)


def gelu_derivative_series(x: np.ndarray) -> np.ndarray:
    """float64 model of the secure GELU': 1/2 + sum_k b_k sin(2 pi k x / P) with grid coefficients."""
    from mpc_core.functions.gelu import GELU_PERIOD

    harmonics, b = gelu_derivative_coefficients()
    ks = np.asarray(harmonics, dtype=np.float64).reshape((-1,) + (1,) * np.ndim(x))
    terms = b.reshape(ks.shape) * np.sin(2.0 * math.pi * ks * np.asarray(x, dtype=np.float64) / GELU_PERIOD)
    return 0.5 + terms.sum(axis=0)


def gelu_derivative_exact(x: np.ndarray) -> np.ndarray:
    """Phi(x) + x phi(x) in float64."""
    from mpc_core.nn.backend import _erf

    x = np.asarray(x, dtype=np.float64)
    return 0.5 * (1.0 + _erf(x / math.sqrt(2.0))) + x * np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


class GradOps(ABC):
    """Extra primitives of the backward pass on one backend ``B``."""

    def __init__(self, backend: Backend) -> None:
        self.B = backend

    def op(self, name: str) -> contextlib.AbstractContextManager:
        """Attribute the secure traffic inside the block to ``name`` (nothing to count in plaintext)."""
        ctx = getattr(self.B, "ctx", None)
        return contextlib.nullcontext() if ctx is None else ctx.op(name)

    @abstractmethod
    def row_mean(self, x: Value) -> Value:
        """Mean over the last axis, kept (size 1), to below one ulp (no encoded 1/H on shares)."""

    @abstractmethod
    def rsqrt(self, x: Value, lo: float, hi: float) -> Value:
        """1/sqrt(x) for x in [lo, hi] (relative error 1.6e-5 + 1 ulp on shares, functions.inverse)."""

    @abstractmethod
    def gelu_derivative(self, x: Value) -> Value:
        """GELU'(x) = Phi(x) + x phi(x) (module docstring: within 7e-4 on shares for |x| <= 28)."""

    @abstractmethod
    def indicator(self, x: Value) -> Value:
        """[x >= 0] as ring integers 0/1 (scale 0 on shares; exact: one msb, the relu's own comparison)."""

    @abstractmethod
    def as_fixed(self, bits: Value) -> Value:
        """Ring integers (an :meth:`indicator`, a count of them) as fixed-point values, exactly."""

    @abstractmethod
    def scale(self, x: Value, c: float) -> Value:
        """x * c for a public float c, with c's relative encoding error 2^-21 instead of 2^-17 / |c|."""

    @abstractmethod
    def combine(self, terms: list[tuple[Value, float]]) -> Value:
        """sum_i c_i x_i for public floats c_i, one truncation on shares (each c_i to 2^-21 relative)."""

    @abstractmethod
    def transposed_weight(self, name: str) -> Value:
        """W^T of the layer weight ``name``; on shares marked fixed under the weight's own key + "^T", so a
        weight renamed after an update (SFT) never reuses a stale mask."""

    @abstractmethod
    def with_weights(self, weights: dict[str, Value]) -> GradOps:
        """The same primitives on a backend of the same kind holding ``weights`` (after an update)."""

    @abstractmethod
    def mark_updated(self, name: str, value: Value, step: int) -> Value:
        """An updated weight, marked (on shares) as a fixed operand under a key of its own step, so that no
        product reuses the mask opened for the weight's previous value."""

    @abstractmethod
    def fused_weight(self, names: list[str]) -> Value:
        """[W_1 | W_2 | ...] of several layers that read the same input, keyed by the weights' own keys.

        (The forward's ``linear_many`` keys its fused weight by layer names, which is right for frozen
        weights only; the training path needs keys that change when the weights do.)"""


class PlainGradOps(GradOps):
    def row_mean(self, x):
        return x.mean(axis=-1, keepdims=True)

    def rsqrt(self, x, lo, hi):
        return 1.0 / np.sqrt(x)

    def gelu_derivative(self, x):
        return gelu_derivative_exact(x)

    def indicator(self, x):
        return (np.asarray(x) >= 0).astype(np.float64)

    def as_fixed(self, bits):
        return bits

    def scale(self, x, c):
        return x * c

    def combine(self, terms):
        total = terms[0][0] * terms[0][1]
        for x, c in terms[1:]:
            total = total + x * c
        return total

    def transposed_weight(self, name):
        return self.B.param(name).T

    def with_weights(self, weights):
        return PlainGradOps(PlainBackend(weights))

    def mark_updated(self, name, value, step):
        return value

    def fused_weight(self, names):
        return np.concatenate([self.B.param(f"{n}.weight") for n in names], axis=1)


class SecureGradOps(GradOps):
    def row_mean(self, x):
        from mpc_core.functions._common import mean_last

        return mean_last(x)

    def rsqrt(self, x, lo, hi):
        from mpc_core.functions import rsqrt

        return rsqrt(x, lo=lo, hi=hi)

    def gelu_derivative(self, x: SharedTensor) -> SharedTensor:
        from mpc_core.functions.gelu import GELU_PERIOD

        with x.ctx.op("gelu_grad"):
            harmonics, b = gelu_derivative_coefficients()
            zeros = [0.0] * len(harmonics)
            return x.fourier(GELU_PERIOD, list(harmonics), zeros, [float(v) for v in b]) + 0.5

    def indicator(self, x: SharedTensor) -> SharedTensor:
        return 1 - x.msb()

    def as_fixed(self, bits: SharedTensor) -> SharedTensor:
        return bits.with_scale(bits.ctx.fp.frac_bits)

    def scale(self, x: SharedTensor, c: float) -> SharedTensor:
        if c == 0:
            return x * 0
        exponent = SCALE_BITS - math.ceil(math.log2(abs(c)))
        if exponent <= 0:  # |c| >= 2^20: the plain fixed-point product is exact enough
            return x * float(c)
        return (x * round(c * 2.0**exponent)).truncate(exponent)

    def combine(self, terms):
        largest = max(abs(c) for _, c in terms)
        if largest == 0:
            return terms[0][0] * 0
        exponent = max(0, SCALE_BITS - math.ceil(math.log2(largest)))
        total = None
        for x, c in terms:
            part = x * round(c * 2.0**exponent)
            total = part if total is None else total + part
        return total.truncate(exponent) if exponent else total

    def transposed_weight(self, name):
        w = self.B.param(name)
        return w.T.fixed(f"{w.fixed_key}^T") if w.fixed_key else w.T

    def with_weights(self, weights):
        return SecureGradOps(SecureBackend(self.B.ctx, weights))

    def mark_updated(self, name, value, step):
        from mpc_core.nn.weights import is_matrix_weight

        return value.fixed(f"{name}@{step}") if is_matrix_weight(name, value.shape) else value

    def fused_weight(self, names):
        from mpc_core.tensor import SharedTensor

        ws = [self.B.param(f"{n}.weight") for n in names]
        joined = SharedTensor.concatenate(ws, axis=1)
        keys = [w.fixed_key for w in ws]
        return joined.fixed("+".join(keys)) if all(keys) else joined


def grad_ops(backend: Backend) -> GradOps:
    """The adapter for ``backend`` (chosen once per backend, never per call)."""
    if isinstance(backend, SecureBackend):
        return SecureGradOps(backend)
    if isinstance(backend, PlainBackend):
        return PlainGradOps(backend)
    raise TypeError(f"no backward-pass primitives for backend {type(backend).__name__}")
