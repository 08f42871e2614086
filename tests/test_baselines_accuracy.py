"""The plaintext gradient baselines (bench/baselines_accuracy.py) compute the forward-only tuner's function.

The comparison of issue 14 is like for like only if the torch model that SFT and gradient prompt tuning
train is the very computation the forward-only tuner's plain oracle scores: same input rows, prompt rows,
pooling mask, anchors, scale and loss.  On a tiny random BERT (says nothing about accuracy) the torch loss
must equal the project's plaintext loss (``PlainOracle.losses``, helper D's layers in float64) to 1e-6 for
a non-zero prompt, for both losses; a few Adam steps must lower the loss of an overfit batch; and the
selection must keep the best dev state and score test with it.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch
from test_data_owner_common import tiny_config, tiny_setup

from bench.baselines_accuracy import TorchSplit, build_model, run_one, torch_loss, trainable
from data_owner.session import open_session


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return tiny_setup(tmp_path_factory.mktemp("baselines"))


@pytest.mark.parametrize("loss", ["ce", "hinge"])
def test_torch_loss_equals_the_plain_oracle_loss(tiny, loss: str) -> None:
    model, data, task = tiny
    s = open_session(tiny_config(model, data, task, loss=loss))
    try:
        prompt = s.projection(np.random.default_rng(1).normal(size=(1, 8)))  # [1, L, H], non-zero
        ref = float(s.oracle.losses(prompt)[0])
        zero = float(s.oracle.losses(np.zeros_like(prompt))[0])
        m = build_model(s, torch.float64)
        with torch.no_grad():
            m.prompt.copy_(torch.tensor(prompt))
        train = TorchSplit.of(s.splits["train"], torch.float64)
        logits, labels = m.logits(train, np.arange(len(train.lengths)))
        got = torch_loss(m.loss, logits, labels).item()
    finally:
        s.close()
    assert m.loss == loss
    assert abs(got - ref) <= 1e-6, (got, ref)
    assert abs(ref - zero) > 1e-4  # the prompt moves the loss, so the check above sees the prompt rows


@pytest.mark.parametrize("method", ["sft", "prompt"])
def test_adam_lowers_the_loss_of_an_overfit_batch(tiny, method: str) -> None:
    model, data, task = tiny
    s = open_session(tiny_config(model, data, task))
    try:
        m = build_model(s, torch.float64)
        train = TorchSplit.of(s.splits["train"], torch.float64)
    finally:
        s.close()
    idx = np.arange(8)
    opt = torch.optim.Adam(trainable(m, method), lr=1e-3 if method == "sft" else 1e-1)
    losses = []
    for _ in range(8):
        loss = torch_loss(m.loss, *m.logits(train, idx))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(b < a for a, b in pairwise(losses)), losses
    # the tiny random encoder's prompt moves its loss slowly (a few per cent in 8 steps), its weights fast
    assert losses[-1] < (0.8 if method == "sft" else 0.97) * losses[0], losses
    if method == "prompt":  # the frozen encoder stays frozen
        assert all(p.grad is None for p in m.encoder.parameters())


def test_run_keeps_the_best_dev_state_and_scores_test_once(tiny) -> None:
    model, data, task = tiny
    r = run_one(tiny_config(model, data, task), "prompt", lrs=[1e-2, 1e-1], epochs=3, dtype=torch.float64)
    dev = [(c["dev_score"], -c["dev_loss"]) for curve in r["curves"].values() for c in curve]
    assert r["selected"]["lr"] in (None, 1e-2, 1e-1)
    best = max(dev)
    if r["selected"]["lr"] is None:  # kept the untrained prompt: nothing was strictly better on dev
        assert best[0] <= r["zero_shot_dev"]["score"] / 100
    else:
        kept = r["curves"][str(r["selected"]["lr"])][r["selected"]["epoch"] - 1]
        assert (kept["dev_score"], -kept["dev_loss"]) == best
        assert r["dev"]["score"] == round(100 * kept["dev_score"], 2)
    assert r["rows"]["test"] == 32 and 0 <= r["test"]["accuracy"] <= 100
