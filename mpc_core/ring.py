"""The ring Z_2^64 on numpy ``uint64``, fixed-point encoding, and exact fast ring matrix products.

This module owns arithmetic on plain ring elements only: it knows nothing about shares or parties.

* Wrap-around of ``uint64`` *is* the reduction mod 2^64; signed values are read through an ``int64`` view.
* A real number x is encoded as round(x * 2^f) in two's complement, f fractional bits (default 16).
  Encoding refuses values whose encoding would wrap (|x| >= 2^(63 - f)) and non-finite values.
* :func:`ring_matmul` computes ``a @ b mod 2^64`` exactly with torch's compiled int64 GEMM on the
  two's-complement view (int64 arithmetic wraps mod 2^64 like uint64); checked at import.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

RING_BITS = 64
RING_DTYPE = np.uint64
DEFAULT_FRAC_BITS = 16
TRUNCATION_MODES = ("exact", "probabilistic")
#: Exact truncation never wraps for raw ring values x with |x| < 2^EXACT_TRUNC_BITS.
EXACT_TRUNC_BITS = 62


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
# Exact ring matrix products on torch's compiled int64 GEMM
# --------------------------------------------------------------------------------------------------

# torch.from_numpy warns once per read-only array (arrays decoded from the wire are read-only); the
# product only reads its operands, so the warning says nothing here.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)


def _as_int64_tensor(x: np.ndarray) -> torch.Tensor:
    """A zero-copy int64 (two's complement) view of a uint64 array; copies only negative strides."""
    if any(stride < 0 for stride in x.strides):
        x = np.ascontiguousarray(x)
    return torch.from_numpy(x.view(np.int64))


def ring_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact ``a @ b mod 2^64`` (numpy matmul broadcasting, both operands at least 2-D).

    Runs torch's int64 GEMM on the two's-complement views: int64 products and sums wrap modulo 2^64 exactly
    as uint64 ones do, so the low 64 bits are the ring product.  numpy's own uint64 ``@`` is a scalar loop,
    about 20x slower; the earlier float64 limb split needed six GEMMs and was 3-7x slower.  Wrap-around of
    signed integers is not promised by C++, so :func:`check_matmul_wraps` verifies it at import and the
    tests compare against Python integers at extreme values.
    """
    a = np.asarray(a, dtype=RING_DTYPE)
    b = np.asarray(b, dtype=RING_DTYPE)
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError("ring_matmul operands need at least two dimensions")
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"ring_matmul: inner dimensions differ ({a.shape} @ {b.shape})")
    product = torch.matmul(_as_int64_tensor(a), _as_int64_tensor(b))
    return product.numpy().view(RING_DTYPE)


def check_matmul_wraps() -> None:
    """Refuse to run if this torch build's int64 GEMM does not reduce mod 2^64 (e.g. saturates).

    The operands mix the extremes of the ring with random values over an inner dimension long enough
    for the blocked, vectorised kernel path; the reference is numpy's exact (slow) uint64 loop.
    """
    rng = np.random.default_rng(64)
    extremes = np.array([0, 1, 2**63 - 1, 2**63, 2**64 - 1, 2**62 + 12345], dtype=RING_DTYPE)
    a = rng.integers(0, 2**64, size=(9, 1031), dtype=RING_DTYPE)
    b = rng.integers(0, 2**64, size=(1031, 17), dtype=RING_DTYPE)
    a[:, ::3] = rng.choice(extremes, size=a[:, ::3].shape)
    b[::2] = rng.choice(extremes, size=b[::2].shape)
    if not np.array_equal(ring_matmul(a, b), a @ b):
        raise RuntimeError(
            f"torch {torch.__version__}: int64 matmul does not wrap modulo 2^64 on this build; "
            "secure matrix products would be wrong, so mpc_core refuses to run"
        )


check_matmul_wraps()
