"""Tests of the plain ring Z_2^64 (mpc_core.ring): fixed-point encoding, ring arithmetic, exact matmul.

Every check compares against Python integers (arbitrary precision, reduced mod 2^64 by hand) or exact
rationals, never against the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mpc_core.ring as ring_module
from mpc_core.ring import (
    KERNEL_ENV,
    RING_GEMM_KERNELS,
    FixedPoint,
    as_ring,
    check_matmul_wraps,
    ring_matmul,
    ring_scalar,
    select_kernel,
    to_signed,
    truncate_public,
)

MOD = 1 << 64
F = 16
FP = FixedPoint(F)
ULP = 2.0**-F

#: Values where carries, sign and limb boundaries meet.
EXTREMES = [
    0,
    1,
    MOD - 1,
    1 << 63,
    (1 << 63) - 1,
    (1 << 63) + 1,
    1 << 21,
    (1 << 21) - 1,
    1 << 22,
    1 << 43,
    1 << 44,
    (1 << 44) - 1,
    MOD - (1 << 21),
    MOD - (1 << 43),
    0x7FFFF7FFFFE00000,
    0x800007FFFFDFFFFF,
]
#: Operands whose int64 products and running sums overflow on every term: a GEMM that saturated, rounded
#: through floating point or lost the high half of a product would get these wrong. The last has every
#: float64 limb at its most negative (-2^21, -2^21, -2^19): at an inner dimension of 1024 the fused middle
#: pass then sums exactly to 2^53, the edge of float64's exact integers.
LIMB_EDGE = (-(1 << 21) - (1 << 43) - (1 << 63)) % MOD
OVERFLOWING = [(1 << 63) - 1, 1 << 63, MOD - 1, (1 << 63) + 0x5555, LIMB_EDGE]
KERNELS = sorted(RING_GEMM_KERNELS)

ring_ints = st.one_of(st.integers(0, MOD - 1), st.sampled_from(EXTREMES))


def signed(v: int) -> int:
    v %= MOD
    return v - MOD if v >= 1 << 63 else v


def ring_array(values: list[int], shape: tuple[int, ...] | None = None) -> np.ndarray:
    arr = np.array([v % MOD for v in values], dtype=np.uint64)
    return arr.reshape(shape) if shape is not None else arr


def py_ints(arr: np.ndarray) -> np.ndarray:
    """uint64 array -> object array of Python ints (for exact reference arithmetic)."""
    return np.array([int(v) for v in np.ravel(arr)], dtype=object).reshape(np.shape(arr))


# ---------------------------------------------------------------------------------- fixed point
@settings(max_examples=400, deadline=None)
@given(k=st.integers(-(1 << 36), 1 << 36), j=st.integers(-((1 << F) - 1), (1 << F) - 1))
def test_encode_decode_exact_near_integers(k: int, j: int) -> None:
    """k + j 2^-f (both signs, just above and below integers) is representable and must round-trip exactly.

    This is the CrypTen decode bug: -1.99998 came back as -2.99998 when the fraction was floor-shifted.
    |k| <= 2^36 keeps k 2^f + j below 2^53, so the float64 input itself is exact.
    """
    value = k + j * ULP
    decoded = FP.decode(FP.encode(np.array([value])))
    assert decoded[0] == value
    assert int(to_signed(FP.encode(np.array([value])))[0]) == k * (1 << F) + j


@pytest.mark.parametrize("value", [-1.99998, -2.00001, -0.00001, -1e-9, 1.99998, -12345.99999, -0.5 - ULP])
def test_decode_close_to_value_at_integer_boundaries(value: float) -> None:
    decoded = FP.decode(FP.encode(np.array([value])))[0]
    assert abs(decoded - value) <= ULP / 2  # in particular never off by one integer


def test_crypten_regression_value() -> None:
    assert -2.0 < FP.decode(FP.encode(np.array([-1.99998])))[0] < -1.9999


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=-(2.0**46), max_value=2.0**46, allow_nan=False))
def test_encode_rounds_to_nearest(value: float) -> None:
    """|decode(encode(x)) - x| <= 2^-(f+1): round to nearest, checked with exact rationals."""
    from fractions import Fraction

    raw = int(to_signed(FP.encode(np.array([value])))[0])
    assert abs(Fraction(raw, 1 << F) - Fraction(value)) <= Fraction(1, 1 << (F + 1))


def test_encode_range_limit() -> None:
    limit = FP.max_abs
    assert limit == 2.0 ** (63 - F)
    largest = np.nextafter(limit, 0.0)
    for v in (largest, -largest):
        raw = int(to_signed(FP.encode(np.array([v])))[0])
        assert raw == int(v * (1 << F))  # exact: no wrap-around, sign kept
    for bad in (limit, -limit, 1e30, -1e30):
        with pytest.raises(ValueError, match="out of fixed-point range") as info:
            FP.encode(np.array([0.0, bad]))
        assert repr(bad) not in str(info.value)  # the offending (possibly secret) value is not echoed


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_encode_non_finite_raises(bad: float) -> None:
    with pytest.raises(ValueError, match="non-finite"):
        FP.encode(np.array([1.0, bad]))


@pytest.mark.parametrize("frac_bits", [-1, 41])
def test_fixed_point_rejects_bad_frac_bits(frac_bits: int) -> None:
    with pytest.raises(ValueError, match="frac_bits"):
        FixedPoint(frac_bits)


@pytest.mark.parametrize("frac_bits", [0, 8, 24, 40])
def test_other_frac_bits_round_trip(frac_bits: int) -> None:
    fp = FixedPoint(frac_bits)
    ulp = 2.0**-frac_bits
    values = np.array([0.0, -ulp, ulp, -1 - ulp, 3 + ulp, -(2.0 ** (20 - frac_bits // 2))])
    assert np.array_equal(fp.decode(fp.encode(values)), values)


# ---------------------------------------------------------------------------------- ring arithmetic
@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(ring_ints, ring_ints), min_size=1, max_size=20))
def test_ring_add_sub_mul_neg_match_python(pairs: list[tuple[int, int]]) -> None:
    a = ring_array([p[0] for p in pairs])
    b = ring_array([p[1] for p in pairs])
    assert [int(v) for v in a + b] == [(x + y) % MOD for x, y in pairs]
    assert [int(v) for v in a - b] == [(x - y) % MOD for x, y in pairs]
    assert [int(v) for v in a * b] == [(x * y) % MOD for x, y in pairs]
    assert [int(v) for v in -a] == [(-x) % MOD for x, _ in pairs]


@settings(max_examples=300, deadline=None)
@given(st.lists(ring_ints, min_size=1, max_size=20), st.integers(0, 63))
def test_ring_shifts_match_python(values: list[int], bits: int) -> None:
    a = ring_array(values)
    assert [int(v) for v in truncate_public(a, bits)] == [(signed(x) >> bits) % MOD for x in values]
    assert [int(v) for v in a << np.uint64(bits)] == [(x << bits) % MOD for x in values]
    assert [int(v) for v in to_signed(a)] == [signed(x) for x in values]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-(1 << 70), 1 << 70), min_size=1, max_size=10))
def test_as_ring_and_ring_scalar_reduce_any_integer(values: list[int]) -> None:
    assert [int(v) for v in as_ring(np.array(values, dtype=object))] == [v % MOD for v in values]
    assert all(int(ring_scalar(v)) == v % MOD for v in values)
    small = [max(min(v, (1 << 63) - 1), -(1 << 63)) for v in values]
    assert [int(v) for v in as_ring(np.array(small, dtype=np.int64))] == [v % MOD for v in small]


def test_as_ring_rejects_floats() -> None:
    with pytest.raises(TypeError, match="integers"):
        as_ring(np.array([1.5]))


# ---------------------------------------------------------------------------------------------- matmul
@st.composite
def matmul_case(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    batch = draw(st.sampled_from([(), (2,), (2, 1), (1, 3)]))
    b_batch = draw(st.sampled_from([(), batch[-1:] if batch else ()]))
    m = draw(st.integers(1, 3))
    n = draw(st.integers(1, 3))
    k = draw(st.one_of(st.integers(1, 40), st.sampled_from([1023, 1024, 1025, 2047, 2049])))
    fill = draw(st.sampled_from(["random", "extreme", "overflowing"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    a_shape, b_shape = (*batch, m, k), (*b_batch, k, n)
    if fill == "random":
        a = rng.integers(0, MOD, size=a_shape, dtype=np.uint64)
        b = rng.integers(0, MOD, size=b_shape, dtype=np.uint64)
    else:
        pool = np.array(EXTREMES if fill == "extreme" else OVERFLOWING, dtype=np.uint64)
        a, b = rng.choice(pool, size=a_shape), rng.choice(pool, size=b_shape)
    return a, b


def reference_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.matmul(py_ints(a), py_ints(b)) % MOD


@pytest.mark.parametrize("kernel", KERNELS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=matmul_case())
def test_ring_matmul_exact_against_python_integers(kernel: str, case: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = case
    expected = reference_matmul(a, b)
    got = ring_matmul(a, b, kernel=kernel)
    assert got.dtype == np.uint64 and got.shape == expected.shape
    assert np.array_equal(py_ints(got), expected)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("shape", [(64, 768, 96), (2, 3001, 3), (130, 70, 129), (3, 1024, 5)])
@pytest.mark.parametrize("value", OVERFLOWING)
def test_ring_matmul_overflowing_operands_at_kernel_sizes(
    kernel: str, shape: tuple[int, int, int], value: int
) -> None:
    """Shapes large enough for the blocked, vectorised kernel, every product and sum overflowing int64."""
    n, k, m = shape
    rng = np.random.default_rng(value % 1000)
    a = np.full((n, k), value, dtype=np.uint64)
    a[:, ::7] = rng.integers(0, MOD, size=a[:, ::7].shape, dtype=np.uint64)
    b = np.full((k, m), value, dtype=np.uint64)
    expected = reference_matmul(a[:3], b) if n > 3 else reference_matmul(a, b)
    got = ring_matmul(a, b, kernel=kernel)
    assert np.array_equal(py_ints(got[: expected.shape[0]]), expected)
    assert np.array_equal(got, a @ b)  # numpy's uint64 loop wraps exactly too (slow, but a full check)


@pytest.mark.parametrize("kernel", KERNELS)
def test_ring_matmul_takes_read_only_and_strided_operands(kernel: str) -> None:
    """Arrays decoded from the wire are read-only; views may be transposed or reversed."""
    rng = np.random.default_rng(3)
    a = rng.integers(0, MOD, size=(5, 9), dtype=np.uint64)
    b = rng.integers(0, MOD, size=(9, 4), dtype=np.uint64)
    expected = a @ b
    a_ro = a.copy()
    a_ro.flags.writeable = False
    assert np.array_equal(ring_matmul(a_ro, b, kernel=kernel), expected)
    assert np.array_equal(ring_matmul(a[::-1], b[:, ::-1], kernel=kernel), expected[::-1, ::-1])
    assert np.array_equal(ring_matmul(np.asfortranarray(a), b.T.copy().T, kernel=kernel), expected)
    broadcast = ring_matmul(a, np.broadcast_to(b, (2, 9, 4)), kernel=kernel)
    assert np.array_equal(broadcast, np.stack([expected] * 2))


def test_wraparound_check_refuses_a_kernel_that_does_not_wrap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Control: the import-time check fails on a GEMM that saturates instead of wrapping."""

    def saturating_matmul(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        exact = np.matmul(x.numpy().astype(object), y.numpy().astype(object))
        clipped = np.clip(exact, -(1 << 63), (1 << 63) - 1).astype(np.int64)
        return torch.from_numpy(clipped)

    check_matmul_wraps()  # the real kernel passes
    monkeypatch.setattr(ring_module.torch, "matmul", saturating_matmul)
    with pytest.raises(RuntimeError, match="does not wrap"):
        check_matmul_wraps()


def test_kernel_selection_pins_measures_and_refuses_unknown_names() -> None:
    """SECP_RING_GEMM pins a kernel; unset or 'auto' measures both and keeps the faster; typos are refused."""
    assert select_kernel({KERNEL_ENV: "float64-limbs"}).name == "float64-limbs"
    assert select_kernel({KERNEL_ENV: "int64"}).reason.startswith("pinned")
    measured = select_kernel({})
    assert set(measured.seconds) == set(RING_GEMM_KERNELS)
    assert measured.name == min(measured.seconds, key=measured.seconds.__getitem__)
    assert select_kernel({KERNEL_ENV: "auto"}).seconds.keys() == measured.seconds.keys()
    with pytest.raises(ValueError, match="not a ring GEMM kernel"):
        select_kernel({KERNEL_ENV: "int32"})
    with pytest.raises(ValueError, match="unknown ring GEMM kernel"):
        ring_matmul(np.zeros((1, 1), dtype=np.uint64), np.zeros((1, 1), dtype=np.uint64), kernel="fast")


def test_ring_matmul_rejects_bad_operands() -> None:
    a = np.zeros((2, 3), dtype=np.uint64)
    with pytest.raises(ValueError, match="inner dimensions"):
        ring_matmul(a, np.zeros((4, 2), dtype=np.uint64))
    with pytest.raises(ValueError, match="two dimensions"):
        ring_matmul(np.zeros(3, dtype=np.uint64), np.zeros((3, 2), dtype=np.uint64))


def test_allocator_settings_are_accepted_by_glibc() -> None:
    """conftest applies them for every test process; on glibc (these machines) mallopt accepts all three."""
    from mpc_core.allocator import tune_allocator

    assert tune_allocator() is True


@pytest.mark.parametrize("count", [0, 1, 3, (1 << 19) + 5, (1 << 20) + 3])
def test_prg_ring_is_the_aes_ctr_keystream_in_order(count: int) -> None:
    """ring() writes the keystream block by block: the same words as one update() of zeros, and later
    draws continue the stream (around the 4 MiB block boundary too)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    from mpc_core.prg import PRG

    seed = bytes(range(16))
    reference = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    prg = PRG(seed)
    for shape in [(count,), (2, 3)]:
        expected = np.frombuffer(reference.update(bytes(8 * int(np.prod(shape)))), dtype=np.uint64)
        np.testing.assert_array_equal(prg.ring(shape).reshape(-1), expected)


def test_prg_bits_are_fair_and_packed() -> None:
    from mpc_core.prg import PRG

    bits = PRG(bytes(16)).bits((1000, 100))
    assert bits.shape == (1000, 100) and set(np.unique(bits)) == {0, 1}
    assert abs(bits.mean() - 0.5) < 0.005  # 10^5 fair bits: 3 sigma is 0.0047


@pytest.mark.parametrize("suite", ["2pc", "3pc"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_secure_products_run_on_either_kernel(
    monkeypatch: pytest.MonkeyPatch, suite: str, kernel: str
) -> None:
    """The suites' products (secret x secret and secret x public) are right whichever kernel a party chose."""
    from mpc_core.runtime import run_parties

    monkeypatch.setattr(ring_module, "KERNEL", select_kernel({KERNEL_ENV: kernel}))
    rng = np.random.default_rng(7)
    x, y, w = rng.normal(size=(4, 1100)), rng.normal(size=(1100, 3)), rng.normal(size=(1100, 2))

    def program(ctx, X, Y):  # type: ignore[no-untyped-def]
        return (X @ Y).reveal(), (X @ w).reveal()

    xy, xw = run_parties(suite, program, x, y)[0]
    # Each product of fixed-point operands is exact in the ring; the only error is the encoding of the
    # operands (2^-17 each) summed over the inner dimension and one truncation: well below 1e-2.
    np.testing.assert_allclose(xy, x @ y, atol=1e-2)
    np.testing.assert_allclose(xw, x @ w, atol=1e-2)
