"""Tests of the protocol suites: sharing and reconstruction, uniformity of shares and opened values,
communication against the analytical counts of the suite docstrings, and clear errors on bad input.

Every test runs under both suites ("2pc": 2-of-2 additive with a dealer; "3pc": replicated sharing).
Statistical tests use a p-value threshold of 1e-6 per statistic (about 110 statistics per run, so a false
alarm in roughly 1 of 10,000 runs); a negative control shows the same test rejects biased shares.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from mpc_core.context import Context
from mpc_core.prg import PRG, system_prg
from mpc_core.ring import FixedPoint
from mpc_core.runtime import make_context, run_parties
from mpc_core.suites import suite_class
from mpc_core.tensor import SharedTensor
from mpc_core.transport.base import ProtocolError, Transport, TransportClosed
from mpc_core.transport.inprocess import InProcessNetwork

SUITES = ["2pc", "3pc"]
MOD = 1 << 64
P_THRESHOLD = 1e-6
SAMPLES = 1 << 15
FP = FixedPoint()


# ---------------------------------------------------------------------------------- helpers
def compute_parties(suite: str) -> list[int]:
    return [0, 1] if suite == "2pc" else [0, 1, 2]


def chi2_sf(x: float, df: int) -> float:
    """Survival function of the chi-square distribution: Q(df/2, x/2), the regularised upper incomplete
    gamma function (series below a + 1, Lentz's continued fraction above; Numerical Recipes §6.2)."""
    a, z = df / 2.0, x / 2.0
    if z <= 0:
        return 1.0
    log_prefix = -z + a * math.log(z) - math.lgamma(a)
    if z < a + 1:
        term = total = 1.0 / a
        n = 1
        while abs(term) > abs(total) * 1e-16:
            term *= z / (a + n)
            total += term
            n += 1
        return max(0.0, 1.0 - total * math.exp(log_prefix))
    tiny = 1e-300
    b = z + 1 - a
    c, d = 1 / tiny, 1 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = d if abs(d) > tiny else tiny
        c = b + an / c
        c = c if abs(c) > tiny else tiny
        d = 1 / d
        h *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    return math.exp(log_prefix) * h


def uniformity_p_values(values: np.ndarray) -> dict[str, float]:
    """p-values of two tests that uniform Z_2^64 elements pass: the top byte over its 256 values (chi-square,
    255 degrees of freedom) and the frequency of ones at each of the 64 bit positions (independent for a
    uniform element, so the 64 squared z-scores sum to a chi-square with 64 degrees of freedom)."""
    v = np.asarray(values, dtype=np.uint64).ravel()
    n = v.size
    top = np.bincount((v >> np.uint64(56)).astype(np.int64), minlength=256)
    chi_top = float(((top - n / 256) ** 2).sum() / (n / 256))
    ones = np.array([((v >> np.uint64(b)) & np.uint64(1)).sum() for b in range(64)], dtype=np.float64)
    chi_bits = float((((ones - n / 2) ** 2) / (n / 4)).sum())
    return {"top byte": chi2_sf(chi_top, 255), "bit frequencies": chi2_sf(chi_bits, 64)}


def assert_uniform(values: np.ndarray, what: str) -> None:
    for test, p in uniformity_p_values(values).items():
        assert p > P_THRESHOLD, f"{what}: {test} chi-square p = {p:.2e}"


class RecordingTransport(Transport):
    """Wraps a participant's transport and keeps a copy of every message it sends and receives."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.participant = inner.participant
        self.sent: list[np.ndarray] = []
        self.received: dict[int, list[np.ndarray]] = {}

    def send(self, to: int, tag: str, payload: np.ndarray) -> None:
        self.sent.append(np.array(payload, copy=True))
        self.inner.send(to, tag, payload)

    def recv(self, frm: int, tag: str) -> np.ndarray:
        payload = self.inner.recv(frm, tag)
        self.received.setdefault(frm, []).append(payload.copy())
        return payload

    def close(self) -> None:
        self.inner.close()


def recording(ctx: Context) -> RecordingTransport:
    """Install a recorder on this participant's context (after setup) and return it."""
    recorder = RecordingTransport(ctx.transport)
    ctx.transport = recorder
    return recorder


# ---------------------------------------------------------------------------------- the statistics themselves
def test_chi2_sf_matches_closed_forms() -> None:
    for x in (0.5, 3.0, 20.0, 80.0):
        assert chi2_sf(x, 2) == pytest.approx(math.exp(-x / 2), rel=1e-9)
        assert chi2_sf(x, 1) == pytest.approx(math.erfc(math.sqrt(x / 2)), rel=1e-9)
    assert chi2_sf(293.2478, 255) == pytest.approx(0.05, abs=1e-4)  # chi2.ppf(0.95, 255)
    assert chi2_sf(255.0, 255) == pytest.approx(0.49, abs=0.01)


def test_uniformity_test_rejects_biased_shares() -> None:
    """Negative controls: the test must fail on shares that leak, or it would prove nothing."""
    prg = PRG(bytes(16))
    secret = np.full(SAMPLES, 12345 << 16, dtype=np.uint64)
    good = secret - prg.ring(SAMPLES)
    assert min(uniformity_p_values(good).values()) > P_THRESHOLD
    # a 63-bit mask (a classic bug): the top bit of the share follows the secret
    short_mask = secret - (prg.ring(SAMPLES) >> np.uint64(1))
    assert min(uniformity_p_values(short_mask).values()) < P_THRESHOLD
    # 2% of the sharings reuse the secret as the mask (share = 0)
    leaky = good.copy()
    leaky[: SAMPLES // 50] = 0
    assert uniformity_p_values(leaky)["top byte"] < P_THRESHOLD
    # a mask whose bit 20 is biased to 55% ones (a PRG defect no other statistic here would see)
    biased_bit = prg.ring(SAMPLES) & ~np.uint64(1 << 20)
    biased_bit |= (np.random.default_rng(1).random(SAMPLES) < 0.55).astype(np.uint64) << np.uint64(20)
    assert uniformity_p_values(biased_bit)["bit frequencies"] < P_THRESHOLD


# ---------------------------------------------------------------------------------- sharing
@pytest.mark.parametrize("suite", SUITES)
def test_split_combine_round_trip(suite: str) -> None:
    cls = suite_class(suite)
    rng = np.random.default_rng(3)
    secret = rng.integers(0, MOD, size=(4, 5, 3), dtype=np.uint64)
    shares = cls.split(secret, system_prg())
    assert len(shares) == len(compute_parties(suite))
    assert all(s.shape == (cls.slots, 4, 5, 3) and s.dtype == np.uint64 for s in shares)
    assert np.array_equal(cls.combine(shares), secret)
    # no single share equals the secret (each is masked)
    assert not any(np.array_equal(s[0], secret) for s in shares)


@pytest.mark.parametrize("suite", SUITES)
def test_split_shares_of_a_fixed_secret_are_uniform(suite: str) -> None:
    cls = suite_class(suite)
    secret = np.full(SAMPLES, (-7 << 16) % MOD, dtype=np.uint64)
    shares = cls.split(secret, system_prg())
    for party, share in enumerate(shares):
        for slot in range(cls.slots):
            assert_uniform(share[slot], f"{suite} share of P{party}, slot {slot}")
    if suite == "3pc":  # what one party can add up from its two slots is uniform too
        assert_uniform(shares[0][0] + shares[0][1], "3pc x0 + x1 at P0")


@pytest.mark.parametrize(("suite", "owner"), [("2pc", 0), ("2pc", 1), ("3pc", 0), ("3pc", 1), ("3pc", 2)])
def test_input_reveal_round_trip_and_uniform(suite: str, owner: int) -> None:
    """SharedTensor.input by a compute party: every party's share is uniform, the reveal is exact."""
    value = np.full(SAMPLES, -1.25)

    def program(ctx: Context) -> tuple[np.ndarray, np.ndarray]:
        x = SharedTensor.input(ctx, value if ctx.participant == owner else None, value.shape, owner)
        return x.data.copy(), x.reveal()

    results = run_parties(suite, program)
    for party in compute_parties(suite):
        share, opened = results[party]
        assert np.array_equal(opened, value)
        for slot in range(share.shape[0]):
            assert_uniform(share[slot], f"{suite} input share of P{party}, slot {slot}")
    shares = [results[p][0] for p in compute_parties(suite)]
    assert np.array_equal(suite_class(suite).combine(shares), FP.encode(value))


@pytest.mark.parametrize("suite", SUITES)
def test_reveal_with_and_without_check(suite: str) -> None:
    x = np.linspace(-300.0, 300.0, 37).reshape(37, 1)
    res = run_parties(suite, lambda ctx, X: (X.reveal(), X.reveal(check=False)), x)
    for p in compute_parties(suite):
        assert np.array_equal(res[p][0], FP.decode(FP.encode(x)))
        assert np.array_equal(res[p][1], FP.decode(FP.encode(x)))
    if suite == "2pc":
        assert not res[2][0].any()  # the dealer learns nothing: it gets zeros


@pytest.mark.parametrize("suite", SUITES)
def test_product_output_shares_and_openings_are_uniform(suite: str) -> None:
    """For a fixed secret, the shares after a product and every value a party receives while computing it
    (its peer's summands of E = x - a and F = y - b and the dealer's correction in 2pc, the reshared z in
    3pc) are uniform; so are the opened E and F themselves."""
    x = np.full(SAMPLES, 3.0)
    y = np.full(SAMPLES, -2.0)

    def program(ctx: Context, X: SharedTensor, Y: SharedTensor):
        recorder = recording(ctx)
        z = ctx.suite.mul(X.data, Y.data)
        return z, recorder.sent, recorder.received

    results = run_parties(suite, program, x, y)
    for party in compute_parties(suite):
        z, _, received = results[party]
        for slot in range(z.shape[0]):
            assert_uniform(z[slot], f"{suite} product share of P{party}, slot {slot}")
        for frm, messages in received.items():
            for i, message in enumerate(messages):
                for part in np.split(message.ravel(), message.size // SAMPLES):
                    assert_uniform(part, f"{suite} message {i} from P{frm} to P{party}")
    if suite == "2pc":
        opened = results[0][1][0] + results[0][2][1][0]  # P0's summands plus P1's: E and F in the clear
        for name, part in zip("EF", np.split(opened, 2), strict=True):
            assert_uniform(part, f"opened {name}")


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize("period_bits", [20, 32, 40])
def test_trig_opened_delta_is_uniform_over_the_period(suite: str, period_bits: int) -> None:
    """delta = (x + t) mod 2^period for a fixed x must be uniform over the period (perfect masking):
    checked on the opened delta itself (P0's summand plus P1's), top 8 bits of the period."""
    x = np.full(SAMPLES, 1.5)
    period = 2.0 ** (period_bits - FP.frac_bits)

    def program(ctx: Context, X: SharedTensor):
        recorder = recording(ctx)
        X.trig(period, [1, 3])
        return recorder.sent, recorder.received

    results = run_parties(suite, program, x)
    mask = np.uint64((1 << period_bits) - 1)
    mine = results[0][0][0].astype(np.uint64)  # P0's first message: its summand of delta, to P1
    theirs = results[0][1][1][0].astype(np.uint64)
    assert mine.dtype == theirs.dtype and mine.shape == x.shape
    delta = (mine + theirs) & mask
    assert np.array_equal(delta, (results[1][0][0].astype(np.uint64) + mine) & mask)  # P1 sees the same delta
    top = (delta >> np.uint64(period_bits - 8)).astype(np.int64)
    counts = np.bincount(top, minlength=256)
    chi = float(((counts - SAMPLES / 256) ** 2).sum() / (SAMPLES / 256))
    assert chi2_sf(chi, 255) > P_THRESHOLD
    if suite == "2pc":
        assert not results[2][1]  # the dealer receives nothing at all


# ---------------------------------------------------------------------------------- communication
def op_stats(ctx: Context, name: str) -> tuple[int, int]:
    stats = ctx.stats.by_op[name]
    return stats.bytes_sent, stats.rounds


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize("mode", ["probabilistic", "exact"])
def test_matmul_communication(suite: str, mode: str) -> None:
    """2pc: each party opens E = X - A and F = Y - B (8 (|X| + |Y|) bytes, one round); the dealer sends
    P1's correction of C = A B (8 |Z| bytes, offline).  3pc: one reshare, 8 |Z| bytes per party.
    Truncation, probabilistic: local in 2pc; ABY3 trunc1 in 3pc (P0 sends 8 |Z| to P2).  Exact: the two
    parties swap one packed bit per element (one round) and the generator deals shares of a b (8 |Z|);
    in 3pc P0 and P1 then send 8 |Z| each to P2 (one more round) to return to replicated shares."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(3, 5)), rng.normal(size=(5, 4))

    def program(ctx: Context, X: SharedTensor, Y: SharedTensor):
        with ctx.op("product"):
            raw = ctx.suite.matmul(X.data, Y.data)
        with ctx.op("truncate"):
            ctx.suite.truncate(raw, FP.frac_bits)
        return op_stats(ctx, "product"), op_stats(ctx, "truncate")

    res = run_parties(suite, program, x, y, fp=FixedPoint(truncation=mode))
    nx, ny, nz = x.size, y.size, 3 * 4
    bits = -(-nz // 8)
    if suite == "2pc":
        assert res[0][0] == res[1][0] == (8 * (nx + ny), 1)
        assert res[2][0] == (8 * nz, 0)
        if mode == "probabilistic":
            assert all(r[1] == (0, 0) for r in res)  # truncation is local
        else:
            assert res[0][1] == res[1][1] == (bits, 1)
            assert res[2][1] == (8 * nz, 0)
    else:
        assert all(r[0] == (8 * nz, 1) for r in res)
        if mode == "probabilistic":
            # ABY3 trunc1: P0 sends a - r to P2, one element per output; nobody else sends
            assert [r[1] for r in res] == [(8 * nz, 1), (0, 1), (0, 1)]
        else:
            assert [r[1] for r in res] == [(bits + 8 * nz, 2), (bits + 8 * nz, 2), (8 * nz, 1)]


@pytest.mark.parametrize("suite", SUITES)
def test_fixed_weight_opens_its_mask_once(suite: str) -> None:
    """With .fixed(key), 2pc opens F = W - B on the first call only; later calls open only E (8 |X|)."""
    rng = np.random.default_rng(1)
    w = rng.normal(size=(6, 2))
    xs = [rng.normal(size=(4, 6)) for _ in range(3)]

    def program(ctx: Context, W: SharedTensor, *X: SharedTensor):
        stats, outs = [], []
        for i, x in enumerate(X):
            with ctx.op(f"call{i}"):
                outs.append(x @ W.fixed("w"))
            stats.append(op_stats(ctx, f"call{i}"))
        return stats, [o.reveal() for o in outs]

    res = run_parties(suite, program, w, *xs, fp=FixedPoint(truncation="probabilistic"))
    nx, nw, nz = 4 * 6, w.size, 4 * 2
    if suite == "2pc":
        for p in (0, 1):
            assert res[p][0] == [(8 * (nw + nx), 2), (8 * nx, 1), (8 * nx, 1)]
        assert res[2][0] == [(8 * nz, 0)] * 3
    else:
        assert [r[0] for r in res] == [[(16 * nz, 2)] * 3, [(8 * nz, 2)] * 3, [(8 * nz, 2)] * 3]
    for p in compute_parties(suite):
        for x, out in zip(xs, res[p][1], strict=True):
            exact = FP.decode(FP.encode(x)) @ FP.decode(FP.encode(w))
            assert np.max(np.abs(out - exact)) < 2.0**-16


@pytest.mark.parametrize("suite", SUITES)
def test_elementwise_product_communication(suite: str) -> None:
    x = np.arange(12.0).reshape(3, 4) / 7

    def program(ctx: Context, X: SharedTensor, Y: SharedTensor):
        with ctx.op("mul"):
            ctx.suite.mul(X.data, Y.data)
        with ctx.op("square"):
            ctx.suite.square(X.data)
        return op_stats(ctx, "mul"), op_stats(ctx, "square")

    res = run_parties(suite, program, x, -x)
    n = x.size
    if suite == "2pc":
        assert res[0] == res[1] == ((16 * n, 1), (8 * n, 1))  # square opens only E = x - a
        assert res[2] == ((8 * n, 0), (8 * n, 0))
    else:
        assert all(r == ((8 * n, 1), (8 * n, 1)) for r in res)


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize("period_bits", [24, 32, 36])
def test_trig_communication(suite: str, period_bits: int) -> None:
    """One round opens delta: 4 bytes per element when the period is at most 2^32 ring units, else 8.
    The generator deals shares of cos(k t), sin(k t): 16 K bytes per element for K harmonics.  In 3pc the
    results return to replicated form with one more round (8 bytes per output from P0 and from P1)."""
    x = np.linspace(-1.0, 1.0, 10)
    harmonics = [1, 2, 5]
    k = len(harmonics)

    def program(ctx: Context, X: SharedTensor):
        with ctx.op("trig"):
            X.trig(2.0 ** (period_bits - FP.frac_bits), harmonics)
        return op_stats(ctx, "trig")

    res = run_parties(suite, program, x, fp=FixedPoint(truncation="probabilistic"))
    n, wire = x.size, (4 if period_bits <= 32 else 8)
    if suite == "2pc":
        assert res[0] == res[1] == (wire * n, 1)
        assert res[2] == (16 * k * n, 0)
    else:
        assert res[0] == res[1] == (wire * n + 16 * k * n, 2)
        assert res[2] == (16 * k * n, 1)


def carry_tree_ands(bits: int = 63) -> list[int]:
    """AND gates per element in each round of the carry tree: the g_i, then two per merge of adjacent
    blocks (one for the final merge, whose propagate is not needed)."""
    rounds, blocks = [bits], bits
    while blocks > 1:
        pairs = blocks // 2
        rounds.append(1 if blocks == 2 else 2 * pairs)
        blocks = pairs + blocks % 2
    return rounds


@pytest.mark.parametrize("suite", SUITES)
def test_msb_communication(suite: str) -> None:
    """Carry tree on packed bits: 63 ANDs for the g_i, then six levels of merges; each AND opens two bits
    per party (packed eight to a byte) and the dealer sends one bit of c per AND; then one bit conversion
    (one byte per element each way, 8 bytes from the dealer).  3pc adds the conversion back to replicated
    shares (8 bytes per element from P0 and from P1 to P2)."""
    x = np.linspace(-5.0, 5.0, 9)

    def program(ctx: Context, X: SharedTensor):
        with ctx.op("msb"):
            X.msb()
        return op_stats(ctx, "msb")

    res = run_parties(suite, program, x)
    n, levels = x.size, carry_tree_ands()
    assert levels == [63, 62, 32, 16, 8, 4, 1]
    party_bytes = sum(-(-2 * k * n // 8) for k in levels) + n
    dealer_bytes = sum(-(-k * n // 8) for k in levels) + 8 * n
    if suite == "2pc":
        assert res[0] == res[1] == (party_bytes, 8)
        assert res[2] == (dealer_bytes, 0)
    else:
        assert res[0] == res[1] == (party_bytes + 8 * n, 9)
        assert res[2] == (dealer_bytes, 1)


@pytest.mark.parametrize("suite", SUITES)
def test_windowed_msb_is_the_sign_within_its_bound(suite: str) -> None:
    """msb(bound, resolution): [x < 0] for |x| < bound, except that x in [0, resolution) may read 1.

    Raw values right at the window's edges (one ulp inside the bound, just below and above the resolution,
    zero, -1 ulp) plus random ones; exact msb of the same tensor for comparison.
    """
    bound, resolution = 240.0, 2.0**-6
    ulp = 2.0**-16
    edges = [239.99, -239.99, resolution, resolution - ulp, ulp, 0.0, -ulp, -resolution, 1.0, -1.0]
    x = np.concatenate([edges, np.random.default_rng(3).uniform(-bound, bound, 500)])

    def program(ctx: Context, X: SharedTensor):
        return X.msb(bound, resolution).reveal(), X.msb().reveal()

    windowed, exact = run_parties(suite, program, x)[0]
    xe = np.round(x * 2**16) / 2**16
    np.testing.assert_array_equal(exact, (xe < 0).astype(float))
    ambiguous = (xe >= 0) & (xe < resolution)
    np.testing.assert_array_equal(windowed[~ambiguous], (xe[~ambiguous] < 0).astype(float))
    assert set(np.unique(windowed[ambiguous])) <= {0.0, 1.0}


def test_windowed_msb_costs_fewer_bits() -> None:
    """Window (10, 24) for bound 240 and resolution 2^-6: 14 carry bits; 14 ANDs for the g_i, then merges
    14 -> 7 -> 4 -> 2 -> 1 (two ANDs per pair, one for the last): 5 AND rounds and the conversion."""
    x = np.linspace(-5.0, 5.0, 64)

    def program(ctx: Context, X: SharedTensor):
        with ctx.op("msb"):
            X.msb(240.0, 2.0**-6)
        return op_stats(ctx, "msb")

    res = run_parties("2pc", program, x)
    levels = [14, 14, 6, 4, 1]
    assert res[0] == (sum(-(-2 * k * x.size // 8) for k in levels) + x.size, 6)
    with pytest.raises(ValueError, match="does not fit"):
        run_parties("2pc", lambda ctx, X: X.msb(2.0**50), x)


@pytest.mark.parametrize("suite", SUITES)
def test_input_and_reveal_communication(suite: str) -> None:
    value = np.ones((2, 5))

    def program(ctx: Context):
        with ctx.op("input"):
            x = SharedTensor.input(ctx, value if ctx.participant == 1 else None, value.shape, owner=1)
        with ctx.op("reveal"):
            x.reveal()
        with ctx.op("reveal unchecked"):
            x.reveal(check=False)
        return [op_stats(ctx, name) for name in ("input", "reveal", "reveal unchecked")]

    res = run_parties(suite, program)
    n = value.size
    if suite == "2pc":  # input costs nothing: the owner masks with the PRG it shares with the other party
        assert res[0] == res[1] == [(0, 0), (8 * n, 1), (8 * n, 1)]
        assert res[2] == [(0, 0)] * 3
    else:  # the owner sends both slots to both others; a checked reveal sends the missing share twice
        assert res[1][0] == (2 * 16 * n, 1)
        assert res[0][0] == res[2][0] == (0, 1)
        assert all(r[1:] == [(16 * n, 1), (8 * n, 1)] for r in res)


# ---------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize("operation", ["reveal", "mul", "matmul"])
def test_mismatched_shapes_between_parties_raise(suite: str, operation: str) -> None:
    def program(ctx: Context):
        shape = (3, 2) if ctx.participant == 0 else (4, 2)
        x = SharedTensor.from_share(
            ctx, None if ctx.is_dealer else np.zeros((ctx.suite.slots, *shape), dtype=np.uint64), shape
        )
        if operation == "mul":
            x = x * x
        elif operation == "matmul":
            x = x @ x.T
        return x.reveal()

    with pytest.raises(ProtocolError, match="expected"):
        run_parties(suite, program, timeout_s=5.0)


def run_contexts(
    suites: list[str],
    program: Callable[[Context], Any],
    fp: list[FixedPoint] | None = None,
    timeout_s: float = 2.0,
) -> list[Any]:
    """Each participant builds its own Context by hand (as a server process would) over one network."""
    network = InProcessNetwork(3, timeout_s=timeout_s)
    outcome: list[Any] = [None] * 3

    def body(participant: int) -> None:
        try:
            ctx = make_context(
                participant,
                suites[participant],
                network.transport(participant),
                (fp or [FP] * 3)[participant],
            )
            ctx.setup()
            outcome[participant] = program(ctx)
        except Exception as exc:  # collected for the assertions
            outcome[participant] = exc
            network.close()

    threads = [threading.Thread(target=body, args=(p,), daemon=True) for p in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10 * timeout_s)
    assert not any(t.is_alive() for t in threads), "a participant hung"
    return outcome


@pytest.mark.parametrize(
    "suites", [["2pc", "3pc", "3pc"], ["3pc", "2pc", "2pc"], ["2pc", "2pc", "3pc"], ["3pc", "3pc", "2pc"]]
)
def test_mismatched_suites_fail_fast_everywhere(suites: list[str]) -> None:
    """A participant configured with another suite must make every participant fail with a protocol error
    (or an abort caused by it), never hang and never hand out a result."""
    value = np.arange(6.0)

    def program(ctx: Context):
        x = SharedTensor.input(ctx, value if ctx.participant == 0 else None, value.shape, 0)
        return (x * x).reveal()

    outcome = run_contexts(suites, program)
    assert all(isinstance(o, ProtocolError | TransportClosed) for o in outcome), outcome
    assert any(isinstance(o, ProtocolError) for o in outcome)


def test_mismatched_fixed_point_parameters_fail() -> None:
    value = np.arange(6.0)

    def program(ctx: Context):
        x = SharedTensor.input(ctx, value if ctx.participant == 0 else None, value.shape, 0)
        return x.reveal()

    outcome = run_contexts(["3pc"] * 3, program, fp=[FP, FP, FixedPoint(20)])
    assert all(isinstance(o, ProtocolError | TransportClosed) for o in outcome), outcome
    assert any(isinstance(o, ProtocolError) for o in outcome)


def test_3pc_reveal_detects_disagreeing_copies() -> None:
    """P1 tampers with its copy of x1 (also held by P0): P2 receives two different x1 and must refuse."""
    x = np.arange(5.0)

    def program(ctx: Context, X: SharedTensor):
        if ctx.participant == 1:
            X.data[0] += np.uint64(1)
        return X.reveal()

    with pytest.raises(ProtocolError, match="disagree"):
        run_parties("3pc", program, x, timeout_s=5.0)
    # unchecked reveal does not compare (and so cannot notice): that is what check=False means
    res = run_parties("3pc", lambda ctx, X: X.reveal(check=False), x)
    assert np.array_equal(res[0], x)


def test_3pc_combine_rejects_inconsistent_shares() -> None:
    cls = suite_class("3pc")
    secret = np.arange(6, dtype=np.uint64)
    shares = cls.split(secret, system_prg())
    tampered = [s.copy() for s in shares]
    tampered[2][1, 3] += np.uint64(1)  # P2's copy of x0 no longer matches P0's
    with pytest.raises(ProtocolError, match="inconsistent"):
        cls.combine(tampered)
    with pytest.raises(ProtocolError, match="two-slot"):
        cls.combine(shares[:2])
    with pytest.raises(ProtocolError, match="shape"):
        cls.combine([shares[0], shares[1], shares[2][:, :3]])


def test_2pc_combine_rejects_malformed_shares() -> None:
    cls = suite_class("2pc")
    shares = cls.split(np.arange(6, dtype=np.uint64), system_prg())
    with pytest.raises(ProtocolError, match="single-slot"):
        cls.combine(shares[:1])
    with pytest.raises(ProtocolError, match="shape"):
        cls.combine([shares[0], shares[1][:, :3]])


@pytest.mark.parametrize("suite", SUITES)
def test_local_misuse_raises_value_errors(suite: str) -> None:
    def program(ctx: Context, X: SharedTensor, W: SharedTensor):
        errors = []
        checks = [
            lambda: SharedTensor.from_share(ctx, np.zeros((5, 2), dtype=np.int64), (2,)),
            lambda: X.trig(3.0, [1]),
        ]
        if not ctx.is_dealer:
            checks.append(lambda: SharedTensor.input(ctx, np.zeros(3), (4,), owner=ctx.participant))
        for check in checks:
            try:
                check()
            except ValueError as exc:
                errors.append(str(exc))
        X @ W.fixed("w")
        try:
            X[:, :2] @ W[:2].fixed("w")  # the same key with another shape
        except ValueError as exc:
            errors.append(str(exc))
        return errors

    rng = np.random.default_rng(2)
    res = run_parties(suite, program, rng.normal(size=(2, 3)), rng.normal(size=(3, 2)), timeout_s=5.0)
    for p in compute_parties(suite):
        assert len(res[p]) == 4, res[p]
        assert any("registered" in e for e in res[p])


@pytest.mark.parametrize(("suite", "owner"), [("2pc", 2), ("2pc", 3), ("3pc", 3), ("3pc", -1)])
def test_input_from_a_participant_without_data_raises(suite: str, owner: int) -> None:
    """The 2pc dealer holds no data: an input 'from' it would silently be garbage, so it must be refused."""

    def program(ctx: Context):
        return SharedTensor.input(ctx, np.zeros(3) if ctx.participant == owner else None, (3,), owner)

    with pytest.raises(ValueError, match="inputs come from"):
        run_parties(suite, program, timeout_s=5.0)


def test_unknown_suite_name() -> None:
    with pytest.raises(ValueError, match="unknown suite"):
        suite_class("4pc")


# ---------------------------------------------------------------------------------- facts and messages
@pytest.mark.parametrize("suite", SUITES)
def test_suite_facts_agree_with_its_shares(suite: str) -> None:
    """The facts processes read without building a suite match what the suite's split produces."""
    cls = suite_class(suite)
    shares = cls.split(np.arange(6, dtype=np.uint64).reshape(2, 3), system_prg())
    assert len(shares) == len(cls.compute_parties)
    assert all(s.shape == (cls.slots, 2, 3) for s in shares)
    assert cls.share_bytes(6) == shares[0].nbytes
    roles = [cls.role(p) for p in range(cls.participants)]
    assert [p for p, r in enumerate(roles) if r == "party"] == list(cls.compute_parties)
    assert [p for p, r in enumerate(roles) if r == "dealer"] == ([] if cls.dealer is None else [cls.dealer])
    with pytest.raises(ValueError, match="participants"):
        cls.role(cls.participants)


def test_context_without_a_suite_refuses() -> None:
    ctx = Context(0, InProcessNetwork(3).transport(0), FP)
    with pytest.raises(RuntimeError, match="no suite"):
        ctx.suite  # noqa: B018 - the access is the test
    ctx.attach(suite_class("2pc")(ctx))
    with pytest.raises(RuntimeError, match="already"):
        ctx.attach(suite_class("2pc")(ctx))


def test_rotate_batches_arrays_into_one_message_per_party() -> None:
    """rotate: each participant gets its next neighbour's arrays (shapes kept) in one round, one message."""

    def program(ctx: Context):
        me = ctx.participant
        mine = [np.full((2, 3), me, dtype=np.uint64), np.arange(4, dtype=np.uint64) + 10 * me]
        before = ctx.stats.total.as_dict()
        got = ctx.rotate(mine, "test")
        after = ctx.stats.total.as_dict()
        return got, after["rounds"] - before["rounds"], after["messages"] - before["messages"]

    outcome = run_contexts(["3pc"] * 3, program)
    for me, (got, rounds, messages) in enumerate(outcome):
        nxt = (me + 1) % 3
        assert got[0].shape == (2, 3) and np.all(got[0] == nxt)
        assert np.array_equal(got[1], np.arange(4) + 10 * nxt)
        assert (rounds, messages) == (1, 1)


def test_labels_name_a_divergence_at_the_first_message() -> None:
    """Two parties that open different things fail with a tag naming both openings."""

    def program(ctx: Context):
        if ctx.participant == 2:
            return None
        label = "open(x-a)" if ctx.participant == 0 else "open(x+t)"
        return ctx.swap(1 - ctx.participant, [np.zeros(3, dtype=np.uint64)], label)

    outcome = run_contexts(["2pc"] * 3, program)
    errors = [o for o in outcome[:2] if isinstance(o, ProtocolError)]
    assert errors, outcome
    assert all("open(x-a)" in str(e) and "open(x+t)" in str(e) for e in errors)


class CountingCorrelations:
    """Wraps a participant's correlations and records which correlation each call asked for."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.calls: list[tuple[str, bool]] = []

    def __getattr__(self, name: str):
        method = getattr(self.inner, name)

        def call(*args, **kwargs):
            out = method(*args, **kwargs)
            fresh_mask = name == "fixed_matmul_triple" and out is not None and out.b is not None
            self.calls.append((name, fresh_mask))
            return out

        return call


@pytest.mark.parametrize("suite", SUITES)
def test_every_participant_asks_for_the_same_correlations(suite: str) -> None:
    """The online protocol and the dealer's side ask the correlations seam for the same catalogue entries
    in the same order; a fixed operand's mask is dealt with its first product only."""
    rng = np.random.default_rng(4)
    x, w = rng.normal(size=(2, 3)), rng.normal(size=(3, 4))

    def program(ctx: Context, X: SharedTensor, W: SharedTensor):
        core = ctx.suite.core
        core.corr = counting = CountingCorrelations(core.corr)
        X * X
        X.square()
        X @ W.fixed("w")
        X @ W.fixed("w")
        X.msb()
        X.trig(2.0**6, [1, 2])
        return counting.calls

    calls = run_parties(suite, program, x, w)
    names = [[name for name, _ in c] for c in calls]
    assert names[0] == names[1] == names[2]
    assert {"trunc_pair", "and_triple", "bit_pair", "trig_pair"} <= set(names[0])
    if suite == "3pc":  # products are local plus a reshare: only the 2-of-2 kernels use correlations
        assert not {"mul_triple", "square_pair", "fixed_matmul_triple"} & set(names[0])
        return
    assert names[0][:4] == ["mul_triple", "trunc_pair", "square_pair", "trunc_pair"]
    assert names[0].count("fixed_matmul_triple") == 2
    for p in (0, 1):  # the parties get the weight's mask share once
        assert [fresh for name, fresh in calls[p] if name == "fixed_matmul_triple"] == [True, False]
