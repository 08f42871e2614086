"""Leakage checks: what a server receives during a real secure computation does not depend on the secret.

Issue #4, item 3 (first part).  tests/test_suites.py already shows that shares and opened values of ONE
fixed secret look uniform; here the question is the one the threat model asks: can a server tell TWO
secrets apart from its view?  The same workload (product and truncation, ReLU via msb, exp, reciprocal,
rsqrt, log, GELU via trig, softmax: every protocol family a tuning forward pass uses) runs twice through
the in-process transport, once with every element of the secret equal to ``A`` and once equal to ``B``,
and each participant's view is recorded: its own input share, every message it receives (split into
per-element parts), every opened value (what it sent plus what it received on the same step) and every
received message plus its own share (what a "debug echo" of a peer's share would give away).  Any
function of a view must have the same distribution for both secrets (simulation-based security), so for
each such sample the test runs

* a two-sample Kolmogorov-Smirnov test on the values read as signed integers of their width, and
* two-sample chi-square tests of homogeneity on the top byte and on the low byte (256 bins each).

Significance: family-wise ``ALPHA`` = 1e-3 with Bonferroni over all statistics of one run, so an honest
run fails about once in a thousand runs.  Power: with n samples per side the KS test at the per-statistic
level rejects any CDF difference above c sqrt(2/n) (reported as ``detectable_ks``).  Two deliberately
leaky controls run through the SAME check and must be caught, so the check can fail: a PRG that draws
24-bit masks instead of uniform ring elements, and a compute party that echoes its input share to a peer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
from security_report import record, scale
from test_suites import RecordingTransport, chi2_sf

from mpc_core import functions as fn
from mpc_core.context import Context
from mpc_core.prg import PRG
from mpc_core.runtime import run_parties
from mpc_core.tensor import SharedTensor

pytestmark = pytest.mark.security

ALPHA = 1e-3
SECRETS = (0.75, -3.5)  # different signs (msb), magnitudes and octaves (reciprocal, rsqrt, log)
ROW = 4  # softmax row length


# ---------------------------------------------------------------------------------- statistics
def ks_p_value(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(D, p) of the two-sample Kolmogorov-Smirnov test, asymptotic distribution (Numerical Recipes
    14.3.3 with Stephens' small-sample correction); ties handled exactly by evaluating both empirical CDFs
    at every distinct value.  For discrete data the p-value is conservative."""
    a, b = np.sort(a), np.sort(b)
    grid = np.union1d(a, b)
    cdf_a = np.searchsorted(a, grid, side="right") / a.size
    cdf_b = np.searchsorted(b, grid, side="right") / b.size
    d = float(np.max(np.abs(cdf_a - cdf_b)))
    ne = math.sqrt(a.size * b.size / (a.size + b.size))
    lam = (ne + 0.12 + 0.11 / ne) * d
    if lam < 0.2:
        return d, 1.0
    total = sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
    return d, float(min(1.0, max(0.0, 2 * total)))


def homogeneity_p_value(a: np.ndarray, b: np.ndarray, bins: int = 256) -> float:
    """Chi-square test that two samples of small integers (0..bins-1) come from one distribution."""
    ca = np.bincount(a, minlength=bins).astype(np.float64)
    cb = np.bincount(b, minlength=bins).astype(np.float64)
    used = (ca + cb) > 0
    if used.sum() < 2:
        return 1.0
    ra, rb = math.sqrt(b.size / a.size), math.sqrt(a.size / b.size)
    stat = float((((ca * ra - cb * rb) ** 2)[used] / (ca + cb)[used]).sum())
    return chi2_sf(stat, int(used.sum()) - 1)


def signed_view(values: np.ndarray) -> np.ndarray:
    """Ring elements of any unsigned width as signed integers (as float64, for the KS test)."""
    v = np.asarray(values).ravel()
    signed = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}[v.dtype.itemsize]
    return v.view(signed).astype(np.float64)


def byte_views(values: np.ndarray) -> dict[str, np.ndarray]:
    v = np.asarray(values).ravel()
    width = 8 * v.dtype.itemsize
    return {
        "top byte": ((v >> v.dtype.type(width - 8)) & v.dtype.type(0xFF)).astype(np.int64),
        "low byte": (v & v.dtype.type(0xFF)).astype(np.int64),
    }


@dataclass
class Comparison:
    """Every statistic of one run: (participant, sample name, test) -> (p-value, KS D or None), and the KS
    distances of the samples with one value per secret element (the largest samples, ``samples`` each)."""

    samples: int
    results: dict[tuple[int, str, str], tuple[float, float | None]] = field(default_factory=dict)
    full_size_ks: list[float] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.results)

    @property
    def threshold(self) -> float:
        return ALPHA / max(1, self.count)

    def rejected(self) -> list[tuple[int, str, str, float]]:
        return [(p, s, t, pv) for (p, s, t), (pv, _) in self.results.items() if pv < self.threshold]

    def min_p(self) -> float:
        return min(pv for pv, _ in self.results.values())

    def max_full_size_ks(self) -> float:
        return max(self.full_size_ks, default=0.0)

    def detectable_ks(self, n: int) -> float:
        """The smallest CDF difference the KS test rejects at the per-statistic level with n per side."""
        c = math.sqrt(-math.log(self.threshold / 2) / 2)
        return c * math.sqrt(2 / n)


# ---------------------------------------------------------------------------------- views
def workload(ctx: Context, x: SharedTensor) -> None:
    """Every protocol family of the secure forward pass, on a secret vector; nothing is revealed."""
    y = x * x  # Beaver product + exact truncation
    fn.relu(x)  # msb (bit-decomposed carry tree) + product
    fn.exp(x - 4.0)
    fn.reciprocal(y + 1.0)
    fn.rsqrt(y + 1.0)
    fn.log(y + 1.0)
    fn.gelu(x)  # trig: opened delta
    fn.softmax(x.reshape(-1, ROW))


def echo_share(ctx: Context, x: SharedTensor) -> None:
    """Leaky control: the workload, then P1 'logs' its input share to P0 (a classic debugging leak)."""
    workload(ctx, x)
    if ctx.participant == 1:
        ctx.send(0, x.data[-1])
    elif ctx.participant == 0:
        ctx.recv(1, x.data.shape[1:], x.data.dtype)


class ViewRecorder(RecordingTransport):
    """test_suites' recorder that also keeps the destination of every message sent (to pair openings)."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.sent_to: list[tuple[int, np.ndarray]] = []

    def send(self, to: int, tag: str, payload: np.ndarray) -> None:
        self.sent_to.append((to, np.array(payload, copy=True)))
        super().send(to, tag, payload)


def parts(message: np.ndarray, n: int) -> list[np.ndarray]:
    """A message as per-element samples: cut into n-element parts when it stacks several quantities."""
    flat = np.asarray(message).ravel()
    if flat.size > n and flat.size % n == 0:
        return list(flat.reshape(-1, n))
    return [flat]


def views(secret: float, n: int, suite: str, program: Callable[[Context, SharedTensor], None]) -> dict:
    """Per participant: name -> the sample it observes, for one run on a vector of n copies of ``secret``."""

    def body(ctx: Context, x: SharedTensor) -> dict[str, np.ndarray]:
        own = None if ctx.is_dealer else x.data.copy()
        recorder = ViewRecorder(ctx.transport)
        ctx.transport = recorder
        program(ctx, x)
        view: dict[str, np.ndarray] = {}
        if own is not None:
            for slot in range(own.shape[0]):
                view[f"own share slot {slot}"] = own[slot].ravel()
            own_sum = own.sum(axis=0, dtype=np.uint64).ravel()
        for frm, messages in sorted(recorder.received.items()):
            for i, message in enumerate(messages):
                for j, part in enumerate(parts(message, n)):
                    view[f"received from P{frm} #{i}.{j}"] = part
                    if own is not None and part.dtype == np.uint64 and part.size == n:
                        view[f"received from P{frm} #{i}.{j} + own share"] = part + own_sum
        for i, (peer, sent) in enumerate(recorder.sent_to):
            got = recorder.received.get(peer, [])
            k = sum(1 for p, _ in recorder.sent_to[:i] if p == peer)
            if k < len(got) and got[k].shape == sent.shape and got[k].dtype == sent.dtype:
                opened = (sent.ravel() + got[k].ravel()).astype(sent.dtype)
                for j, part in enumerate(parts(opened, n)):
                    view[f"opened with P{peer} #{k}.{j}"] = part
        return view

    with np.errstate(over="ignore"):
        return run_parties(suite, body, np.full(n, secret))


def compare_views(suite: str, n: int, program=workload) -> tuple[Comparison, list]:
    first, second = (views(s, n, suite, program) for s in SECRETS)
    comparison = Comparison(samples=n)
    for participant in range(3):
        va, vb = first[participant], second[participant]
        assert set(va) == set(vb), "the two runs must exchange the same messages (same shapes)"
        for name in sorted(va):
            a, b = va[name], vb[name]
            d, p = ks_p_value(signed_view(a), signed_view(b))
            comparison.results[(participant, name, "KS")] = (p, d)
            if a.size == n:
                comparison.full_size_ks.append(d)
            bytes_b = byte_views(b)
            for test, bytes_a in byte_views(a).items():
                comparison.results[(participant, name, test)] = (
                    homogeneity_p_value(bytes_a, bytes_b[test]),
                    None,
                )
    return comparison, [first, second]


def _report(comparison: Comparison) -> str:
    return (
        f"{comparison.count} statistics on {comparison.samples} elements per run; "
        f"min p = {comparison.min_p():.3g} (reject below {comparison.threshold:.2g}); "
        f"max KS D on {len(comparison.full_size_ks)} full-size samples = {comparison.max_full_size_ks():.4f} "
        f"(rejected above {comparison.detectable_ks(comparison.samples):.4f})"
    )


# ---------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("suite", ["2pc", "3pc"])
def test_views_of_two_secrets_are_indistinguishable(suite: str) -> None:
    n = scale(1 << 12, 1 << 15)
    comparison, (first, _) = compare_views(suite, n)
    rejected = comparison.rejected()
    record(f"leakage: two secrets, {suite} views", comparison.count, len(rejected), note=_report(comparison))
    print(f"\n{suite}: {_report(comparison)}")
    # the check looked at real traffic: each compute party received messages and opened values
    for participant in (0, 1) if suite == "2pc" else (0, 1, 2):
        names = first[participant]
        assert sum(k.startswith("received") for k in names) > 50 and any(
            k.startswith("opened") for k in names
        )
    if suite == "2pc":  # the dealer receives nothing at all: its view holds no sample
        assert first[2] == {}
    assert not rejected, f"views depend on the secret: {rejected[:5]} ({_report(comparison)})"


def _short_mask_ring(self: PRG, shape):
    """A broken PRG: 24-bit masks (a 'random fixed-point number' instead of a uniform ring element)."""
    return _ORIGINAL_RING(self, shape) >> np.uint64(40)


_ORIGINAL_RING = PRG.ring


@pytest.mark.parametrize(("suite", "leak"), [("2pc", "short masks"), ("3pc", "echoed share")])
def test_the_check_catches_a_leaky_variant(monkeypatch, suite: str, leak: str) -> None:
    """Negative controls through the same statistics: a check that cannot fail would prove nothing."""
    n = scale(1 << 12, 1 << 15)
    if leak == "short masks":
        monkeypatch.setattr(PRG, "ring", _short_mask_ring)
        comparison, _ = compare_views(suite, n)
    else:
        comparison, _ = compare_views(suite, n, echo_share)
    rejected = comparison.rejected()
    detected = bool(rejected)
    record(f"leakage control: {leak} ({suite})", 1, 0 if detected else 1, note=_report(comparison))
    print(f"\ncontrol {leak} ({suite}): {len(rejected)} statistics rejected; {_report(comparison)}")
    assert detected, f"the leaky control ({leak}) went unnoticed: {_report(comparison)}"
    if leak == "echoed share":  # caught where it leaks: P0's own share plus what P1 sent
        assert any(p == 0 and "+ own share" in s for p, s, _, _ in rejected)


# ------------------------------------------------------------------------------ what the model owner writes
def independence_p_values(shares: list[np.ndarray], weights: list[np.ndarray]) -> dict[str, float]:
    """p-values that a party's share words are independent of the weights they share, per tensor:

    * correlation: the Pearson correlation r_t of the signed share with the weight inside each tensor t;
      under independence n_t r_t^2 is chi-square with 1 degree of freedom, so their sum over tensors is
      chi-square with one degree per tensor;
    * contingency: the share's top 4 bits (16 rows) against the weight's quartile (4 columns), pooled over
      all tensors, chi-square test of independence."""
    stat, dof = 0.0, 0
    for sh, w in zip(shares, weights, strict=True):
        if w.size > 2 and np.std(w) > 0:
            r = float(np.corrcoef(signed_view(sh), w)[0, 1])
            stat, dof = stat + w.size * r * r, dof + 1
    all_shares, all_weights = np.concatenate(shares), np.concatenate(weights)
    rows = (all_shares >> np.uint64(60)).astype(np.int64)
    cols = np.searchsorted(np.quantile(all_weights, [0.25, 0.5, 0.75]), all_weights, side="right")
    table = np.zeros((16, 4))
    np.add.at(table, (rows, cols), 1)
    table = table[table.sum(1) > 0][:, table.sum(0) > 0]
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    contingency = float(((table - expected) ** 2 / expected).sum())
    table_dof = (table.shape[0] - 1) * (table.shape[1] - 1)
    return {"correlation": chi2_sf(stat, dof), "contingency": chi2_sf(contingency, max(1, table_dof))}


def party_views(out, party: int, names: list[str]) -> list[list[np.ndarray]]:
    """What one party can look at, per tensor: each slot of its file and, in 3pc, the sum of its slots."""
    from contract.manifest import party_file_tensors

    files = party_file_tensors(out, party)
    slots = [[files[n][s].ravel() for n in names] for s in range(files[names[0]].shape[0])]
    if len(slots) == 2:
        slots.append([a + b for a, b in zip(*slots, strict=True)])
    return slots


@pytest.mark.parametrize("suite", ["2pc", "3pc"])
def test_one_share_file_is_independent_of_the_weights(tmp_path, suite: str) -> None:
    """Each party's share of a weight is uncorrelated with (and independent of) the weight; a sharing that
    reuses one mask per tensor (a plausible bug) is caught by the same statistics."""
    from helpers_models import make_tiny_model

    from model_owner.share import share_model
    from mpc_core.nn.weights import load_checkpoint, split_public
    from mpc_core.ring import FixedPoint

    checkpoint = make_tiny_model(tmp_path / "ckpt", mlm=True)
    out = tmp_path / "shared"
    share_model(checkpoint, suite, out)
    _, tensors = load_checkpoint(checkpoint)
    _, secret = split_public(tensors)
    names = sorted(secret)
    weights = [np.asarray(secret[n], dtype=np.float64).ravel() for n in names]
    stats: dict[str, float] = {}
    for party in range(2 if suite == "2pc" else 3):
        for i, words in enumerate(party_views(out, party, names)):
            for test, p in independence_p_values(words, weights).items():
                stats[f"P{party} view {i} {test}"] = p
    threshold = ALPHA / len(stats)
    failed = {k: p for k, p in stats.items() if p < threshold}
    # control: the weights masked with ONE random ring element per tensor
    rng = np.random.default_rng(5)
    fp = FixedPoint()
    reused = [fp.encode(w) - rng.integers(0, 2**63, dtype=np.uint64) for w in weights]
    control = independence_p_values(reused, weights)
    caught = min(control.values()) < threshold
    count = sum(w.size for w in weights)
    note = (
        f"{count} weights in {len(weights)} tensors, min p = {min(stats.values()):.3g} "
        f"(threshold {threshold:.1e}); "
        f"control min p = {min(control.values()):.3g}"
    )
    record(f"share file alone vs weights ({suite})", len(stats), len(failed), note=note)
    record(f"share file control: reused mask ({suite})", 1, 0 if caught else 1, note=note)
    print(f"\n{suite}: {note}")
    assert count > 20_000
    assert not failed, failed
    assert caught, control


def test_the_public_folder_holds_only_the_embedding_layer_and_config(tmp_path) -> None:
    """Nothing in public/ or the manifest carries a secret weight: only the embedding-layer tensors, the
    config and tokenizer files are there, and no secret tensor's bytes (float32, float64, fixed point) or
    decimal text appears in any file the model owner publishes."""
    from helpers_models import make_tiny_model
    from safetensors.numpy import load_file

    from model_owner.share import TOKENIZER_FILES, share_model
    from mpc_core.nn.weights import is_public, load_checkpoint, split_public
    from mpc_core.ring import FixedPoint

    checkpoint = make_tiny_model(tmp_path / "ckpt", mlm=True)
    out = tmp_path / "shared"
    share_model(checkpoint, "2pc", out)
    public_dir = out / "public"
    files = {p.name for p in public_dir.iterdir()}
    assert (
        files <= {"config.json", "embeddings.safetensors", *TOKENIZER_FILES}
        and "embeddings.safetensors" in files
    )
    published = load_file(str(public_dir / "embeddings.safetensors"))
    _, tensors = load_checkpoint(checkpoint)
    public, secret = split_public(tensors)
    assert set(published) == set(public) and all(is_public(k) for k in published)
    blobs = {p.name: p.read_bytes() for p in public_dir.iterdir()}
    blobs["manifest.json"] = (out / "manifest.json").read_bytes()
    fp = FixedPoint()
    hits, probes = [], 0
    for name, value in secret.items():
        row = np.asarray(value, dtype=np.float64).reshape(-1)[:8]
        patterns = {
            "float32": row.astype(np.float32).tobytes(),
            "float64": row.tobytes(),
            "fixed point": fp.encode(row).tobytes(),
            "decimal": repr(float(np.float32(row[0]))).encode(),
        }
        for kind, pattern in patterns.items():
            probes += 1
            hits += [f"{name} ({kind}) in {file}" for file, blob in blobs.items() if pattern in blob]
    # control: the same search does find the public embeddings in the public file
    word = np.asarray(public["emb.word"]).reshape(-1)[:8].astype(np.float32).tobytes()
    assert word in blobs["embeddings.safetensors"]
    record(
        "public folder and manifest vs secret weights",
        probes * len(blobs),
        len(hits),
        note=", ".join(sorted(files)),
    )
    assert not hits, hits[:5]
