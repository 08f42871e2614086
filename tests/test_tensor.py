"""Tests of SharedTensor operations against float64 references, in both suites.

References are computed on the *encoded* inputs (decode(encode(x))), so the only error left is the one the
protocols add: linear operations are exact, one fixed-point product is truncated once and is within one
unit in the last place (ULP = 2^-16) of the exact product (strictly below, unless truncation fails, which
has probability |product| 2^32 / 2^64 per element: at most 2^-22 for the values used here), msb is exact,
and trig is within TRIG_BOUND (derived in test_trig_matches_cos_sin).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from mpc_core.context import Context
from mpc_core.prg import system_prg
from mpc_core.ring import FixedPoint
from mpc_core.runtime import run_parties
from mpc_core.suites import suite_class
from mpc_core.tensor import SharedTensor

SUITES = ["2pc", "3pc"]
FP = FixedPoint()
ULP = 2.0**-FP.frac_bits
MOD = 1 << 64


def enc(x: np.ndarray | float) -> np.ndarray:
    """The value the engine actually holds for a public or secret float: round(x 2^f) / 2^f."""
    return FP.decode(FP.encode(x))


def outputs(suite: str, results: list[Any]) -> list[Any]:
    """The compute parties' results (the 2pc dealer only ever gets zeros)."""
    return results[:2] if suite == "2pc" else results


def within_one_ulp(got: np.ndarray, exact: np.ndarray) -> None:
    err = np.max(np.abs(np.asarray(got) - np.asarray(exact)))
    assert err < ULP, f"error {err:.3g} exceeds one ulp"


def run_ring(suite: str, program: Callable[..., Any], *secrets: np.ndarray) -> list[Any]:
    """Run ``program(ctx, *tensors)`` on ring-integer secrets (scale 0), shared as a data owner would."""
    cls = suite_class(suite)
    shares = [cls.split(np.asarray(s, dtype=np.uint64), system_prg()) for s in secrets]

    def wrapped(ctx: Context) -> Any:
        own = [None if ctx.is_dealer else sh[ctx.participant] for sh in shares]
        tensors = [
            SharedTensor.from_share(ctx, o, np.shape(s), scale=0) for o, s in zip(own, secrets, strict=True)
        ]
        return program(ctx, *tensors)

    return run_parties(suite, wrapped)


@pytest.fixture(scope="module")
def rng() -> np.random.Generator:
    return np.random.default_rng(20240601)


# ---------------------------------------------------------------------------------- linear operations
C = np.array([0.25, -1.0, 3.5, 2.0**-10])  # exactly representable: public adds are exact
#: Operations written once: applied to SharedTensors in the protocol and to the encoded float64 arrays.
LINEAR = {
    "x + y": lambda x, y: x + y,
    "x - y": lambda x, y: x - y,
    "-x": lambda x, y: -x,
    "x + 1.5": lambda x, y: x + 1.5,
    "2.25 - x": lambda x, y: 2.25 - x,
    "x - c": lambda x, y: x - C,
    "c + x": lambda x, y: C + x,
    "x + 3": lambda x, y: x + 3,
    "x * 3": lambda x, y: x * 3,
    "x * -2": lambda x, y: x * -2,
    "x * ints": lambda x, y: x * np.array([1, -1, 2, 0]),
    "sum": lambda x, y: x.sum(),
    "sum(0)": lambda x, y: x.sum(axis=0),
    "T": lambda x, y: x.T,
    "slice": lambda x, y: x[1:, ::2],
    "x + y[0]": lambda x, y: x + y[0],
    "y[0] - x": lambda x, y: y[0] - x,
    "x[:, :1] + y[0]": lambda x, y: x[:, :1] + y[0],
}


@pytest.mark.parametrize("suite", SUITES)
def test_linear_operations_are_exact(suite: str, rng: np.random.Generator) -> None:
    x = rng.normal(scale=50, size=(3, 4))
    y = rng.normal(scale=50, size=(3, 4))

    def program(ctx: Context, X: SharedTensor, Y: SharedTensor):
        joined = [SharedTensor.concatenate([X, Y], axis=1), SharedTensor.stack([X, Y])]
        return [op(X, Y).reveal() for op in LINEAR.values()] + [t.reveal() for t in joined]

    ex, ey = enc(x), enc(y)
    expected = [op(ex, ey) for op in LINEAR.values()] + [np.concatenate([ex, ey], axis=1), np.stack([ex, ey])]
    names = [*LINEAR, "concatenate", "stack"]
    for party_result in outputs(suite, run_parties(suite, program, x, y)):
        for name, got, want in zip(names, party_result, expected, strict=True):
            assert got.shape == np.shape(want), name
            assert np.array_equal(got, want), name


@pytest.mark.parametrize("suite", SUITES)
def test_public_operand_of_higher_rank_broadcasts_the_secret(suite: str, rng: np.random.Generator) -> None:
    """x of shape (4,) against public (3, 4) operands: the result has shape (3, 4) as in numpy."""
    x = rng.normal(size=(4,))
    c = rng.normal(size=(3, 4))
    ints = rng.integers(-4, 5, size=(2, 3, 4))

    def program(ctx: Context, X: SharedTensor):
        return [t.reveal() for t in (X + c, c - X, X * c, X * ints, X + ints)]

    ex, ec = enc(x), enc(c)
    expected = [ex + ec, ec - ex, ex * ec, ex * ints, ex + ints]
    for party_result in outputs(suite, run_parties(suite, program, x)):
        for got, want in zip(party_result, expected, strict=True):
            assert got.shape == want.shape
            within_one_ulp(got, want)


@pytest.mark.parametrize("suite", SUITES)
def test_float_cannot_join_a_ring_integer_tensor(suite: str) -> None:
    def program(ctx: Context, X: SharedTensor):
        bit = X.msb()
        with pytest.raises(TypeError, match="ring integer"):
            bit + 0.5
        return (bit + 1).reveal()  # an int is fine: exact

    for got in outputs(suite, run_parties(suite, program, np.array([-1.0, 2.0]))):
        assert np.array_equal(got, [2.0, 1.0])


# ---------------------------------------------------------------------------------- products
@pytest.mark.parametrize("suite", SUITES)
def test_mul_square_and_public_mul(suite: str, rng: np.random.Generator) -> None:
    x = rng.normal(scale=8, size=(5, 6))
    y = rng.normal(scale=8, size=(5, 6))
    y[0, :3] = [0.0, ULP, -ULP]
    c = rng.normal(size=(6,))

    def program(ctx: Context, X: SharedTensor, Y: SharedTensor):
        return [t.reveal() for t in (X * Y, Y * X, X.square(), X * 0.3, 0.3 * X, X * c, X * Y[0])]

    ex, ey, ec = enc(x), enc(y), enc(c)
    expected = [ex * ey, ey * ex, ex * ex, ex * enc(0.3), ex * enc(0.3), ex * ec, ex * ey[0]]
    for party_result in outputs(suite, run_parties(suite, program, x, y)):
        for got, want in zip(party_result, expected, strict=True):
            assert got.shape == want.shape
            within_one_ulp(got, want)


@pytest.mark.parametrize("suite", SUITES)
def test_scalar_secrets(suite: str, rng: np.random.Generator) -> None:
    """0-d secrets (a sum over everything) keep their shape through products, truncation and reveal."""
    x = rng.normal(size=(3, 2))
    y = rng.normal(size=(2,))

    def program(ctx: Context, X: SharedTensor, Y: SharedTensor):
        total, other = X.sum(), Y.sum()
        return [t.reveal() for t in (total, total * other, total.square(), total * 0.5, X * total)]

    sx, sy = enc(x).sum(), enc(y).sum()
    expected = [sx, sx * sy, sx * sx, sx * 0.5, enc(x) * sx]
    for party_result in outputs(suite, run_parties(suite, program, x, y)):
        for got, want in zip(party_result, expected, strict=True):
            assert np.shape(got) == np.shape(want)
            within_one_ulp(got, want)


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize(
    ("x_shape", "y_shape"),
    [
        ((3, 4), (4, 5)),
        ((2, 3, 4), (4, 5)),
        ((2, 3, 4), (2, 4, 5)),
        ((1, 2, 3), (4, 3, 2)),
        ((2, 1100), (1100, 3)),
    ],
)
def test_matmul_fresh_operands(suite: str, x_shape: tuple, y_shape: tuple, rng: np.random.Generator) -> None:
    x = rng.normal(size=x_shape)
    y = rng.normal(size=y_shape) / 4

    def program(ctx: Context, X: SharedTensor, Y: SharedTensor):
        return (X @ Y).reveal()

    exact = enc(x) @ enc(y)
    for got in outputs(suite, run_parties(suite, program, x, y)):
        assert got.shape == exact.shape
        within_one_ulp(got, exact)


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize(("inner", "batch"), [(6, ()), (1100, ()), (8, (2, 3))])
def test_matmul_fixed_weight_reused(suite: str, inner: int, batch: tuple, rng: np.random.Generator) -> None:
    """A weight marked .fixed(key) is multiplied with four different activations (and a second weight in
    between, so the cached openings must be keyed correctly)."""
    w = rng.normal(size=(inner, 3)) / 4
    v = rng.normal(size=(3, 2))
    xs = [rng.normal(size=(*batch, 2, inner)) for _ in range(4)]

    def program(ctx: Context, W: SharedTensor, V: SharedTensor, *X: SharedTensor):
        outs = []
        for x in X:
            h = x @ W.fixed("layer.w")
            outs.append((h.reveal(), (h @ V.fixed("layer.v")).reveal()))
        return outs

    ew, ev = enc(w), enc(v)
    for party_result in outputs(suite, run_parties(suite, program, w, v, *xs)):
        for x, (h, out) in zip(xs, party_result, strict=True):
            within_one_ulp(h, enc(x) @ ew)
            within_one_ulp(out, h @ ev)


@pytest.mark.parametrize("suite", SUITES)
def test_matmul_with_public_matrices(suite: str, rng: np.random.Generator) -> None:
    x = rng.normal(size=(3, 4))
    a = rng.normal(size=(4, 2))
    b = rng.normal(size=(5, 3))
    ints = rng.integers(-3, 4, size=(4, 2))

    def program(ctx: Context, X: SharedTensor):
        return (X @ a).reveal(), (b @ X).reveal(), (X @ ints).reveal()

    ex = enc(x)
    for right, left, integer in outputs(suite, run_parties(suite, program, x)):
        within_one_ulp(right, ex @ enc(a))
        within_one_ulp(left, enc(b) @ ex)
        assert np.array_equal(integer, ex @ ints)


# ---------------------------------------------------------------------------------- truncation
@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize("bits", [1, 3, 16, 30])
def test_truncate_within_one_ulp(suite: str, bits: int, rng: np.random.Generator) -> None:
    x = np.concatenate([rng.normal(scale=1000, size=200), [0.0, ULP, -ULP, 1.0, -1.0, -1.5]])

    def program(ctx: Context, X: SharedTensor):
        return X.truncate(bits).reveal()

    for got in outputs(suite, run_parties(suite, program, x)):
        within_one_ulp(got, enc(x) / 2**bits)


# ---------------------------------------------------------------------------------- msb
@pytest.mark.parametrize("suite", SUITES)
def test_msb_near_zero_and_at_large_magnitudes(suite: str, rng: np.random.Generator) -> None:
    largest = np.nextafter(FP.max_abs, 0.0)
    x = np.concatenate(
        [
            [0.0, ULP, -ULP, 2 * ULP, -2 * ULP, 0.5, -0.5, 2.0**40, -(2.0**40), largest, -largest],
            rng.normal(scale=3, size=40),
        ]
    )

    def program(ctx: Context, X: SharedTensor):
        bit = X.msb()
        return bit.reveal(), (X * (1 - bit)).reveal()  # ReLU: a ring-integer factor is exact

    ex = enc(x)
    for sign, relu in outputs(suite, run_parties(suite, program, x)):
        assert np.array_equal(sign, (ex < 0).astype(np.float64))
        assert np.array_equal(relu, np.maximum(ex, 0.0))


@pytest.mark.parametrize("suite", SUITES)
def test_msb_on_ring_extremes(suite: str) -> None:
    values = [0, 1, MOD - 1, (1 << 63) - 1, 1 << 63, (1 << 63) + 1, 1 << 62, MOD - (1 << 62), 1 << 32]
    rng = np.random.default_rng(7)
    values += [int(v) for v in rng.integers(0, MOD, size=50, dtype=np.uint64)]
    secret = np.array(values, dtype=np.uint64)

    def program(ctx: Context, X: SharedTensor):
        return X.msb().reveal()

    expected = np.array([v >= 1 << 63 for v in values], dtype=np.float64)
    for got in outputs(suite, run_ring(suite, program, secret)):
        assert np.array_equal(got, expected)


# ---------------------------------------------------------------------------------- trig
#: Rounding cos(k delta), sin(k delta) and the dealt cos(k t), sin(k t) to 2^-(f+1) each gives at most
#: (|cos| + |sin|) 2^-(f+1) <= sqrt(2) 2^-(f+1) per pair of factors, two pairs, plus one truncation (< 1 ulp).
TRIG_BOUND = 2 * math.sqrt(2) * 2.0 ** -(FP.frac_bits + 1) + ULP + 1e-12


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize(
    ("period", "span"), [(16.0, 40.0), (2.0**10, 3000.0), (2.0**20, 2.0**21), (2.0**-4, 1.0)]
)
def test_trig_matches_cos_sin(suite: str, period: float, span: float, rng: np.random.Generator) -> None:
    """cos and sin of 2 pi k x / period for several harmonics, over several periods and both signs; the
    periods cover opened deltas on 4-byte (up to 2^32 ring units) and 8-byte wires."""
    harmonics = [1, 2, 3, 7]
    x = np.concatenate([rng.uniform(-span, span, size=300), [0.0, ULP, -ULP, period / 2, -period / 4]])

    def program(ctx: Context, X: SharedTensor):
        cos, sin = X.trig(period, harmonics)
        return [c.reveal() for c in cos], [s.reveal() for s in sin]

    angle = 2 * np.pi * enc(x) / period
    for cos, sin in outputs(suite, run_parties(suite, program, x)):
        for k, c, s in zip(harmonics, cos, sin, strict=True):
            assert np.max(np.abs(c - np.cos(k * angle))) <= TRIG_BOUND
            assert np.max(np.abs(s - np.sin(k * angle))) <= TRIG_BOUND


def test_trig_bound_is_not_loose() -> None:
    """The stated bound is within a factor of three of what is observed (it is a real bound, not a
    tolerance chosen large enough to pass)."""
    x = np.random.default_rng(5).uniform(-8, 8, size=4000)

    def program(ctx: Context, X: SharedTensor):
        cos, _ = X.trig(16.0, [1])
        return cos[0].reveal()

    got = run_parties("2pc", program, x)[0]
    err = np.max(np.abs(got - np.cos(2 * np.pi * enc(x) / 16.0)))
    assert TRIG_BOUND / 3 < err <= TRIG_BOUND


# ---------------------------------------------------------------------------------- composition
@pytest.mark.parametrize("suite", SUITES)
def test_small_layer_against_float64(suite: str, rng: np.random.Generator) -> None:
    """A linear layer with bias, ReLU by msb and a mean: errors add up as the per-op bounds say."""
    x = rng.normal(size=(4, 8))
    w = rng.normal(size=(8, 5)) / 3
    b = rng.normal(size=(5,))

    def program(ctx: Context, X: SharedTensor, W: SharedTensor, B: SharedTensor):
        h = X @ W.fixed("w") + B
        relu = h * (1 - h.msb())
        return relu.mean(axis=1).reveal()

    h = enc(x) @ enc(w) + enc(b)
    expected = np.maximum(h, 0).mean(axis=1)
    for got in outputs(suite, run_parties(suite, program, x, w, b)):
        # one ulp from the matmul (passed through ReLU) and one from the mean's product with 1/5
        mean_weight_error = abs(enc(0.2) - 0.2) * np.maximum(h, 0).sum(axis=1).max()
        assert np.max(np.abs(got - expected)) < 2 * ULP + mean_weight_error


@pytest.mark.parametrize("suite", ["2pc", "3pc"])
def test_trig_tables_dealt_in_chunks(suite: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With tables dealt 7 elements at a time (a partial last chunk), trig and the Fourier series still
    match float64 within the trig bound, and the opening stays one round."""
    from mpc_core.suites import twoparty

    monkeypatch.setattr(twoparty, "TABLE_CHUNK", 7)
    x = np.linspace(-30.0, 30.0, 50).reshape(5, 10)
    ks, a, b = [1, 3], [0.5, -0.25], [0.125, 1.0]

    def program(ctx, X):
        cos, sin = X.trig(64.0, ks)
        series = X.fourier(64.0, ks, a, b)
        return cos[1].reveal(), sin[0].reveal(), series.reveal()

    cos3, sin1, series = run_parties(suite, program, x)[0]
    angle = 2 * np.pi * x / 64.0
    assert np.max(np.abs(cos3 - np.cos(3 * angle))) < 4e-5
    assert np.max(np.abs(sin1 - np.sin(angle))) < 4e-5
    expected = sum(
        ai * np.cos(k * angle) + bi * np.sin(k * angle) for k, ai, bi in zip(ks, a, b, strict=True)
    )
    assert np.max(np.abs(series - expected)) < 1e-4
