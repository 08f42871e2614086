"""Secure computations on real 2pc and 3pc clusters (one process per participant, mutual TLS, loopback),
compared with the in-process run of the same inputs: identical ring values."""

from __future__ import annotations

import numpy as np
import pytest

from cluster_ops.testing import running_cluster, write_test_model
from data_owner.client import ClusterClient
from mpc_core.prg import PRG
from mpc_core.ring import FixedPoint
from mpc_core.suites import suite_class
from server.execute import run_in_process
from server.model_store import load_model

pytestmark = pytest.mark.timeout(180)

FP = FixedPoint()
rng = np.random.default_rng(7)
MODEL = {"head.weight": rng.normal(size=(16, 4)) * 0.3, "head.bias": rng.normal(size=4) * 0.1}


@pytest.fixture(scope="module", params=["2pc", "3pc"])
def cluster(request, tmp_path_factory):
    suite = request.param
    folder = tmp_path_factory.mktemp(f"e2e-{suite}")
    digest = write_test_model(folder / "model", suite, MODEL)
    with running_cluster(folder, suite, model="model") as (config, _), ClusterClient(config) as client:
        yield suite, config, client, digest


def _split(suite: str, secrets: dict[str, np.ndarray], integer: bool = False, seed: int = 0):
    prg = PRG(seed.to_bytes(16, "little"))
    cls = suite_class(suite)
    ring = {n: (v.astype(np.int64).view(np.uint64) if integer else FP.encode(v)) for n, v in secrets.items()}
    split = {n: cls.split(r, prg) for n, r in ring.items()}
    parties = 2 if suite == "2pc" else 3
    return ring, [{n: s[p] for n, s in split.items()} for p in range(parties)]


def test_server_info_names_cluster_and_roles(cluster):
    suite, config, client, digest = cluster
    info = client.server_info()
    assert {p: i.participant for p, i in info.items()} == {0: 0, 1: 1, 2: 2}
    assert all(
        i.suite == suite and i.cluster == config.name and i.model_digest == digest for i in info.values()
    )
    assert info[2].role == ("dealer" if suite == "2pc" else "party")
    assert {"affine", "mlp", "rounds", "model_linear"} <= set(info[0].programs)


def test_deterministic_affine_is_exact_and_matches_in_process(cluster):
    """Ring integers, no truncation: y = x @ w + b mod 2^64 exactly, whatever the randomness."""
    suite, _, client, _ = cluster
    secrets = {
        "x": rng.integers(-(2**40), 2**40, size=(5, 7)),
        "w": rng.integers(-(2**20), 2**20, size=(7, 3)),
        "b": rng.integers(-(2**62), 2**62, size=3),
    }
    ring, shares = _split(suite, secrets, integer=True)
    job = client.open_job("affine")
    for name in ring:
        job.upload_shares(name, [s[name] for s in shares])
    outputs = job.evaluate(params={"integer": True})
    assert outputs["y"].shape == (5, 3) and outputs["y"].scale == 0
    got = job.reveal("y")
    with np.errstate(over="ignore"):
        expected = ring["x"] @ ring["w"] + ring["b"]
    assert got.dtype == np.uint64 and np.array_equal(got, expected)
    reference = run_in_process(
        suite, "affine", '{"integer": true}', shares, {n: v.shape for n, v in secrets.items()}
    )
    in_process = suite_class(suite).combine([reference[p]["y"][0] for p in range(len(shares))])
    assert np.array_equal(got, in_process)
    job.close()


@pytest.mark.parametrize("activation", ["relu", "cos"])
def test_tiny_network_shares_identical_to_in_process(cluster, activation):
    """A tiny two-layer network (matmul, truncation, sign bit or trig) with fixed test seeds: every
    party's output share over gRPC equals the in-process one, and the result is close to float64."""
    suite, _, client, _ = cluster
    secrets = {
        "x": rng.normal(size=(8, 16)),
        "w1": rng.normal(size=(16, 12)) * 0.3,
        "b1": rng.normal(size=12) * 0.1,
        "w2": rng.normal(size=(12, 3)) * 0.3,
        "b2": rng.normal(size=3) * 0.1,
    }
    _, shares = _split(suite, secrets, seed=11)
    seed = b"e2e-" + activation.encode()
    params = {"activation": activation}
    job = client.open_job("mlp", test_seed=seed)
    for name in secrets:
        job.upload_shares(name, [s[name] for s in shares])
    job.evaluate(params=params)
    got_shares = job.fetch_shares("y")
    reference = run_in_process(
        suite,
        "mlp",
        f'{{"activation": "{activation}"}}',
        shares,
        {n: v.shape for n, v in secrets.items()},
        test_seed=seed,
    )
    for p, share in enumerate(got_shares):
        assert np.array_equal(share, reference[p]["y"][0]), f"participant {p}'s share differs"
    h = secrets["x"] @ secrets["w1"] + secrets["b1"]
    h = np.maximum(h, 0) if activation == "relu" else np.cos(2 * np.pi * h / 64)
    assert np.allclose(job.reveal_float("y"), h @ secrets["w2"] + secrets["b2"], atol=1e-2)
    job.close()


def test_several_batches_reuse_the_job(cluster):
    """Uploads persist across batches, a re-upload replaces a tensor, batches run in order."""
    _suite, _, client, _ = cluster
    w, b = rng.normal(size=(6, 2)), rng.normal(size=2)
    job = client.open_job("affine")
    job.upload("w", FP.encode(w))
    job.upload("b", FP.encode(b))
    for _batch in range(3):
        x = rng.normal(size=(4, 6))
        job.upload("x", FP.encode(x))
        job.evaluate()
        assert np.allclose(job.reveal_float("y"), x @ w + b, atol=1e-3)
    status = job.status()
    assert all(s.batches_done == 3 for s in status.values())
    job.close()


def test_model_program_uses_each_partys_own_share_file(cluster):
    suite, config, client, digest = cluster
    x = rng.normal(size=(3, 16))
    _, x_shares = _split(suite, {"x": x}, seed=5)
    job = client.open_job("model_linear", model_digest=digest, test_seed=b"model")
    job.upload_shares("x", [s["x"] for s in x_shares])
    params = '{"weight": "head.weight", "bias": "head.bias"}'
    job.evaluate(params={"weight": "head.weight", "bias": "head.bias"})
    got = job.fetch_shares("y")
    y = suite_class(suite).combine(got).view(np.int64) / 2**16
    assert np.allclose(y, x @ MODEL["head.weight"] + MODEL["head.bias"], atol=1e-3)
    # in process, each participant loading the same folder as its server did: identical shares
    models = [
        load_model(
            config.model, participant=p, holds_shares=p in config.compute_parties, suite=suite, frac_bits=16
        )
        for p in range(3)
    ]
    reference = run_in_process(
        suite, "model_linear", params, x_shares, {"x": x.shape}, test_seed=b"model", models=models
    )
    for p, share in enumerate(got):
        assert np.array_equal(share, reference[p]["y"][0])
    job.close()


def test_metrics_report_bytes_rounds_and_seconds_per_op(cluster):
    _suite, _, client, _ = cluster
    secrets = {
        "x": rng.normal(size=(4, 16)),
        "w1": rng.normal(size=(16, 8)),
        "b1": rng.normal(size=8),
        "w2": rng.normal(size=(8, 2)),
        "b2": rng.normal(size=2),
    }
    job = client.open_job("mlp")
    for name, value in secrets.items():
        job.upload(name, FP.encode(value))
    job.evaluate(params={"activation": "relu"})
    metrics = job.metrics()
    for _p, m in metrics.items():
        ops = m["ops"]
        assert {"total", "setup", "mlp.layer1", "mlp.relu", "mlp.layer2"} <= set(ops)
        named = [v for k, v in ops.items() if k != "total"]
        assert sum(v["bytes"] for v in named) == ops["total"]["bytes"]
        assert sum(v["rounds"] for v in named) == ops["total"]["rounds"]
        assert ops["mlp.relu"]["seconds"] > 0 and m["evaluate_seconds"] > 0
        assert m["wire"]["bytes_sent"] >= ops["total"]["bytes"] > 0
        assert m["wire"]["messages_sent"] == ops["total"]["messages"]
    # the sign-bit protocol needs several rounds between the compute parties
    assert metrics[0]["ops"]["mlp.relu"]["rounds"] >= 8
    job.close()
