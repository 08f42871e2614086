"""Activations that are x/2 + g(x) near 0 and relu(x) beyond a threshold: a short cosine series plus tails.

GELU(x) = x/2 + g(x) with g even, smooth, and |x|/2 - g(x) = |x| Phi(-|x|) below 1.6e-5 for |x| >= 4.5: the
function is relu(x) to that accuracy outside [-4.5, 4.5].  A single cosine series over the whole domain
(:mod:`~mpc_core.functions.triangle_series`) has to carry the tails as a triangle wave, so its period is
twice the domain (64 for |x| <= 28) and, because g's corner at 0 needs the same frequencies whatever the
period, the number of harmonics grows with the period (18 for P = 64).  Here the series covers only
[-T2, T2] (T2 = threshold + resolution) and two cheap comparisons take the tails:

    hi = [x >= T],  lo = [x <= -T]            (one windowed msb of [x - T, -x - T]; fuzzy within r),
    tail = x hi,  inner = x - x (hi + lo)     (one product of x by the two bits, exact: a bit is a ring
                                               integer, no truncation),
    f(x) = tail + S(inner) - (hi + lo) S(0)   (S from one trig call; S(0) public, subtracted exactly).

With |x| < T2 the bits are 0 (or, for T <= |x| < T2, either value: both branches are valid there) and the
result is S(x); beyond, inner = 0 and the result is x (hi) or 0 (lo) plus S's protocol error at 0.  So the
series may be anything outside [-T2, T2]: its coefficients are a minimax fit of g on [0, T2] by
c_0 + sum_{k=1..K} c_k cos(2 pi k x / P) (all harmonics, not only odd ones: no half-wave symmetry is
needed), found by Lawson's iteratively reweighted least squares and rounded to the 2^-16 grid, and P need
only exceed 2 T2.  The comparisons need only the carry bits from the resolution r up to the domain's bound
(msb's window), so the domain is set by that bound, not by the period: far wider than the series' reach,
and exact in the tails.

Error (float64 model, grid coefficients): at most max(max_{|x| <= T2} |S(x) - f(x)|, tail_error(T)) on the
domain, measured on a fine grid (:meth:`TailedSeriesActivation.model_error`), plus the protocol's
fixed-point part 2.42 ulp sum_k |c_k| + 1 ulp (fourier.py; the tail and the bits are exact).  Each user
module states its numbers and tests them.

Cost per element, 2pc: one msb of 2 values over the window, one product of x by 2 bits (x - a opened
once, the 2 bits' masks), one trig of K harmonics (2K dealt table values), its truncation.  Rounds: the
msb's, one product, the trig's two.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from mpc_core.ring import FixedPoint
from mpc_core.tensor import SharedTensor

#: Points of the grid on [0, T2] on which a fit's error is measured (spacing 1e-5 for T2 = 5).
MODEL_GRID_POINTS = 500001


def minimax_cosine_fit(
    func: Callable[[np.ndarray], np.ndarray],
    period: float,
    count: int,
    half_width: float,
    iterations: int = 400,
) -> np.ndarray:
    """c_0..c_K minimising max_{0 <= x <= half_width} |c_0 + sum_k c_k cos(2 pi k x / P) - func(x)|.

    Lawson's algorithm: weighted least squares on 6001 points, each weight multiplied by its point's
    error and renormalised, so the weights concentrate on the extremal points and the fit tends to the
    minimax one.  Used to derive the coefficients a module records (the record, not this fit, is what
    the parties use: every participant must hold the same public numbers).
    """
    x = np.linspace(0.0, half_width, 6001)
    basis = np.cos(2 * np.pi * np.outer(x, np.arange(count + 1)) / period)
    y = func(x)
    weights = np.full(x.size, 1.0 / x.size)
    coeffs = np.zeros(count + 1)
    for _ in range(iterations):
        root = np.sqrt(weights)
        coeffs, *_ = np.linalg.lstsq(basis * root[:, None], y * root, rcond=None)
        weights = weights * np.abs(basis @ coeffs - y)
        weights /= weights.sum()
    return coeffs


@dataclass(frozen=True, eq=False)
class TailedSeriesActivation:
    """f(x) = x/2 + g(x) for |x| < T2, relu(x) beyond, on |x| <= domain (module docstring).

    ``coefficients`` are the recorded integers round(c_k 2^16), k = 0..K (c_0 the constant); ``even_part``
    is g = f - x/2 in float64; ``tail_error(t)`` bounds |f(x) - relu(x)| for |x| >= t; ``threshold`` T and
    ``resolution`` r place the comparisons (x in [T, T + r) may go either way); ``period`` P > 2 (T + r) is
    a power of two in ring units.
    """

    name: str
    even_part: Callable[[np.ndarray], np.ndarray]
    reference: Callable[[np.ndarray], np.ndarray]
    tail_error: Callable[[float], float]
    coefficients: tuple[int, ...]
    period: float
    threshold: float
    resolution: float
    domain: float

    @property
    def reach(self) -> float:
        """T2 = T + r: the series must be right on |x| < T2 (where the bits may still be 0)."""
        return self.threshold + self.resolution

    @cached_property
    def grid_coefficients(self) -> np.ndarray:
        """c_0..c_K on the 2^-16 grid, as floats (exactly what the parties encode)."""
        frac = FixedPoint().frac_bits
        return np.asarray(self.coefficients, dtype=np.float64) / float(1 << frac)

    @property
    def harmonics(self) -> tuple[int, ...]:
        return tuple(range(1, len(self.coefficients)))

    def series(self, x: np.ndarray) -> np.ndarray:
        """float64 model of the secure series S(x) = x/2 + c_0 + sum_k c_k cos(2 pi k x / P)."""
        x = np.asarray(x, dtype=np.float64)
        c = self.grid_coefficients
        ks = np.asarray(self.harmonics, dtype=np.float64).reshape((-1,) + (1,) * x.ndim)
        terms = c[1:].reshape(ks.shape) * np.cos(2 * np.pi * ks * x / self.period)
        return 0.5 * x + c[0] + terms.sum(axis=0)

    def model(self, x: np.ndarray, tails: bool) -> np.ndarray:
        """The float64 model of the secure result when the fuzzy band [T, T + r) reads as tail (or not)."""
        x = np.asarray(x, dtype=np.float64)
        cut = self.threshold if tails else self.reach
        return np.where(x >= cut, x, np.where(x <= -cut, 0.0, self.series(np.clip(x, -cut, cut))))

    def series_error(self) -> float:
        """max |S(x) - f(x)| on [0, T2] (S - f = c_0 + sum c_k cos - g is even), on MODEL_GRID_POINTS."""
        grid = np.linspace(0.0, self.reach, MODEL_GRID_POINTS)
        return float(np.max(np.abs(self.series(grid) - self.reference(grid))))

    def model_error(self) -> float:
        """The model's worst error on the domain: the series on |x| < T2 or the tails beyond T."""
        return max(self.series_error(), float(self.tail_error(self.threshold)))

    def fixed_point_bound(self) -> float:
        """Worst-case error the protocol adds to the model: 2.42 ulp sum_k |c_k| + 1 ulp (fourier.py)."""
        ulp = 2.0 ** -FixedPoint().frac_bits
        return (1 + math.sqrt(2)) * ulp * float(np.sum(np.abs(self.grid_coefficients[1:]))) + ulp

    def secure(self, x: SharedTensor) -> SharedTensor:
        """f(x) on shares: one msb of [x - T, -x - T], one product by the bits, one trig (docstring)."""
        with x.ctx.op(self.name):
            t = self.threshold
            edges = SharedTensor.stack([x - t, -x - t])
            bits = 1 - edges.msb(bound=self.domain + t, resolution=self.resolution)
            hi, outside = bits[0], bits[0] + bits[1]
            products = x.expand_dims(0) * SharedTensor.stack([hi, outside])
            tail, inner = products[0], x - products[1]
            c = self.grid_coefficients
            series = inner.fourier(
                self.period,
                list(self.harmonics),
                [float(v) for v in c[1:]],
                linear=[(inner, 0.5), (tail, 1.0)],
            )
            return series + float(c[0]) - outside * float(c.sum())
