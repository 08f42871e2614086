"""Canaries: secret values planted in data, prompts, weights and losses never reach a server's logs, error
messages or metrics.

Issue #4, item 3 (second part).  A real cluster (server processes, mutual TLS, ``--log-level debug``)
serves a tiny model whose secret weights hold planted values; the data owner runs a secure tuning run on
data with a planted word, then a job whose embeddings and prompts hold planted values, reveals its losses
(they become canaries too, with the tuned prompt), and provokes the servers' error paths (bad parameters,
an unknown result, a peer killed in the middle of a batch).  Then every log file, every error string a
server returned and every metrics and status reply is searched for every canary in every encoding a bug
could write it in: decimal text (repr and 5 to 8 significant digits), the fixed-point ring integer
(unsigned, signed and hex, when it has at least 6 digits) and raw bytes (the ring element and the float64,
little-endian).  The servers' own shares of planted values are searched for too (a share in a log is as
bad: the other share completes it).  A control scan of text that does contain each encoding shows the
search finds them.
"""

from __future__ import annotations

import json
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers_models import ONE_LAYER, make_tiny_model
from safetensors.numpy import load_file, save_file
from security_report import record
from test_data_owner_common import synthetic_rows, tiny_config, write_split, write_task

from cluster_ops.launcher import LocalCluster
from cluster_ops.testing import write_test_cluster
from contract.cluster import load_config
from contract.manifest import party_file_tensors
from data_owner.client import ClusterClient, ClusterError
from data_owner.runfolder import RunFolder
from data_owner.tuner import Tuner
from model_owner.share import share_model
from mpc_core.prg import PRG
from mpc_core.ring import FixedPoint
from mpc_core.suites import suite_class

pytestmark = [pytest.mark.security, pytest.mark.timeout(600)]

FP = FixedPoint()
WORD = "zqxcanaryword"  # a word planted in the training data (the text never leaves the data owner)
WEIGHT_CANARIES = {  # HF tensor name -> planted values (first entries)
    "encoder.layer.0.attention.self.query.bias": (-0.7777777, 0.8642097, -1.3579135),
    "encoder.layer.0.output.dense.bias": (0.6180339, -0.4142135),
}
SHARED_NAMES = {"encoder.layer.0.attention.self.query.bias": "layer.0.attn.q.bias",
                "encoder.layer.0.output.dense.bias": "layer.0.ffn.out.bias"}  # fmt: skip
EMBED_CANARIES = (-0.6180339, 1.4142135, -2.2360679, 1.7320508)
PROMPT_CANARIES = (0.0271828, -0.0314159, 0.0577215)
N, T, L, C = 3, 6, 2, 2


# ---------------------------------------------------------------------------------- encodings and scan
def significant_digits(text: str) -> int:
    mantissa = text.lstrip("-").split("e")[0].replace(".", "").lstrip("0")
    return len(mantissa)


def encodings(value: float) -> dict[str, bytes]:
    """The ways a bug could print or dump ``value``: decimal text, ring integer, raw bytes."""
    out: dict[str, bytes] = {}
    for text in {repr(value), *(f"{value:.{k}g}" for k in range(5, 9))}:
        if significant_digits(text) >= 5:
            out[f"decimal {text}"] = text.encode()
    ring = int(FP.encode(np.float64(value)))
    out.update(ring_encodings(ring))
    out["float64 bytes"] = struct.pack("<d", value)
    return out


def ring_encodings(ring: int) -> dict[str, bytes]:
    signed = ring - (1 << 64) if ring >= 1 << 63 else ring
    out = {"ring bytes": ring.to_bytes(8, "little")}
    for name, text in (("ring", str(ring)), ("signed ring", str(signed)), ("hex ring", f"{ring:x}")):
        if len(text) >= 6:
            out[f"{name} {text}"] = text.encode()
    return out


def scan(sources: dict[str, bytes], canaries: dict[str, dict[str, bytes]]) -> list[str]:
    """Every (source, canary, encoding) hit."""
    hits = []
    for source, blob in sources.items():
        for canary, codes in canaries.items():
            hits += [f"{canary} as {code} in {source}" for code, raw in codes.items() if raw in blob]
    return hits


def test_the_scan_finds_every_encoding() -> None:
    """Control: a log line carrying a canary in any of the searched encodings is found."""
    value = -0.7777777
    codes = encodings(value)
    assert {c.split()[0] for c in codes} >= {"decimal", "ring", "signed", "hex", "float64"}
    for code, raw in codes.items():
        blob = b"2026-01-01 p0 DEBUG server.jobs: value " + raw + b" seen\n"
        assert scan({"log": blob}, {"w": codes}), code
    assert not scan({"log": b"job 3f2a opened: program prompt_tuning\n"}, {"w": codes})


# ---------------------------------------------------------------------------------- the cluster
class DebugCluster(LocalCluster):
    """The local cluster with every server at ``--log-level debug``."""

    def command(self, participant: int) -> list[str]:
        return [*super().command(participant), "--log-level", "debug"]


def planted_model(root: Path) -> Path:
    model = make_tiny_model(
        root,
        mlm=False,
        seed=4,
        **ONE_LAYER,
    )
    path = model / "model.safetensors"
    tensors = load_file(str(path))
    for name, values in WEIGHT_CANARIES.items():
        tensors[name][: len(values)] = values
    save_file(tensors, str(path), metadata={"format": "pt"})
    return model


class Evidence:
    """Everything a server said: error strings and metrics replies (logs are read at the end)."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.replies: list[str] = []

    def add(self, exc: ClusterError) -> None:
        self.errors.append(str(exc))
        self.errors += [details for _, details in exc.failures.values()]

    def expect_error(self, call) -> None:
        try:
            call()
        except ClusterError as exc:
            self.add(exc)
        else:
            raise AssertionError("the call was expected to fail")


def canary_job(client: ClusterClient, digest: str, cfg_hidden: int, evidence: Evidence, suite: str):
    """A tuning job on planted embeddings and prompts; returns (job, the shares it uploaded, losses)."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=(N, T, cfg_hidden)) * 0.5
    x.reshape(-1)[: len(EMBED_CANARIES)] = EMBED_CANARIES
    prompts = rng.normal(size=(2, L, cfg_hidden)) * 0.05
    prompts.reshape(-1)[: len(PROMPT_CANARIES)] = PROMPT_CANARIES
    secrets = {
        "train.x": x,
        "train.y": np.eye(C)[[0, 1, 0]],
        "prompts": prompts,
        "anchors.x": rng.normal(size=(C, 4, cfg_hidden)) * 0.5,
    }
    prg = PRG(b"canary-share-prg")
    split = {name: suite_class(suite).split(FP.encode(v), prg) for name, v in secrets.items()}
    job = client.open_job("prompt_tuning", model_digest=digest)
    for name, shares in split.items():
        job.upload_shares(name, shares)
    params = {
        "split": "train",
        "output": "losses",
        "head": "similarity",
        "loss": "ce",
        "lengths": [T] * N,
        "anchor_lengths": [4] * C,
        "scale": 20.0,
    }
    evidence.expect_error(lambda: job.evaluate(params={**params, "lengths": [T + 1] * N}))
    job.evaluate(params=params)
    losses = job.reveal_float("losses")
    evidence.expect_error(lambda: job.fetch_shares("logits"))
    evidence.replies.append(json.dumps(job.metrics(), default=str))
    evidence.replies += [str(reply) for reply in job.status().values()]
    uploaded = {name: shares for name, shares in split.items() if name in ("train.x", "prompts")}
    return job, params, uploaded, losses


def kill_during_a_batch(cluster: LocalCluster, job, evidence: Evidence, victim: int) -> None:
    """A peer dies mid-batch: the survivors log the abort and answer with errors."""
    job.upload("x", FP.encode(np.full(4, 0.5)))
    errors: list[ClusterError] = []

    def evaluate() -> None:
        try:
            job.evaluate(["x"], params={"rounds": 200_000})
        except ClusterError as exc:
            errors.append(exc)

    worker = threading.Thread(target=evaluate)
    worker.start()
    time.sleep(1.0)
    cluster.kill_one(victim)
    worker.join(60)
    assert errors, "the batch did not fail"
    evidence.add(errors[0])


def shares_of(path: Path, participant: int, name: str, count: int) -> Iterator[int]:
    share = party_file_tensors(path, participant)[name]
    for slot in share:
        yield from (int(v) for v in slot.ravel()[:count])


@pytest.mark.parametrize("suite", ["2pc", "3pc"])
def test_canaries_never_reach_logs_errors_or_metrics(tmp_path: Path, suite: str) -> None:
    model = planted_model(tmp_path / "model")
    share_model(model, suite, tmp_path / "cluster" / "model")
    data = tmp_path / "data"
    data.mkdir()
    rows = synthetic_rows(2, 1)
    rows[0] = (rows[0][0], f"{rows[0][1]} {WORD}")
    write_split(data / "train.tsv", rows)
    write_split(data / "dev.tsv", synthetic_rows(2, 2))
    task = write_task(tmp_path)

    path = write_test_cluster(tmp_path / "cluster", suite, model="model")
    config = load_config(path)
    cluster = DebugCluster(config, path)
    evidence = Evidence()
    cluster.start()
    try:
        cfg = tiny_config(
            tmp_path / "cluster" / "model",
            data,
            task,
            backend="secure",
            suite=suite,
            cluster=str(path),
            popsize=4,
            budget=8,
            eval_every=4,
            prompt_length=L,
            intrinsic_dim=4,
            max_length=16,
        )
        Tuner.start(cfg, tmp_path / "run").run()
        with ClusterClient(config) as client:
            info = client.server_info()
            evidence.replies += [str(reply) for reply in info.values()]
            digest = info[0].model_digest
            _, _, uploaded, losses = canary_job(client, digest, 16, evidence, suite)
            rounds = client.open_job("rounds")
            kill_during_a_batch(cluster, rounds, evidence, victim=1)
    finally:
        cluster.stop()

    # the canaries
    canaries: dict[str, dict[str, bytes]] = {"data word": {"text": WORD.encode()}}
    for name, values in WEIGHT_CANARIES.items():
        for i, v in enumerate(values):
            canaries[f"weight {name}[{i}]"] = encodings(float(np.float32(v)))
        for p in config.compute_parties:
            for j, ring in enumerate(
                shares_of(tmp_path / "cluster" / "model", p, SHARED_NAMES[name], len(values))
            ):
                canaries[f"P{p}'s share of weight {name} #{j}"] = ring_encodings(ring)
    for label, values in (("embedding", EMBED_CANARIES), ("prompt", PROMPT_CANARIES)):
        for i, v in enumerate(values):
            canaries[f"{label} {i}"] = encodings(v)
    for name, shares in uploaded.items():
        for p, share in enumerate(shares):
            for j, ring in enumerate(share.ravel()[:3]):
                canaries[f"P{p}'s share of {name} #{j}"] = ring_encodings(int(ring))
    for i, v in enumerate(losses):
        canaries[f"loss {i}"] = encodings(float(v))
    history = RunFolder(tmp_path / "run").read_history()
    for r in history[1:]:
        canaries[f"generation {r['generation']} loss_min"] = encodings(r["loss_min"])
    best = np.load(tmp_path / "run" / "prompt.npy").ravel()
    for i, v in enumerate(best[:8]):
        canaries[f"tuned prompt {i}"] = encodings(float(v))

    logs = {p.name: p.read_bytes() for p in (config.run_dir / "logs").glob("*.log")}
    assert len(logs) == 3 and all(b" DEBUG " in blob for blob in logs.values())  # debug level was on
    assert any(b"aborted" in blob for blob in logs.values())  # the error paths ran and were logged
    assert len(evidence.errors) >= 4 and len(evidence.replies) >= 4
    sources = dict(logs)
    sources.update({f"error {i}": e.encode() for i, e in enumerate(evidence.errors)})
    sources.update({f"reply {i}": r.encode() for i, r in enumerate(evidence.replies)})
    hits = scan(sources, canaries)
    codes = sum(len(c) for c in canaries.values())
    note = f"{len(canaries)} canaries, {codes} encodings, {len(sources)} sources"
    record(f"canaries in logs/errors/metrics ({suite})", codes * len(sources), len(hits), note=note)
    assert not hits, hits[:10]
