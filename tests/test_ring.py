"""Tests of the plain ring Z_2^64 (mpc_core.ring): fixed-point encoding, ring arithmetic, exact matmul.

Every check compares against Python integers (arbitrary precision, reduced mod 2^64 by hand) or exact
rationals, never against the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpc_core.ring import (
    MAX_EXACT_INNER,
    FixedPoint,
    SplitOperand,
    as_ring,
    ring_matmul,
    ring_scalar,
    split_limbs,
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
#: Operands whose signed 22-bit limbs are all at their largest magnitude: a vector of one of them makes
#: the partial sums of ring_matmul as large as the exactness proof allows (mid = a0 b1 + a1 b0 reaches
#: 2^53 at an inner dimension of 1024, high = a0 b2 + a1 b1 + a2 b0 reaches 1.5 * 2^52).  WORST_ODD has
#: odd limbs, so sums beyond 2^53 would also lose their low bits: an unchunked GEMM fails at k = 1025.
WORST_MID = 0x7FFFF7FFFFE00000  # limbs (-2^21, -2^21, 2^19)
WORST_HIGH = 0x7FFFF800001FFFFF  # limbs (2^21 - 1, -2^21, 2^19)
WORST_ODD = 0x800007FFFFDFFFFF  # limbs (2^21 - 1, 2^21 - 1, -2^19)

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


# ---------------------------------------------------------------------------------- limbs and matmul
@settings(max_examples=300, deadline=None)
@given(st.lists(ring_ints, min_size=1, max_size=30))
def test_split_limbs_reconstructs_exactly(values: list[int]) -> None:
    l0, l1, l2 = split_limbs(ring_array(values))
    for v, a, b, c in zip(values, l0, l1, l2, strict=True):
        a, b, c = int(a), int(b), int(c)
        assert (a + (b << 22) + (c << 44)) % MOD == v
        assert -(1 << 21) <= a < 1 << 21 and -(1 << 21) <= b < 1 << 21 and abs(c) <= (1 << 19) + 1


@st.composite
def matmul_case(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    batch = draw(st.sampled_from([(), (2,), (2, 1), (1, 3)]))
    b_batch = draw(st.sampled_from([(), batch[-1:] if batch else ()]))
    m = draw(st.integers(1, 3))
    n = draw(st.integers(1, 3))
    k = draw(st.one_of(st.integers(1, 40), st.sampled_from([1023, 1024, 1025, 2047, 2049])))
    fill = draw(st.sampled_from(["random", "extreme", "worst"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    a_shape, b_shape = (*batch, m, k), (*b_batch, k, n)
    if fill == "random":
        a = rng.integers(0, MOD, size=a_shape, dtype=np.uint64)
        b = rng.integers(0, MOD, size=b_shape, dtype=np.uint64)
    elif fill == "extreme":
        pool = np.array(EXTREMES, dtype=np.uint64)
        a, b = rng.choice(pool, size=a_shape), rng.choice(pool, size=b_shape)
    else:
        worst = WORST_MID if rng.integers(2) else WORST_HIGH
        a = np.full(a_shape, worst, dtype=np.uint64)
        b = np.full(b_shape, worst, dtype=np.uint64)
    return a, b


def reference_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.matmul(py_ints(a), py_ints(b)) % MOD


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(matmul_case())
def test_ring_matmul_exact_against_python_integers(case: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = case
    expected = reference_matmul(a, b)
    got = ring_matmul(a, b)
    assert got.dtype == np.uint64 and got.shape == expected.shape
    assert np.array_equal(py_ints(got), expected)
    # Pre-split operands (weights, opened masks) give the same product, on either side.
    assert np.array_equal(ring_matmul(SplitOperand(a, "left"), SplitOperand(b, "right")), got)
    assert np.array_equal(ring_matmul(a, SplitOperand(b, "right")), got)


def worst_operands(k: int, worst: int) -> tuple[np.ndarray, np.ndarray]:
    """All-``worst`` operands, except one entry one limb unit lower so that mid sums are odd."""
    a = np.full((2, k), worst, dtype=np.uint64)
    b = np.full((k, 2), worst, dtype=np.uint64)
    b[0, 0] = (worst - (1 << 22)) % MOD
    return a, b


@pytest.mark.parametrize("k", [MAX_EXACT_INNER, MAX_EXACT_INNER + 1, 2 * MAX_EXACT_INNER + 1, 3001])
@pytest.mark.parametrize("worst", [WORST_MID, WORST_HIGH, WORST_ODD])
def test_ring_matmul_worst_case_partial_sums(k: int, worst: int) -> None:
    """Worst-limb operands: every partial sum is as large as the exactness proof allows."""
    a, b = worst_operands(k, worst)
    expected = reference_matmul(a, b)
    assert np.array_equal(py_ints(ring_matmul(a, b)), expected)
    assert np.array_equal(py_ints(ring_matmul(a, SplitOperand(b, "right"))), expected)


def test_unchunked_limb_sum_would_not_be_exact() -> None:
    """Control: for the WORST_ODD operands at k = 1025 the mid-limb sum is odd and above 2^53, so no float64
    GEMM over the whole inner dimension can be exact: the chunking checked above is necessary, and a
    missing chunking would make that test fail."""
    a, b = worst_operands(MAX_EXACT_INNER + 1, WORST_ODD)
    a0, a1, _ = split_limbs(a[0])
    b0, b1, _ = split_limbs(b[:, 0])
    exact_mid = sum(int(x) * int(y) for x, y in zip(a0, b1, strict=True)) + sum(
        int(x) * int(y) for x, y in zip(a1, b0, strict=True)
    )
    assert exact_mid > 1 << 53 and exact_mid % 2 == 1
    naive = np.concatenate([a0, a1]).astype(np.float64) @ np.concatenate([b1, b0]).astype(np.float64)
    assert int(naive) != exact_mid


def test_ring_matmul_rejects_bad_operands() -> None:
    a = np.zeros((2, 3), dtype=np.uint64)
    with pytest.raises(ValueError, match="inner dimensions"):
        ring_matmul(a, np.zeros((4, 2), dtype=np.uint64))
    with pytest.raises(ValueError, match="two dimensions"):
        ring_matmul(np.zeros(3, dtype=np.uint64), np.zeros((3, 2), dtype=np.uint64))
    with pytest.raises(ValueError):  # a left-split operand used as the right operand
        ring_matmul(a, SplitOperand(np.zeros((3, 2), dtype=np.uint64), "left"))
    with pytest.raises(ValueError, match="side"):
        SplitOperand(a, "middle")


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
