"""A shared decoder tuned through a real local cluster (gRPC, TLS): the ``decoder_tuning`` job driven by
``secp-tune``'s own tuner follows the plaintext run of the same seed in both placements (issue 12: "one
secure run of the default recipe that follows the plaintext run's losses", here on a tiny LLaMA), and a
shared decoder on the plain backend is refused before anything is read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers_decoder_owner import decoder_setup
from test_data_owner_common import tiny_config

from data_owner.cli import main
from data_owner.runfolder import RunFolder
from data_owner.tuner import Tuner
from model_owner.share import share_model

pytestmark = pytest.mark.timeout(900)
TOL = 1e-2  # secure against float64 losses (the decoder logits' bound, issue 12)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return decoder_setup(tmp_path_factory.mktemp("decoder"))


@pytest.mark.parametrize(
    ("suite", "placement"), [("2pc", "suffix"), pytest.param("3pc", "prefix", marks=pytest.mark.slow)]
)
def test_secure_decoder_run_follows_the_plaintext_run(
    tiny, tmp_path: Path, suite: str, placement: str
) -> None:
    from cluster_ops.testing import running_cluster

    model, data, task = tiny
    share_model(model, suite, tmp_path / "cluster" / "model")
    common = dict(budget=18, popsize=6, eval_every=12, seed=1, placement=placement, alpha=1.0)
    plain = Tuner.start(tiny_config(model, data, task, **common), tmp_path / "plain").run()
    with running_cluster(tmp_path / "cluster", suite, model="model"):
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
    hp, hs = (RunFolder(tmp_path / r).read_history() for r in ("plain", "secure"))
    assert len(hp) == len(hs) == 4
    for a, b in zip(hp[1:], hs[1:], strict=True):
        for key in ("loss_min", "loss_mean", "loss_max"):
            assert abs(a[key] - b[key]) < TOL, (a["generation"], key, a[key], b[key])
    assert hp[-1]["loss_max"] - hp[-1]["loss_min"] > 3 * TOL  # the candidates' losses differ by more
    assert secure["private"] is True and "NOT PRIVATE" not in json.dumps(secure)
    assert secure["backend"] == f"secure {suite}" and secure["server_bytes"] > 0
    assert abs(secure["zero_shot_dev"] - plain["zero_shot_dev"]) <= 100 / 12  # percent: one dev flip


def test_a_shared_decoder_on_the_plain_backend_is_refused(tiny, tmp_path: Path) -> None:
    model, data, task = tiny
    share_model(model, "2pc", tmp_path / "shared")
    out = tmp_path / "run"
    args = ["run", "--task", str(task), "--data-dir", str(data), "--model", str(tmp_path / "shared")]
    res = CliRunner().invoke(main, [*args, "--out", str(out), "--backend", "plain", "-L", "3"])
    assert res.exit_code == 2, res.output
    assert "the plain backend needs a plaintext checkpoint" in " ".join(res.stderr.split())
    assert not out.exists()
