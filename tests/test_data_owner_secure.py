"""The secure backend over a real local cluster (gRPC, TLS) on a tiny shared BERT: same CMA-ES trajectory
as the plaintext backend from the same seed, requests capped in size, a plaintext-tuned prompt confirmed
on the cluster."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_data_owner_common import tiny_config, tiny_setup

from data_owner.evaluate import evaluate
from data_owner.runfolder import RunFolder
from data_owner.tuner import Tuner
from model_owner.share import share_model

pytestmark = pytest.mark.timeout(600)


@pytest.mark.parametrize(
    ("suite", "max_sequences", "pool"),
    [("2pc", 12, "text"), pytest.param("3pc", 0, "all", marks=pytest.mark.slow)],
)
def test_secure_run_follows_the_plaintext_trajectory(
    tmp_path: Path, suite: str, max_sequences: int, pool: str
) -> None:
    from cluster_ops.testing import running_cluster

    model, data, task = tiny_setup(tmp_path)
    share_model(model, suite, tmp_path / "cluster" / "model")
    common = dict(budget=24, popsize=6, eval_every=12, pool=pool)
    plain = Tuner.start(tiny_config(model, data, task, **common), tmp_path / "plain").run()
    plain_eval = evaluate(tmp_path / "plain", "test")
    cluster = str(tmp_path / "cluster" / "cluster.yaml")
    with running_cluster(tmp_path / "cluster", suite, model="model"):
        cfg = tiny_config(
            tmp_path / "cluster" / "model",
            data,
            task,
            backend="secure",
            suite=suite,
            cluster=cluster,
            max_sequences=max_sequences,
            **common,
        )
        secure = Tuner.start(cfg, tmp_path / "secure").run()
        ev = evaluate(tmp_path / "secure", "test")
        confirm = evaluate(tmp_path / "plain", "test", overrides={"backend": "secure", "cluster": cluster})
    hp, hs = (RunFolder(tmp_path / r).read_history() for r in ("plain", "secure"))
    assert len(hp) == len(hs) == 5
    for a, b in zip(hp[1:], hs[1:], strict=True):
        for key in ("loss_min", "loss_mean", "loss_max"):
            assert abs(a[key] - b[key]) < 1e-2, (a["generation"], key, a[key], b[key])
    assert hs[-1]["loss_mean"] < hs[1]["loss_mean"]  # losses decrease on the cluster too
    assert secure["private"] is True and "NOT PRIVATE" not in json.dumps(secure)
    assert secure["backend"] == f"secure {suite}"
    assert secure["bytes_sent"] > 0 and secure["bytes_received"] > 0
    assert secure["server_bytes"] > secure["bytes_sent"] and secure["server_rounds"] > 0
    assert abs(secure["zero_shot_dev"] - plain["zero_shot_dev"]) <= 100 / 16  # percent
    assert ev["private"] is True and ev["examples"] == 32 and np.isfinite(secure["best_train_loss"])
    # the plaintext-tuned prompt, scored on shares, agrees with its plaintext score (one flip allowed)
    assert confirm["private"] is True and confirm["tuned_on"] == "plain"
    assert abs(confirm["tuned"] - plain_eval["tuned"]) <= 100 / 32
    assert (tmp_path / "plain" / "eval_test_secure.json").is_file()
