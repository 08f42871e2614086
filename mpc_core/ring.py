"""The ring Z_2^64 on numpy ``uint64``, fixed-point encoding, and exact fast ring matrix products.

This module owns arithmetic on plain ring elements only: it knows nothing about shares or parties.

* Wrap-around of ``uint64`` *is* the reduction mod 2^64; signed values are read through an ``int64`` view.
* A real number x is encoded as round(x * 2^f) in two's complement, f fractional bits (default 16).
  Encoding refuses values whose encoding would wrap (|x| >= 2^(63 - f)) and non-finite values.
* :func:`ring_matmul` computes ``a @ b mod 2^64`` exactly with one of two kernels, chosen once per
  process by measuring both: torch's compiled int64 GEMM on the two's-complement view (int64 arithmetic
  wraps mod 2^64 like uint64), fast on AVX-512 CPUs, or a three-limb split onto float64 GEMMs, fast on
  every CPU with a good BLAS. Both are checked at import.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Mapping
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
# Exact ring matrix products: two kernels, the faster one chosen once per process
# --------------------------------------------------------------------------------------------------

# torch.from_numpy warns once per read-only array (arrays decoded from the wire are read-only); the
# product only reads its operands, so the warning says nothing here.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)

#: Environment variable that pins the kernel (``int64``, ``float64-limbs``) instead of measuring.
KERNEL_ENV = "SECP_RING_GEMM"
#: Limb offsets of the float64 kernel: x = l0 + l1 2^22 + l2 2^44 (mod 2^64), every limb signed.
LIMB_SHIFT = 22
#: Largest inner dimension one float64 pass may sum exactly. Every limb has |l| <= 2^21, so a limb product
#: is at most 2^42 in magnitude; the fused middle pass sums 2K such products and must stay within 2^53
#: (float64's exact integers): 2 * 1024 * 2^42 = 2^53. Longer inner dimensions are cut into chunks.
LIMB_CHUNK = 1024


def _as_int64_tensor(x: np.ndarray) -> torch.Tensor:
    """A zero-copy int64 (two's complement) view of a uint64 array; copies only negative strides."""
    if any(stride < 0 for stride in x.strides):
        x = np.ascontiguousarray(x)
    return torch.from_numpy(x.view(np.int64))


def _matmul_int64(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """torch's int64 GEMM on the two's-complement views.

    int64 products and sums wrap modulo 2^64 exactly as uint64 ones do, so the low 64 bits are the ring
    product. Fast where the CPU multiplies 64-bit lanes in vector registers (AVX-512: about 2 float64
    GEMMs of the same shape); on some AVX2-only servers it was measured at 48 float64 GEMMs.
    """
    return torch.matmul(_as_int64_tensor(a), _as_int64_tensor(b)).numpy().view(RING_DTYPE)


def _limbs_into(x: np.ndarray, blocks: list[np.ndarray]) -> None:
    """Write the signed limbs of ring array ``x`` as float64 into ``blocks[0]``, ``[1]``, ``[2]``.

    x = l0 + l1 2^22 + l2 2^44 (mod 2^64) with l0, l1 in [-2^21, 2^21) and l2 in [-2^19, 2^19).
    Centred (signed) limbs halve every product's magnitude against unsigned ones, which is what lets one
    float64 pass sum 1024 fused terms exactly. With y = x + 2^21 (carry-in of the rounding):
    l0 = sext22(x), l1 = sext22(bits 22..43 of y), l2 = (y + 2^43) >> 44 read signed; wrap-around of
    the additions modulo 2^64 only moves bits that no limb reads. Seven in-place passes, the last of each
    limb casting straight into its float64 block: this split is the kernel's only cost besides the GEMMs.
    """
    u = np.asarray(x, dtype=RING_DTYPE)
    scratch = np.empty(u.shape, dtype=RING_DTYPE)
    signed = scratch.view(np.int64)
    spare = np.uint64(64 - LIMB_SHIFT)
    np.left_shift(u, spare, out=scratch)
    np.right_shift(signed, np.int64(64 - LIMB_SHIFT), out=blocks[0], casting="unsafe")
    np.add(u, np.uint64(1 << (LIMB_SHIFT - 1)), out=scratch)
    np.left_shift(scratch, np.uint64(64 - 2 * LIMB_SHIFT), out=scratch)
    np.right_shift(signed, np.int64(64 - LIMB_SHIFT), out=blocks[1], casting="unsafe")
    np.add(u, np.uint64((1 << (LIMB_SHIFT - 1)) + (1 << (2 * LIMB_SHIFT - 1))), out=scratch)
    np.right_shift(signed, np.int64(2 * LIMB_SHIFT), out=blocks[2], casting="unsafe")


def _matmul_limbs_chunk(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """One exact pass for an inner dimension of at most :data:`LIMB_CHUNK`: three float64 GEMMs.

    With a = sum_i a_i 2^(22 i) and b = sum_j b_j 2^(22 j), a b mod 2^64 needs the terms with i + j <= 2
    (i + j = 3 sits at 2^66). Terms of equal i + j are fused into one GEMM by concatenating along the
    inner axis: [a0|a1|a2] @ [b2;b1;b0] is the 2^44 term; its first two blocks against the last two rows
    of the stack are the 2^22 term; the first block against the last is the 2^0 term. So the three GEMMs
    cost six limb products, all sums below 2^53 in magnitude, hence exact in float64.
    """
    k = a.shape[-1]
    a_cat = np.empty((*a.shape[:-1], 3 * k), dtype=np.float64)
    _limbs_into(a, [a_cat[..., i * k : (i + 1) * k] for i in range(3)])
    b_stack = np.empty((*b.shape[:-2], 3 * k, b.shape[-1]), dtype=np.float64)
    _limbs_into(b, [b_stack[..., (2 - i) * k : (3 - i) * k, :] for i in range(3)])
    terms = (
        np.matmul(a_cat[..., :k], b_stack[..., 2 * k :, :]),
        np.matmul(a_cat[..., : 2 * k], b_stack[..., k:, :]),
        np.matmul(a_cat, b_stack),
    )
    out = terms[0].astype(np.int64).view(RING_DTYPE)
    for i in (1, 2):
        out += terms[i].astype(np.int64).view(RING_DTYPE) << np.uint64(LIMB_SHIFT * i)
    return out


def _matmul_limbs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact ring product on float64 BLAS: three-limb split, inner dimension cut into exact chunks.

    Costs six float64 GEMM-equivalents plus the limb split, whatever the CPU's integer vector units; the
    fallback that keeps AVX2-only servers within 8x of one float64 GEMM.
    """
    k = a.shape[-1]
    if b.ndim == 2 and a.ndim > 2:  # a stack of rows times one matrix: one GEMM, not one per matrix
        return _matmul_limbs(a.reshape(-1, k), b).reshape(*a.shape[:-1], b.shape[-1])
    if k <= LIMB_CHUNK:
        return _matmul_limbs_chunk(a, b)
    out = None
    for start in range(0, k, LIMB_CHUNK):
        part = _matmul_limbs_chunk(a[..., start : start + LIMB_CHUNK], b[..., start : start + LIMB_CHUNK, :])
        out = part if out is None else out + part
    return out


#: The exact kernels by name; both are checked at import and in the tests on every machine.
RING_GEMM_KERNELS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "int64": _matmul_int64,
    "float64-limbs": _matmul_limbs,
}


@dataclass(frozen=True)
class KernelChoice:
    """Which exact kernel this process uses, why, and the start-up timings it was chosen from."""

    name: str
    reason: str
    seconds: dict[str, float]


def _time_kernel(kernel: Callable[[np.ndarray, np.ndarray], np.ndarray], repeats: int = 3) -> float:
    """Best-of wall time of one kernel on a [128, 512] x [512, 512] product (a fixed, modest shape)."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2**64, size=(128, 512), dtype=RING_DTYPE)
    b = rng.integers(0, 2**64, size=(512, 512), dtype=RING_DTYPE)
    kernel(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        kernel(a, b)
        best = min(best, time.perf_counter() - start)
    return best


def select_kernel(environ: Mapping[str, str] | None = None) -> KernelChoice:
    """Pick the exact kernel: the one named in ``SECP_RING_GEMM``, else the faster one measured here.

    Measuring (about 0.05 s at start-up on a fast machine) rather than reading the CPU capability: the
    int64 GEMM's speed depends on the CPU's 64-bit vector multiplies and on how torch was built, and the
    float64 split's on BLAS; only a measurement sees both. Both kernels are exact, so parties that choose
    differently still compute the same ring values.
    """
    env = os.environ if environ is None else environ
    pinned = env.get(KERNEL_ENV, "").strip()
    if pinned and pinned != "auto":
        if pinned not in RING_GEMM_KERNELS:
            raise ValueError(
                f"{KERNEL_ENV}={pinned!r} is not a ring GEMM kernel; choose one of "
                f"{sorted(RING_GEMM_KERNELS)} or 'auto'"
            )
        return KernelChoice(pinned, f"pinned by {KERNEL_ENV}", {})
    seconds = {name: _time_kernel(kernel) for name, kernel in RING_GEMM_KERNELS.items()}
    name = min(seconds, key=seconds.__getitem__)
    return KernelChoice(name, "measured faster at start-up", seconds)


def ring_matmul(a: np.ndarray, b: np.ndarray, kernel: str | None = None) -> np.ndarray:
    """Exact ``a @ b mod 2^64`` (numpy matmul broadcasting, both operands at least 2-D).

    Runs the kernel chosen once per process (:func:`select_kernel`), or the one named by ``kernel``:
    torch's int64 GEMM where the CPU makes it fast, else the float64 three-limb split. numpy's own
    uint64 ``@`` is a scalar loop, 20-40x slower than either. Wrap-around and exactness are verified at
    import (:func:`check_matmul_wraps`) and the tests compare both kernels against Python integers at
    extreme values.
    """
    a = np.asarray(a, dtype=RING_DTYPE)
    b = np.asarray(b, dtype=RING_DTYPE)
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError("ring_matmul operands need at least two dimensions")
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"ring_matmul: inner dimensions differ ({a.shape} @ {b.shape})")
    if kernel is not None and kernel not in RING_GEMM_KERNELS:
        raise ValueError(f"unknown ring GEMM kernel {kernel!r}; choose one of {sorted(RING_GEMM_KERNELS)}")
    return RING_GEMM_KERNELS[kernel or KERNEL.name](a, b)


def check_matmul_wraps() -> None:
    """Refuse to run if either exact kernel is wrong on this build (e.g. an int64 GEMM that saturates).

    The operands mix the extremes of the ring with random values over an inner dimension long enough
    for the blocked, vectorised kernel path and for two float64 chunks; the reference is numpy's exact
    (slow) uint64 loop.
    """
    rng = np.random.default_rng(64)
    extremes = np.array(
        [0, 1, 2**63 - 1, 2**63, 2**64 - 1, 2**62 + 12345, 2**21, 2**44 - 1], dtype=RING_DTYPE
    )
    a = rng.integers(0, 2**64, size=(9, 1031), dtype=RING_DTYPE)
    b = rng.integers(0, 2**64, size=(1031, 17), dtype=RING_DTYPE)
    a[:, ::3] = rng.choice(extremes, size=a[:, ::3].shape)
    b[::2] = rng.choice(extremes, size=b[::2].shape)
    expected = a @ b
    for name, kernel in RING_GEMM_KERNELS.items():
        if not np.array_equal(kernel(a, b), expected):
            raise RuntimeError(
                f"torch {torch.__version__}: the {name} ring GEMM does not wrap modulo 2^64 exactly on this "
                "build; secure matrix products would be wrong, so mpc_core refuses to run"
            )


check_matmul_wraps()
#: The kernel this process uses (see :func:`select_kernel`); recorded beside every benchmark figure.
KERNEL: KernelChoice = select_kernel()
