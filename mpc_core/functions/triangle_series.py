"""Activations of the form x/2 + g(x), g even and tending to |x|/2, as one cosine series (GELU, SiLU).

GELU(x) = x/2 + (x/2) erf(x / sqrt 2) and SiLU(x) = x/2 + (x/2) tanh(x/2) share one shape: x/2 plus an
even, smooth g that equals |x|/2 up to a tail that vanishes quickly.  The periodic extension of period P,

    g_P(x) = g(x)               for |x| <= P/4,
    g_P(x) = P/4 - g(P/2 - |x|) for P/4 <= |x| <= P/2,

is a smoothed triangle wave: smooth where the pieces meet (both equal P/8 with slope 1/2 once g's tail is
below double precision at P/4), even and half-wave antisymmetric, so its cosine series has only odd
harmonics plus the constant P/8.  So the activation is x/2 + P/8 + sum_{k odd} a_k cos(2 pi k x / P): a
linear combination of the cosines of one trig call (:func:`~mpc_core.functions.fourier.cosine_series`),
no product at all.  Each activation module states its own g, period, domain and error; this module holds
the one construction they share: coefficients by FFT at first use, the float64 model of the secure
evaluation (coefficients on the 2^-16 grid), the fixed-point bound from fourier.py, and the choice of the
smallest number of odd harmonics whose series error on the domain is at most the target.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from mpc_core.functions._common import on_grid
from mpc_core.functions.fourier import cosine_series, evaluate_series, fourier_coefficients
from mpc_core.ring import FixedPoint
from mpc_core.tensor import SharedTensor

#: Points of the grid on which a series' error over its domain is measured.
ERROR_GRID_POINTS = 20001


@dataclass(frozen=True, eq=False)
class TriangleWaveActivation:
    """f(x) = x/2 + g(x) on |x| <= domain, from the cosine series of g's period-``period`` extension.

    ``bump`` is g (even, -> |x|/2), ``reference`` the exact f in float64; ``period`` must be a power of
    two in ring units (trig's requirement); the series keeps the fewest odd harmonics (at most
    ``max_harmonics``) whose float64 model is within ``target`` of ``reference`` on the domain and, when
    ``core_domain`` is set, within ``core_target`` on |x| <= core_domain: where most inputs lie, a
    systematic error compounds through a deep model although the domain's worst point is rarely met.
    """

    name: str
    bump: Callable[[np.ndarray], np.ndarray]
    reference: Callable[[np.ndarray], np.ndarray]
    period: float
    domain: float
    target: float
    max_harmonics: int
    core_domain: float = 0.0
    core_target: float = math.inf

    def periodic_bump(self, x: np.ndarray) -> np.ndarray:
        """g_P(x): the smoothed triangle wave equal to g near 0."""
        period = self.period
        wrapped = np.abs(np.mod(np.asarray(x, dtype=np.float64) + period / 2, period) - period / 2)
        quarter = period / 4
        return np.where(wrapped <= quarter, self.bump(wrapped), quarter - self.bump(period / 2 - wrapped))

    @cached_property
    def coefficients(self) -> np.ndarray:
        """Cosine coefficients a_0, a_1, ... of g_P in float64 (a_0 = P/8; even harmonics vanish)."""
        a, _b = fourier_coefficients(self.periodic_bump, self.period)
        return a

    def series(self, x: np.ndarray, count: int) -> np.ndarray:
        """float64 model of the secure evaluation with ``count`` odd harmonics, coefficients on the grid."""
        a = on_grid(self.coefficients, FixedPoint().frac_bits)
        ks = np.arange(1, 2 * count, 2)
        return 0.5 * np.asarray(x, dtype=np.float64) + evaluate_series(x, self.period, ks, a[ks], a[0])

    def fixed_point_bound(self, count: int) -> float:
        """Worst-case error the protocol adds to the float64 model: 2.42 ulp sum|a_k| + 1 ulp (fourier.py)."""
        ulp = 2.0 ** -FixedPoint().frac_bits
        return (1 + math.sqrt(2)) * ulp * float(np.sum(np.abs(self.coefficients[1 : 2 * count : 2]))) + ulp

    def series_error(self, count: int, domain: float | None = None) -> float:
        """Max |series - f| in float64 on [-domain, domain] (default: the whole domain), ``count`` terms."""
        half = self.domain if domain is None else domain
        grid = np.linspace(-half, half, ERROR_GRID_POINTS)
        return float(np.max(np.abs(self.series(grid, count) - self.reference(grid))))

    def error_table(self, counts: range) -> dict[int, float]:
        """:meth:`series_error` for each number of odd harmonics in ``counts``."""
        return {m: self.series_error(m) for m in counts}

    def harmonics(self) -> tuple[int, ...]:
        """The odd harmonics 1, 3, ..., 2m - 1 for the smallest m meeting ``target`` (and ``core_target``)."""
        return self._harmonics

    @cached_property
    def _harmonics(self) -> tuple[int, ...]:
        for m in range(1, self.max_harmonics + 1):
            core_ok = self.core_domain <= 0 or self.series_error(m, self.core_domain) <= self.core_target
            if core_ok and self.series_error(m) <= self.target:
                return tuple(range(1, 2 * m, 2))
        raise ValueError(
            f"no {self.name} series of <= {self.max_harmonics} terms reaches {self.target} "
            f"at |x| <= {self.domain} (and {self.core_target} at |x| <= {self.core_domain})"
        )

    def secure(self, x: SharedTensor) -> SharedTensor:
        """f(x) on shares: one trig round, the cosines and x/2 summed before one truncation."""
        with x.ctx.op(self.name):
            harmonics = self.harmonics()
            a = self.coefficients
            return cosine_series(x, self.period, harmonics, a[list(harmonics)], float(a[0]), extra=[(x, 0.5)])
