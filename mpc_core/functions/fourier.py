"""Fourier series on shares: coefficients computed numerically in float64, evaluation in one trig round.

A smooth function f of period P is c_0 + sum_k c_k cos(2 pi k x / P) + s_k sin(2 pi k x / P).  The
coefficients come from an FFT of f sampled on a uniform grid (exact for a trigonometric polynomial and,
for a smooth f, accurate to the aliasing error, far below 2^-16 with 2^16 samples).  On shares, one call of
opened mask serves every harmonic (the opened (x + t) mod P is uniform because P is a power of two in ring
units); the public weights are folded into the public factors cos kd, sin kd before the one truncation
(:meth:`~mpc_core.tensor.SharedTensor.fourier`).

Error of the evaluation: the error of the series with coefficients rounded to the fixed-point grid
(measured in float64 by the caller, :func:`evaluate_series` with ``on_grid`` coefficients) plus, per
harmonic, the trig protocol's error (at most 1 + sqrt 2 ulp: cos kd and the dealt cos kt, sin kt are
rounded to the grid, half an ulp each, and the sum of products is truncated once) times |c_k|, plus one
ulp for the final truncation: at most 2.42 ulp * sum_k |c_k| + 1 ulp.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from mpc_core.tensor import SharedTensor

SAMPLES = 1 << 16


def fourier_coefficients(
    func: Callable[[np.ndarray], np.ndarray], period: float, samples: int = SAMPLES
) -> tuple[np.ndarray, np.ndarray]:
    """(cos coefficients a_0..a_{S/2-1}, sin coefficients b_0..b_{S/2-1}) of a P-periodic function.

    f(x) ~ a_0 + sum_{k>=1} a_k cos(2 pi k x / P) + b_k sin(2 pi k x / P), from S samples on [0, P).
    """
    xs = np.arange(samples, dtype=np.float64) * (period / samples)
    spectrum = np.fft.rfft(func(xs)) / samples
    a = 2.0 * spectrum.real
    b = -2.0 * spectrum.imag
    a[0] = spectrum[0].real
    b[0] = 0.0
    return a[: samples // 2], b[: samples // 2]


def evaluate_series(
    x: np.ndarray, period: float, harmonics: Sequence[int], cos_coeffs: np.ndarray, constant: float
) -> np.ndarray:
    """float64 reference: constant + sum_k cos_coeffs[i] cos(2 pi harmonics[i] x / P)."""
    ks = np.asarray(harmonics, dtype=np.float64).reshape((-1,) + (1,) * np.ndim(x))
    terms = np.asarray(cos_coeffs, dtype=np.float64).reshape(ks.shape) * np.cos(2 * np.pi * ks * x / period)
    return constant + terms.sum(axis=0)


def cosine_series(
    x: SharedTensor,
    period: float,
    harmonics: Sequence[int],
    cos_coeffs: Sequence[float],
    constant: float = 0.0,
    extra: Sequence[tuple[SharedTensor, float]] = (),
) -> SharedTensor:
    """constant + sum_i cos_coeffs[i] cos(2 pi harmonics[i] x / period) + sum_j w_j t_j on shares.

    One opened mask; the weighted cosines and the optional ``extra`` weighted terms t_j (same shape as x)
    are summed before one truncation (SharedTensor.fourier), so the suite returns one value per element.
    ``period`` must be a power of two in ring units (see SharedTensor.trig).
    """
    series = x.fourier(period, list(harmonics), list(cos_coeffs), linear=list(extra))
    return series + constant
