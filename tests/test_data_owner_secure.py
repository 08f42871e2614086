"""The secure backend over a real local cluster (gRPC, TLS) on a tiny shared BERT: same CMA-ES trajectory
as the plaintext backend from the same seed, losses decrease, eval works, a lost cluster is a clear error."""

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


@pytest.mark.parametrize("suite", ["2pc", pytest.param("3pc", marks=pytest.mark.slow)])
def test_secure_run_follows_the_plaintext_trajectory(tmp_path: Path, suite: str) -> None:
    from server.testing import running_cluster

    model, data, task = tiny_setup(tmp_path)
    share_model(model, suite, tmp_path / "cluster" / "model")
    common = dict(budget=24, popsize=6, eval_every=12)
    plain = Tuner.start(tiny_config(model, data, task, **common), tmp_path / "plain").run()
    with running_cluster(tmp_path / "cluster", suite, model="model") as _:
        cfg = tiny_config(
            tmp_path / "cluster" / "model",
            data,
            task,
            backend="secure",
            suite=suite,
            cluster=str(tmp_path / "cluster" / "cluster.yaml"),
            **common,
        )
        secure = Tuner.start(cfg, tmp_path / "secure").run()
        ev = evaluate(tmp_path / "secure", "test")
    hp, hs = (RunFolder(tmp_path / r).read_history() for r in ("plain", "secure"))
    for a, b in zip(hp[1:], hs[1:], strict=True):
        for key in ("loss_min", "loss_mean", "loss_max"):
            assert abs(a[key] - b[key]) < 1e-2, (a["generation"], key, a[key], b[key])
    assert secure["private"] is True and "NOT PRIVATE" not in json.dumps(secure)
    assert (
        secure["backend"] == f"secure {suite}" and secure["bytes_sent"] > 0 and secure["bytes_received"] > 0
    )
    assert secure["server_bytes"] > secure["bytes_sent"] and secure["server_rounds"] > 0
    assert abs(secure["zero_shot_dev"] - plain["zero_shot_dev"]) <= 1 / 16
    assert ev["private"] is True and ev["examples"] == 32 and 0 <= ev["tuned"] <= 1
    assert np.isfinite(secure["best_train_loss"])
