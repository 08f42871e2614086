"""``secp-tune gradient`` (data_owner/gradient.py) on real local clusters: gRPC, TLS, server processes.

A tiny shared BERT and the data owner's tiny task: three secure steps of each method (2pc prompt, 3pc SFT)
equal the float64 plaintext steps of the same batches within LOSS_ATOL (the in-process tests'
tolerance, tests/test_gradient_job.py); a run stopped after its step-2 checkpoint and resumed on a new job
gives the uninterrupted run's step-3 loss; a server that lacks the checkpoint refuses the resume.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_data_owner_common import tiny_setup

from cluster_ops.testing import running_cluster
from data_owner.errors import DataOwnerError
from data_owner.gradient import GradientConfig, GradientRun, batch_rows
from model_owner.share import share_model
from mpc_core.nn.backend import PlainBackend
from mpc_core.nn.grad.adam import AdamConfig
from mpc_core.nn.grad.tuning import FullFineTuning, PromptTuning
from mpc_core.nn.heads import SimilarityHead, similarity_anchors
from mpc_core.nn.weights import load_checkpoint

pytestmark = pytest.mark.timeout(900)

LOSS_ATOL = 1e-3
SETTINGS = {"prompt": dict(lr=0.5, prompt_length=2), "sft": dict(lr=0.05, grad_max=2.0)}


def _plaintext(checkpoint: Path, run: GradientRun, steps: int) -> list[float]:
    """The float64 steps of the batches the run sends (anchors encoded in the clear, same Adam)."""
    cfg_run = run.config
    model_cfg, weights = load_checkpoint(checkpoint)
    _, split, (anchor_x, anchor_mask) = run._prepare()
    head = SimilarityHead(
        similarity_anchors(weights, model_cfg, anchor_x, anchor_mask), cfg_run.similarity_scale
    )
    adam = AdamConfig(
        lr=cfg_run.lr, beta1=cfg_run.beta1, beta2=cfg_run.beta2, eps=cfg_run.eps, grad_max=cfg_run.grad_max
    )
    B = PlainBackend(weights)
    if cfg_run.method == "prompt":
        prompt = np.zeros((1, cfg_run.prompt_length, model_cfg.hidden))
        tuner = PromptTuning(B, model_cfg, head, prompt, adam, cfg_run.loss_scale)
    else:
        tuner = FullFineTuning(B, model_cfg, head, adam, cfg_run.loss_scale)
    losses = []
    for step in range(1, steps + 1):
        rows = batch_rows(len(split), cfg_run.batch_size, cfg_run.seed, step)
        t = int(split.attention_mask[rows].sum(1).max())
        mask = split.attention_mask[rows, :t]
        pool = split.pool_mask[rows, :t] if split.pool_exclude else None
        loss = tuner.step(split.embeds[rows, :t], split.onehot[rows], mask, pool_mask=pool)
        losses.append(float(loss[0]))
    return losses


@pytest.mark.parametrize(("suite", "method"), [("2pc", "prompt"), ("3pc", "sft")])
def test_gradient_runs_follow_plaintext_resume_and_refuse_a_missing_checkpoint(tmp_path: Path, suite, method):
    checkpoint, data, task = tiny_setup(tmp_path)
    share_model(checkpoint, suite, tmp_path / "cluster" / "model")
    lines: list[str] = []

    def config(**changes) -> GradientConfig:
        base = dict(
            task=str(task),
            data_dir=str(data),
            model=str(tmp_path / "cluster" / "model"),
            cluster=str(tmp_path / "cluster" / "cluster.yaml"),
            method=method,
            steps=3,
            batch_size=4,
            max_length=16,
            similarity_scale=5.0,
            checkpoint_every=2,
            seed=7,
            **SETTINGS[method],
        )
        return GradientConfig(**{**base, **changes})

    with running_cluster(tmp_path / "cluster", suite, model="model"):
        whole = GradientRun.create(tmp_path / "whole", config())
        summary = whole.run(echo=lines.append)
        stopped = GradientRun.create(tmp_path / "stopped", config(steps=2))
        stopped.run(echo=lines.append)
        stopped.config = stopped.config.model_copy(update={"steps": 3})
        resumed = stopped.run(echo=lines.append)

        # a server without the checkpoint refuses the resume; nothing runs, the run folder is unchanged
        other = GradientRun.create(tmp_path / "other", config(steps=2))
        other.run(echo=lines.append)
        state_dir = tmp_path / "cluster" / ".cluster" / "state" / "p1"
        (state_dir / f"{other.config.checkpoint_id}.ckpt.npz").unlink()
        other.config = other.config.model_copy(update={"steps": 3})
        with pytest.raises(DataOwnerError, match=r"participant 1 .*holds no checkpoint"):
            other.run(echo=lines.append)
        assert other.state()["step"] == 2 and len(other.history()) == 2

    print("\n".join(lines))
    losses = [r["loss"] for r in whole.history()]
    expected = _plaintext(checkpoint, whole, 3)
    print(f"{suite} {method}: secure {losses} plaintext {expected}")
    np.testing.assert_allclose(losses, expected, atol=LOSS_ATOL)
    assert abs(expected[2] - expected[0]) > 3 * LOSS_ATOL  # the steps move the loss
    assert summary["steps"] == 3 and summary["checkpoint_step"] == 3
    assert [line.split()[1] for line in lines[:3]] == ["1/3", "2/3", "3/3"]

    history = stopped.history()
    assert [r["step"] for r in history] == [1, 2, 3]
    assert history[2]["job"] != history[1]["job"]  # step 3 ran on a new job, from the checkpoint
    assert resumed["checkpoint_step"] == 3
    assert abs(history[2]["loss"] - losses[2]) <= LOSS_ATOL
    np.testing.assert_allclose([r["loss"] for r in history[:2]], losses[:2], atol=LOSS_ATOL)
    if method == "prompt":
        prompt = np.load(tmp_path / "whole" / "prompt.npy")
        assert prompt.shape == (1, 2, 32) and np.abs(prompt).max() > 0.1
    else:
        assert not (tmp_path / "whole" / "prompt.npy").exists()  # SFT's weights never come back
    for name in ("p0", "p1", "dealer" if suite == "2pc" else "p2"):
        ckpt = tmp_path / "cluster" / ".cluster" / "state" / name / f"{whole.config.checkpoint_id}.ckpt.npz"
        assert ckpt.is_file() and oct(ckpt.stat().st_mode & 0o777) == "0o600"
    saved = json.loads((tmp_path / "whole" / "state.json").read_text())
    assert saved["step"] == 3 and saved["checkpoint"] == whole.config.checkpoint_id


def test_the_gradient_command_refuses_bad_options_with_one_error_line(tmp_path: Path):
    """No cluster needed: what the user can fix ends in an ``error:`` line and exit code 2, no folder."""
    from click.testing import CliRunner

    from data_owner.gradient import gradient

    runner = CliRunner()
    base = ["--task", "sst2", "--data-dir", str(tmp_path), "--model", str(tmp_path), "--cluster", "c.yaml"]
    result = runner.invoke(gradient, ["--out", str(tmp_path / "a"), *base, "--lr", "5"])
    assert result.exit_code == 2 and "invalid options" in result.output + str(result.stderr_bytes or b"")
    assert not (tmp_path / "a").exists()
    result = runner.invoke(gradient, ["--out", str(tmp_path / "b"), "--resume"])
    assert result.exit_code == 2 and "not a gradient run folder" in result.output + str(
        result.stderr_bytes or b""
    )
    run = GradientRun.create(
        tmp_path / "c",
        GradientConfig(task="sst2", data_dir=str(tmp_path), model=str(tmp_path), cluster="c.yaml"),
    )
    result = runner.invoke(gradient, ["--out", str(run.folder), "--resume", "--lr", "0.1"])
    assert result.exit_code == 2 and "--resume takes the run's own settings" in result.output + str(
        result.stderr_bytes or b""
    )
