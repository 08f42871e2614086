"""The failure probability and the error of the suites' probabilistic truncation, measured.

Both suites truncate a 2-of-2 sharing x = s0 + s1 (mod 2^64) locally: P0 takes floor(s0 / 2^k), the other
side ceil(s1 / 2^k) (SecureML Thm 1, made unbiased as in SPU; in 3pc ABY3's Pi_trunc1 with s0 = x0 + x1,
s1 = x2).  With s1 uniform, exactly |x| of the 2^64 values of s1 make the signed sum s0 + s1 wrap (one
fewer for x < 0), so:

* with probability |x| / 2^64 per element the result is off by +-2^(64-k) (a catastrophic error);
* otherwise it is within one unit of x / 2^k, strictly: |2^k r - x| < 2^k, and unbiased (E[r] = x / 2^k
  for every x, since both rounding residues are uniform over the same 2^k values).

These tests measure the rate at several magnitudes (with binomial tests, both tails) and check the error
of every element that did not fail, in exact integers.  docs/engine.md states what it means for the
values the engine handles (a product of fixed-point values v carries raw magnitude |v| 2^(2f)).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from mpc_core.context import Context
from mpc_core.prg import system_prg
from mpc_core.ring import EXACT_TRUNC_BITS, FixedPoint, to_signed
from mpc_core.runtime import run_parties
from mpc_core.suites import suite_class
from mpc_core.suites.twoparty import truncate_share

SUITES = ["2pc", "3pc"]
K = 16  # the truncation after a product with f = 16 fractional bits
P_MIN = 1e-6  # smallest acceptable two-sided p-value of an observed failure count


def truncate_shared(suite: str, x: np.ndarray, bits: int = K, mode: str = "probabilistic") -> np.ndarray:
    """Share the signed ring integers ``x`` as a data owner would, truncate in the protocol, open (signed)."""
    shares = suite_class(suite).split(x.view(np.uint64), system_prg())

    def program(ctx: Context) -> np.ndarray:
        data = ctx.suite.dummy(x.shape) if ctx.is_dealer else shares[ctx.participant]
        return ctx.suite.reveal(ctx.suite.truncate(data, bits))

    return to_signed(run_parties(suite, program, fp=FixedPoint(truncation=mode))[0])


def classify(x: np.ndarray, r: np.ndarray, bits: int = K) -> np.ndarray:
    """Boolean failure mask; asserts that each element is either within one unit (exactly, in integers)
    or off by +-2^(64 - bits) up to one unit, and nothing else."""
    off = (r.view(np.uint64) - (x >> bits).view(np.uint64)).view(np.int64)  # r - floor(x / 2^k), mod 2^64
    failed = np.abs(off) > 1
    ok = ~failed
    scaled_error = (r[ok] << bits) - x[ok]  # 2^k r - x, exact in int64 for |x| < 2^62
    assert np.all(np.abs(scaled_error) < 1 << bits), "a non-failing element is off by a unit or more"
    jump = 1 << (64 - bits)
    assert np.all(np.minimum(np.abs(off[failed] - jump), np.abs(off[failed] + jump)) <= 1), (
        "a failure is not a wrap by 2^(64-k)"
    )
    return failed


def binomial_two_sided_p(observed: int, n: int, p: float) -> float:
    """min(1, 2 min(P[X <= observed], P[X >= observed])) for X ~ Binomial(n, p), summed in log space."""

    def log_pmf(i: int) -> float:
        return (
            math.lgamma(n + 1)
            - math.lgamma(i + 1)
            - math.lgamma(n - i + 1)
            + i * math.log(p)
            + (n - i) * math.log1p(-p)
        )

    def tail(indices: range) -> float:
        total, peak = 0.0, None
        for i in indices:
            lp = log_pmf(i)
            peak = lp if peak is None else max(peak, lp)
            total += math.exp(lp)
            if lp < peak - 50:  # the remaining terms are negligible
                break
        return total

    lower = tail(range(observed, -1, -1))
    upper = tail(range(observed, n + 1))
    return min(1.0, 2 * min(lower, upper))


def test_binomial_test_itself() -> None:
    assert binomial_two_sided_p(5, 10, 0.5) == pytest.approx(1.0)
    assert binomial_two_sided_p(0, 10, 0.5) == pytest.approx(2 * 0.5**10)
    assert binomial_two_sided_p(10, 10, 0.5) == pytest.approx(2 * 0.5**10)
    assert binomial_two_sided_p(1024, 1 << 18, 2.0**-8) > 0.5
    assert binomial_two_sided_p(1024, 1 << 18, 2.0**-7) < P_MIN  # a rate off by a factor of two is caught


def random_magnitudes(n: int, bits: int, seed: int) -> np.ndarray:
    """n signed integers with |x| uniform in [2^(bits-1), 2^bits) and random signs."""
    rng = np.random.default_rng(seed)
    magnitude = rng.integers(1 << (bits - 1), 1 << bits, size=n, dtype=np.int64)
    return np.where(rng.integers(0, 2, size=n) == 1, magnitude, -magnitude)


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize(("bits", "n"), [(60, 1 << 16), (56, 1 << 18), (48, 1 << 21)])
def test_failure_rate_is_abs_x_over_2_to_64(suite: str, bits: int, n: int) -> None:
    """Raw |x| ~ 2^60, 2^56, 2^48: about 1/24, 1/340, 1/87,000 of the elements fail, as predicted."""
    x = random_magnitudes(n, bits, seed=bits)
    failed = classify(x, truncate_shared(suite, x))
    predicted = float(np.abs(x).astype(np.float64).mean()) / 2.0**64
    p_value = binomial_two_sided_p(int(failed.sum()), n, predicted)
    assert p_value > P_MIN, f"{failed.sum()} failures in {n}, predicted rate {predicted:.3g}"


@pytest.mark.parametrize("suite", SUITES)
def test_failure_rate_for_one_fixed_value(suite: str) -> None:
    """Many sharings of one value x = 2^58 + 12345 (and of -x): each fails with probability |x| / 2^64."""
    n = 1 << 17
    value = (1 << 58) + 12345
    for x in (np.full(n, value, dtype=np.int64), np.full(n, -value, dtype=np.int64)):
        failed = classify(x, truncate_shared(suite, x))
        assert binomial_two_sided_p(int(failed.sum()), n, value / 2.0**64) > P_MIN


@pytest.mark.parametrize("suite", SUITES)
def test_no_failures_in_the_operating_range(suite: str) -> None:
    """Raw |x| < 2^40 (a product of magnitude below 2^8 at 2f = 32 fractional bits): the predicted rate is
    below 2^-24 per element, 0.06 expected in 2^20 elements; more than 3 would reject it (p < 3e-6)."""
    n = 1 << 20
    x = random_magnitudes(n, 40, seed=40)
    failed = classify(x, truncate_shared(suite, x))
    assert int(failed.sum()) <= 3


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize("mode", ["probabilistic", "exact"])
@pytest.mark.parametrize("residue", [0, 1, 1 << 15, (1 << 16) - 1, 40_000])
def test_truncation_is_unbiased_for_every_value(suite: str, mode: str, residue: int) -> None:
    """For a fixed x, the mean of 2^k r - x over fresh sharings is 0 (each error lies in (-2^k, 2^k), so a
    5-sigma band is 5 2^k / sqrt(n)); values chosen by their residue mod 2^k."""
    n = 1 << 16
    x = np.full(n, 7 * (1 << K) + residue, dtype=np.int64)
    r = truncate_shared(suite, x, mode=mode)
    assert not classify(x, r).any()
    mean_error = float(((r << K) - x).mean())
    assert abs(mean_error) < 5 * (1 << K) / math.sqrt(n)


def test_unbiasedness_check_detects_the_plain_floor_variant() -> None:
    """Control: if both parties took floor (the original SecureML), the same check fails."""
    n = 1 << 16
    x = np.full(n, 7 * (1 << K) + 40_000, dtype=np.int64)
    s0, s1 = (s[0] for s in suite_class("2pc").split(x.view(np.uint64), system_prg()))
    plain = to_signed(truncate_share(s0, K, role=0) + truncate_share(s1, K, role=0))
    assert abs(float(((plain << K) - x).mean())) > 5 * (1 << K) / math.sqrt(n)
    unbiased = to_signed(truncate_share(s0, K, role=0) + truncate_share(s1, K, role=1))
    assert abs(float(((unbiased << K) - x).mean())) < 5 * (1 << K) / math.sqrt(n)


@pytest.mark.parametrize("suite", SUITES)
def test_exact_truncation_never_fails_up_to_its_bound(suite: str) -> None:
    """Exact mode at raw |x| ~ 2^61 (where the probabilistic mode fails for 1 element in 8): no failure in
    2^17 elements, every element within one unit; and the two ends of its range, -(2^62 - 1) and 2^62 - 1."""
    n = 1 << 17
    x = random_magnitudes(n, 61, seed=61)
    x[:2] = [1 - (1 << EXACT_TRUNC_BITS), (1 << EXACT_TRUNC_BITS) - 1]
    failed = classify(x, truncate_shared(suite, x, mode="exact"))
    assert not failed.any()
