"""Building blocks shared by the nonlinear functions: batching, exact linear combinations, octave buckets.

Everything here is written over :class:`~mpc_core.tensor.SharedTensor` only and keeps two costs low:

* *rounds*: independent products are stacked into one ``*`` (one opening / one reshare), and
  :func:`powers` computes v, v^2, ..., v^d in ceil(log2 d) rounds;
* *bytes and truncations*: :func:`linear_combination` multiplies by public coefficients encoded as ring
  integers (exact), sums, and truncates once (with exact truncation, the default, every truncation is a
  round in both suites; with probabilistic truncation it is a round in 3pc and free in 2pc);
* *precision*: :func:`mul_at`, :func:`square_at` and :func:`rescale` run chains of products with more
  fractional bits than f when exact truncation makes the larger raw values safe (:func:`working_bits`).

:func:`octave_bits` is the comparison step of reciprocal, rsqrt and log: the bits [x >= lo 2^j] for every
octave boundary of a documented domain, all in one msb call (one batch of rounds, whatever the number of
octaves); :func:`piecewise_constant` turns them into a public per-octave value locally.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mpc_core.tensor import SharedTensor


def lead(values: Sequence[float] | np.ndarray, ndim: int) -> np.ndarray:
    """Per-slice constants shaped (K, 1, ..., 1) to broadcast over a stacked (K, ...) tensor."""
    arr = np.asarray(values, dtype=np.float64)
    return arr.reshape((arr.shape[0],) + (1,) * ndim)


def on_grid(values: np.ndarray | float, frac_bits: int) -> np.ndarray:
    """Values rounded to the fixed-point grid (exactly representable, so encoding them is exact)."""
    scale = float(1 << frac_bits)
    return np.rint(np.asarray(values, dtype=np.float64) * scale) / scale


def reinterpret(x: SharedTensor, scale: int) -> SharedTensor:
    """The same ring value read with another number of fractional bits (x 2^(old - new)), no protocol."""
    return SharedTensor(x.ctx, x.data, scale)


def split(stacked: SharedTensor) -> list[SharedTensor]:
    """The slices of a tensor stacked along axis 0."""
    return [stacked[i] for i in range(stacked.shape[0])]


def multiply_pairs(left: Sequence[SharedTensor], right: Sequence[SharedTensor]) -> list[SharedTensor]:
    """[a_i * b_i] for same-shaped, same-scale pairs in one secure product (one round in 2pc)."""
    if len(left) == 1:
        return [left[0] * right[0]]
    return split(SharedTensor.stack(list(left)) * SharedTensor.stack(list(right)))


def linear_combination(
    stacked: SharedTensor, coeffs: Sequence[float] | np.ndarray, constant: float = 0.0
) -> SharedTensor:
    """constant + sum_k c_k T_k for a fixed-point tensor stacked along axis 0 and public c_k, constant.

    The coefficients are encoded as ring integers round(c_k 2^f) and multiplied exactly; the constant is
    added at 2f fractional bits; the sum is truncated once.  So the result is exactly the truncation of
    the combination with the *grid* coefficients (float64 models use :func:`on_grid`), with one ulp of
    truncation error and (probabilistic mode) a truncation failure probability set
    by the size of the result (not of the partial sums): one truncation instead of K.
    """
    f = stacked.ctx.fp.frac_bits
    ints = np.rint(np.asarray(coeffs, dtype=np.float64) * (1 << f)).astype(np.int64)
    scaled = stacked * ints.reshape((ints.shape[0],) + (1,) * (stacked.ndim - 1))
    # a Python int i added to a scale-f tensor means i 2^f in the ring: the constant at 2f bits
    total = scaled.sum(axis=0) + int(np.rint(constant * (1 << f)))
    return total.truncate(f)


def powers(v: SharedTensor, degree: int) -> list[SharedTensor]:
    """[v, v^2, ..., v^degree] in ceil(log2 degree) rounds (each round doubles the known powers).

    Each power carries the truncation error of every product on its path (at most log2(degree) + 1 ulp
    times the magnitude of the factors; |v| <= 1 keeps that at a few ulp).
    """
    known = [v]
    while len(known) < degree:
        top = known[-1]
        count = min(len(known), degree - len(known))
        known += multiply_pairs([top] * count, known[:count])
    return known[:degree]


def octave_edges(lo: float, hi: float, frac_bits: int) -> np.ndarray:
    """Octave boundaries lo 2^j covering [lo, hi], rounded to the fixed-point grid (ring-exact thresholds)."""
    if not 0 < lo < hi:
        raise ValueError(f"an octave domain needs 0 < lo < hi, got [{lo}, {hi}]")
    count = max(1, int(np.ceil(np.log2(hi / lo) - 1e-9)))
    edges = on_grid(lo * 2.0 ** np.arange(count + 1), frac_bits)
    if edges[0] <= 0:
        raise ValueError(f"domain lower end {lo} is below the fixed-point resolution 2^-{frac_bits}")
    return edges


#: An x less than edges[0] 2^-OCTAVE_RESOLUTION_BITS above an octave edge may read as below it.
OCTAVE_RESOLUTION_BITS = 14


def octave_bits(x: SharedTensor, edges: np.ndarray) -> SharedTensor | None:
    """Ring-integer bits b_j = [x >= edges[j]] for the inner edges j = 1..J, stacked on axis 0.

    One batched msb (the suite's comparison rounds once, whatever J) over a window of bits, not all 64:
    the differences x - edges[j] of an x in [0, 2 hi) are below 2 hi in magnitude, and an x within
    edges[0] 2^-14 above an edge may read as below it (its octave's neighbour then serves it, as if x were
    relatively 2^-14 outside that octave: the callers' initial guesses and mantissas tolerate that, and
    their stated errors do not change at their printed precision).  For the default domains that is
    22-28 carry bits instead of 63.  x outside [0, 2 hi) gets garbage bits (it is outside every caller's
    domain already).  None when the domain is a single octave (no comparison needed).
    """
    inner = edges[1:-1]
    if inner.size == 0:
        return None
    shifted = x.expand_dims(0) + lead(-inner, x.ndim)
    resolution = float(edges[0]) * 2.0**-OCTAVE_RESOLUTION_BITS
    return 1 - shifted.msb(bound=2.0 * float(edges[-1]), resolution=resolution)


def piecewise_constant(bits: SharedTensor | None, values: np.ndarray, like: SharedTensor) -> SharedTensor:
    """values[0] + sum_j bits_j (values[j] - values[j-1]): the value of x's octave, computed locally.

    ``values`` (one per octave) are first put on the fixed-point grid so the result equals the encoded
    value of the octave exactly (bits are 0/1 ring integers; the products are exact).
    """
    f = like.ctx.fp.frac_bits
    ints = np.rint(np.asarray(values, dtype=np.float64) * (1 << f)).astype(np.int64)
    return reinterpret(piecewise_integer(bits, ints, like), f)


def piecewise_integer(bits: SharedTensor | None, values: np.ndarray, like: SharedTensor) -> SharedTensor:
    """The ring integer values[j] of each element's bucket j (scale 0), from monotone comparison bits.

    values[0] + sum_j bits_j (values[j] - values[j-1]): local products of 0/1 ring integers by public
    integers, so any scale can be chosen by the caller (:func:`piecewise_constant` uses f; RMSNorm selects
    powers of two and square roots at scales of its own).  ``like`` gives the shape when ``bits`` is None.
    """
    ints = np.asarray(values, dtype=np.int64)
    base = int(ints[0])
    if bits is None:
        return reinterpret(like, 0) * 0 + base
    steps = bits * np.diff(ints).reshape((-1,) + (1,) * like.ndim)
    return steps.sum(axis=0) + base


# --------------------------------------------------------------------------------------------------
# Products at a chosen number of fractional bits (for chains that need more precision than f)
# --------------------------------------------------------------------------------------------------

#: Raw products below 2^RAW_BITS are safe to truncate in exact mode (EXACT_TRUNC_BITS = 62, one bit spare).
RAW_BITS = 61


def exact_truncation(ctx) -> bool:
    """Whether the context truncates exactly (no wrap failure below 2^62) rather than probabilistically.

    Probabilistic truncation fails with probability |raw| / 2^64, so extra fractional bits are only safe
    in exact mode; functions fall back to f bits otherwise (same protocol, less precision, never a
    plaintext shortcut).
    """
    return getattr(ctx.fp, "truncation", "probabilistic") == "exact"


def working_bits(ctx, magnitude_bits: int) -> int:
    """Fractional bits for products of values below 2^magnitude_bits: as many as exact truncation allows
    (2 s + magnitude_bits <= RAW_BITS, at most 28), else the context's f."""
    f = ctx.fp.frac_bits
    if not exact_truncation(ctx):
        return f
    return max(f, min(28, (RAW_BITS - magnitude_bits) // 2))


def rescale(x: SharedTensor, scale_in: int, scale_out: int) -> SharedTensor:
    """A tensor whose ring value carries ``scale_in`` fractional bits, re-expressed with ``scale_out``.

    Going up multiplies by the public integer 2^(out - in) (exact, local); going down truncates (one
    truncation, error below one unit of the new scale).
    """
    ring = reinterpret(x, 0)
    if scale_out >= scale_in:
        return reinterpret(ring * (1 << (scale_out - scale_in)), scale_out)
    return reinterpret(ring.truncate(scale_in - scale_out), scale_out)


def mul_at(a: SharedTensor, scale_a: int, b: SharedTensor, scale_b: int, scale_out: int) -> SharedTensor:
    """a * b for ring values carrying scale_a and scale_b fractional bits, truncated to scale_out bits.

    The raw product (|a b| 2^(scale_a + scale_b)) must stay below 2^62 in exact mode.
    """
    raw = reinterpret(a, 0) * reinterpret(b, 0)
    return rescale(raw, scale_a + scale_b, scale_out)


def square_at(a: SharedTensor, scale_a: int, scale_out: int) -> SharedTensor:
    """a^2 (ring value at scale_a) truncated to scale_out bits; the raw square must stay below 2^62."""
    return rescale(reinterpret(a, 0).square(), 2 * scale_a, scale_out)


def mean_last(x: SharedTensor) -> SharedTensor:
    """Mean over the last axis (kept, size 1) without SharedTensor.mean's encoding error.

    ``x.mean`` multiplies by the encoded 1/H, whose relative error is up to 2^-17 H (3e-3 for H = 384):
    for a LayerNorm row with a large mean and a small variance that error is amplified by rsqrt(var).
    Here H = 2^a m with m odd and the sum is multiplied by the integer c = round(2^e / m) (exact), then
    divided by 2^(a + e):

    * exact truncation: one truncation by a + e with e = min(24, 29 - a), so the relative error of 1/m is
      below m 2^-(e+1) (1e-7 for H = 384) and raw values |mean| 2^(16 + a + e) stay below 2^61 for
      |mean| < 2^16;
    * probabilistic truncation: the sum is first divided by 2^a, then multiplied by round(2^f / m) and
      truncated by f, so every raw value is |mean| 2^32 (the usual failure probability).

    Error: below one ulp plus |mean| m 2^-(e+1).
    """
    f = x.ctx.fp.frac_bits
    h = x.shape[-1]
    shift = (h & -h).bit_length() - 1
    odd = h >> shift
    total = x.sum(axis=-1, keepdims=True)
    if exact_truncation(x.ctx):
        extra = min(24, 29 - shift) if odd > 1 else 0
        scaled = total * round((1 << extra) / odd) if odd > 1 else total
        bits = shift + extra
        return reinterpret(reinterpret(scaled, 0).truncate(bits), f) if bits else total
    if shift:
        total = total.truncate(shift)
    if odd == 1:
        return total
    scaled = total * round((1 << f) / odd)
    return reinterpret(reinterpret(scaled, 0).truncate(f), f)
