"""The ring Z_2^64 on numpy ``uint64``, fixed-point encoding, and exact fast ring matrix products.

This module owns arithmetic on plain ring elements only: it knows nothing about shares or parties.

* Wrap-around of ``uint64`` *is* the reduction mod 2^64; signed values are read through an ``int64`` view.
* A real number x is encoded as round(x * 2^f) in two's complement, f fractional bits (default 16).
  Encoding refuses values whose encoding would wrap (|x| >= 2^(63 - f)) and non-finite values.
* :func:`ring_matmul` computes ``a @ b mod 2^64`` exactly on float64 BLAS: each operand is split into
  three signed 22-bit limbs (a = a0 + 2^22 a1 + 2^44 a2), and only limb pairs with i + j <= 2 are
  needed because 2^(22 (i + j)) vanishes mod 2^64 otherwise.  Every limb product is below 2^42 in
  absolute value, so a partial sum over an inner dimension of at most 2^11 stays below 2^53 and is exact
  in float64; longer inner dimensions are processed in chunks.  The six limb products are grouped into
  three GEMMs; an operand used repeatedly (a weight) can be split once with :class:`SplitOperand`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RING_BITS = 64
RING_DTYPE = np.uint64
DEFAULT_FRAC_BITS = 16
TRUNCATION_MODES = ("exact", "probabilistic")
#: Exact truncation never wraps for raw ring values x with |x| < 2^EXACT_TRUNC_BITS.
EXACT_TRUNC_BITS = 62

LIMB_BITS = 22
_LIMB_HALF = np.uint64(1 << (LIMB_BITS - 1))
_LIMB_MASK = np.uint64((1 << LIMB_BITS) - 1)
#: Largest inner dimension per GEMM chunk whose partial sums stay exact in float64 (see ring_matmul).
MAX_EXACT_INNER = 1024


def ring_zeros(shape: tuple[int, ...] | int) -> np.ndarray:
    return np.zeros(shape, dtype=RING_DTYPE)


def as_ring(values: np.ndarray | int) -> np.ndarray:
    """Python or numpy integers (any sign) as ring elements: x mod 2^64."""
    arr = np.asarray(values)
    if arr.dtype == RING_DTYPE:
        return arr
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64).view(RING_DTYPE) if arr.dtype != np.uint64 else arr
    if arr.dtype == object:
        return np.array([int(v) % (1 << 64) for v in arr.ravel()], dtype=RING_DTYPE).reshape(arr.shape)
    raise TypeError(f"ring elements must be integers, got dtype {arr.dtype}")


def ring_scalar(value: int) -> np.uint64:
    """A Python integer of any sign as a ring scalar (value mod 2^64)."""
    return np.uint64(int(value) % (1 << RING_BITS))


def to_signed(x: np.ndarray) -> np.ndarray:
    """Read ring elements as two's-complement signed integers (a view, no copy)."""
    return np.asarray(x, dtype=RING_DTYPE).view(np.int64)


@dataclass(frozen=True)
class FixedPoint:
    """Fixed-point parameters shared by all parties: ``frac_bits`` fractional bits in Z_2^64.

    ``max_abs`` is the largest magnitude :meth:`encode` accepts; anything larger would wrap around the
    ring (and silently change sign), so it is refused with a clear error instead.

    ``truncation`` chooses how shares are divided by 2^k after a product: ``"exact"`` (the default) never
    fails for raw values below 2^62 and costs one round with two bits per element on the wire;
    ``"probabilistic"`` (SecureML/SPU local, ABY3 Pi_trunc1 in 3pc) costs nothing in 2pc but fails with
    probability |x| / 2^64 per element (an error of 2^(64 - k)): about |v| 2^-32 for a product of value v
    with f = 16, i.e. several corrupted elements per secure forward pass of a real model.
    """

    frac_bits: int = DEFAULT_FRAC_BITS
    truncation: str = "exact"

    def __post_init__(self) -> None:
        if not 0 <= self.frac_bits <= 40:
            raise ValueError(f"frac_bits must be in [0, 40], got {self.frac_bits}")
        if self.truncation not in TRUNCATION_MODES:
            raise ValueError(f"truncation must be one of {TRUNCATION_MODES}, got {self.truncation!r}")

    @property
    def scale(self) -> int:
        return 1 << self.frac_bits

    @property
    def max_abs(self) -> float:
        return float(2 ** (RING_BITS - 1 - self.frac_bits))

    def encode(self, x: np.ndarray | float) -> np.ndarray:
        """round(x * 2^f) mod 2^64; raises ValueError for non-finite or out-of-range values."""
        arr = np.asarray(x, dtype=np.float64)
        if not np.all(np.isfinite(arr)):
            raise ValueError("cannot encode non-finite values (nan or inf) in fixed point")
        if arr.size and np.max(np.abs(arr)) >= self.max_abs:
            raise ValueError(
                f"value out of fixed-point range: |x| must be below 2^{RING_BITS - 1 - self.frac_bits} "
                f"with {self.frac_bits} fractional bits"
            )
        scaled = np.rint(arr * self.scale)
        # |scaled| < 2^63 but float64 rounding can reach exactly 2^63; clip keeps int64 conversion defined.
        scaled = np.clip(scaled, -(2.0**63), np.nextafter(2.0**63, 0))
        return scaled.astype(np.int64).view(RING_DTYPE)

    def decode(self, x: np.ndarray) -> np.ndarray:
        """Signed ring value / 2^f as float64.

        Division of the signed integer (not a floor shift of the fraction) keeps negatives exact:
        -1.99998 decodes as -1.99998, not -2.99998 (a decode bug CrypTen once had).
        """
        return to_signed(x).astype(np.float64) / self.scale


def truncate_public(x: np.ndarray, bits: int) -> np.ndarray:
    """Arithmetic right shift of public ring values (divide by 2^bits, rounding towards -inf)."""
    return (to_signed(x) >> bits).view(RING_DTYPE)


# --------------------------------------------------------------------------------------------------
# Exact ring matrix products on float64 BLAS
# --------------------------------------------------------------------------------------------------


def split_limbs(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split ring elements into signed limbs l0 + 2^22 l1 + 2^44 l2 (mod 2^64), as int64 arrays.

    |l0|, |l1| <= 2^21 and |l2| <= 2^19 + 1 (the top limb carries only the last 20 bits).  In-place
    steps keep this to a few passes over memory: it runs once per fresh operand of every product.
    """
    x = np.asarray(x, dtype=RING_DTYPE)
    half, shift = np.int64(_LIMB_HALF), np.int64(LIMB_BITS)
    low = x + _LIMB_HALF
    low &= _LIMB_MASK
    l0 = low.view(np.int64)
    l0 -= half
    rest = (x - l0.view(RING_DTYPE)).view(np.int64)
    rest >>= shift
    mid = rest.view(RING_DTYPE) + _LIMB_HALF
    mid &= _LIMB_MASK
    l1 = mid.view(np.int64)
    l1 -= half
    rest -= l1
    rest >>= shift
    return l0, l1, rest


class SplitOperand:
    """A ring operand split into float64 limbs once, for repeated products (weights, opened masks).

    The inner dimension is cut into chunks of at most :data:`MAX_EXACT_INNER`.  Per chunk, a left operand
    is stored as [l0 | l1 | l2] along its last axis and a right operand as [l2; l1; l0] along its inner
    axis, so the three partial products of :func:`ring_matmul` are GEMMs over prefixes (left) and
    suffixes (right) of one array each, with no copies per product.
    """

    __slots__ = ("chunks", "shape", "side")

    def __init__(self, x: np.ndarray, side: str) -> None:
        x = np.asarray(x, dtype=RING_DTYPE)
        if x.ndim < 2:
            raise ValueError("ring_matmul operands need at least two dimensions")
        if side not in ("left", "right"):
            raise ValueError(f"side must be 'left' or 'right', got {side!r}")
        self.shape = x.shape
        self.side = side
        axis = -1 if side == "left" else -2
        inner = x.shape[axis]
        self.chunks: list[tuple[np.ndarray, int]] = []
        for start in range(0, inner, MAX_EXACT_INNER):
            stop = min(start + MAX_EXACT_INNER, inner)
            part = x[..., start:stop] if side == "left" else x[..., start:stop, :]
            k = stop - start
            limbs = split_limbs(part)
            order = limbs if side == "left" else limbs[::-1]
            cat_shape = list(part.shape)
            cat_shape[axis] = 3 * k
            cat = np.empty(cat_shape, dtype=np.float64)
            for i, limb in enumerate(order):
                if side == "left":
                    cat[..., i * k : (i + 1) * k] = limb
                else:
                    cat[..., i * k : (i + 1) * k, :] = limb
            self.chunks.append((cat, k))

    @staticmethod
    def limb_prefix(chunk: tuple[np.ndarray, int], side: str, count: int) -> np.ndarray:
        """The first ``count`` limbs of a left chunk, or the last ``count`` limbs of a right chunk."""
        cat, k = chunk
        if side == "left":
            return cat[..., : count * k]
        return cat[..., (3 - count) * k :, :]


def _exact_int(product: np.ndarray) -> np.ndarray:
    """A float64 array of exact integers (|v| <= 2^53) as ring elements."""
    return product.astype(np.int64).view(RING_DTYPE)


def ring_matmul(a: np.ndarray | SplitOperand, b: np.ndarray | SplitOperand) -> np.ndarray:
    """Exact ``a @ b mod 2^64`` (numpy matmul broadcasting, both operands at least 2-D).

    Three float64 GEMMs per chunk of the inner dimension: low = a0 b0, mid = [a0 a1] [b1; b0] and
    high = [a0 a1 a2] [b2; b1; b0].  Exactness: |a0 b1|, |a1 b0| <= 2^42, so the mid sum over 2k terms
    stays <= 2^53 for k <= 1024; the high terms are at most 1.5 * 2^42 each (the top limb has 20 bits),
    so 3k terms stay below 2^53 as well.  Longer inner dimensions are split into chunks of 1024.
    """
    b_split = b if isinstance(b, SplitOperand) else SplitOperand(b, "right")
    if not isinstance(a, SplitOperand) and np.ndim(a) > 2 and len(b_split.shape) == 2:
        # (..., n, k) @ (k, m): one GEMM over all rows is far faster than numpy's per-matrix loop.
        a = np.asarray(a)
        flat = ring_matmul(a.reshape(-1, a.shape[-1]), b_split)
        return flat.reshape(*a.shape[:-1], b_split.shape[-1])
    a_split = a if isinstance(a, SplitOperand) else SplitOperand(a, "left")
    if a_split.side != "left" or b_split.side != "right":
        raise ValueError("a pre-split operand was split for the other side of the product")
    if a_split.shape[-1] != b_split.shape[-2]:
        raise ValueError(f"ring_matmul: inner dimensions differ ({a_split.shape} @ {b_split.shape})")
    total = None
    for a_chunk, b_chunk in zip(a_split.chunks, b_split.chunks, strict=True):
        piece = _ring_matmul_split(a_chunk, b_chunk)
        total = piece if total is None else total + piece
    return total


def _ring_matmul_split(a: tuple[np.ndarray, int], b: tuple[np.ndarray, int]) -> np.ndarray:
    prefix = SplitOperand.limb_prefix
    low = _exact_int(prefix(a, "left", 1) @ prefix(b, "right", 1))
    mid = _exact_int(prefix(a, "left", 2) @ prefix(b, "right", 2))
    high = _exact_int(prefix(a, "left", 3) @ prefix(b, "right", 3))
    return low + (mid << np.uint64(LIMB_BITS)) + (high << np.uint64(2 * LIMB_BITS))
