"""The tuning loop on a tiny random BERT (plain backend): encoding, learning, checkpoints and resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_data_owner_common import tiny_config, tiny_setup, write_task

from data_owner import checkpoint as ckpt_module
from data_owner.checkpoint import load_checkpoint
from data_owner.errors import DataOwnerError
from data_owner.oracle import LossOracle
from data_owner.runfolder import CHECKPOINT, HISTORY, PROMPT, RunFolder
from data_owner.session import open_session
from data_owner.tuner import Tuner
from mpc_core.nn import AttentionConfig, PlainBackend, SimilarityHead, candidate_losses


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return tiny_setup(tmp_path_factory.mktemp("tiny"))


def test_without_placeholder_rows_the_zero_prompt_is_the_plain_input(tiny) -> None:
    """--placeholder none: no [UNK] rows; the prompt lands on the template's first L rows, so z = 0 scores
    exactly like the input without any prompt, and a nonzero prompt moves the losses."""
    model, data, task = tiny
    with_rows = open_session(tiny_config(model, data, task, head="similarity"))
    plain = open_session(tiny_config(model, data, task, head="similarity", placeholder="none"))
    tok = plain.encoder.tok
    rows, none = with_rows.splits["train"], plain.splits["train"]
    assert not (none.input_ids == tok.unk_token_id).any()
    assert (none.attention_mask.sum(1) == rows.attention_mask.sum(1) - 3).all()  # three rows fewer
    zero = np.zeros((1, 3, none.embeds.shape[-1]))
    prompt = plain.projection(np.ones((1, 8)))
    z0, moved = plain.oracle.losses(zero)[0], plain.oracle.losses(prompt)[0]
    assert abs(z0 - with_rows.oracle.losses(zero)[0]) > 1e-6  # the [UNK] rows change the zero-shot input
    assert abs(moved - z0) > 1e-6
    with_rows.close()
    plain.close()


def test_pool_text_leaves_the_placeholder_rows_out_of_the_pooling(tiny) -> None:
    """--pool text: the [UNK] rows still take part in attention but not in the similarity head's mean, so
    the same prompt scores differently; without placeholder rows there is nothing to leave out."""
    model, data, task = tiny
    pooled_all = open_session(tiny_config(model, data, task, head="similarity", pool="all"))
    text_only = open_session(tiny_config(model, data, task, head="similarity"))  # the default
    split = text_only.splits["train"]
    assert pooled_all.splits["train"].pool_mask is None and split.pool_exclude == (1, 2, 3)
    assert (split.pool_mask[:, 1:4] == 0).all()
    assert np.array_equal(split.pool_mask[:, 4:], split.attention_mask[:, 4:])
    assert np.array_equal(split.pool_mask[:, 0], split.attention_mask[:, 0])
    prompt = text_only.projection(np.ones((1, 8)))
    assert abs(text_only.oracle.losses(prompt)[0] - pooled_all.oracle.losses(prompt)[0]) > 1e-6
    none = open_session(tiny_config(model, data, task, head="similarity", placeholder="none", pool="text"))
    assert none.splits["train"].pool_mask is None
    for s in (pooled_all, text_only, none):
        s.close()


def test_input_ids_put_the_prompt_after_cls_and_keep_the_template(tiny) -> None:
    model, data, task = tiny
    s = open_session(tiny_config(model, data, task, head="similarity", max_length=12))
    tok = s.encoder.tok
    ex = s.splits["train"]
    ids = ex.input_ids[0][ex.attention_mask[0] == 1]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert (ids[1:4] == tok.unk_token_id).all()
    assert ex.attention_mask.sum(1).max() <= 12  # texts cut to fit, template kept
    s.close()
    mlm_model, _, _ = tiny_setup(model.parent / "mlm", mlm=True)
    s = open_session(tiny_config(mlm_model, data, task, max_length=10))
    assert s.head == "mlm"
    ex = s.splits["train"]
    for row, pos, length in zip(ex.input_ids, ex.mask_pos, ex.attention_mask.sum(1), strict=True):
        assert row[pos] == tok.mask_token_id and pos == length - 2  # "... w3 <mask> [SEP]" survives the cut
    s.close()


def test_plain_oracle_equals_one_batch_of_mpc_core_nn(tiny) -> None:
    """Chunking by length changes nothing: same losses as one call of D's candidate_losses."""
    model, data, task = tiny
    s = open_session(tiny_config(model, data, task))
    prompts = s.projection(np.random.default_rng(0).normal(size=(5, 8)))
    got = s.oracle.losses(prompts)
    tr = s.splits["train"]
    o = s.oracle
    ref = candidate_losses(
        PlainBackend(o.B.weights),
        o.cfg,
        AttentionConfig(),
        o.head,
        tr.embeds,
        prompts,
        tr.onehot,
        tr.attention_mask,
        pool_mask=tr.pool_mask,
    )
    assert isinstance(o.head, SimilarityHead) and tr.pool_mask is not None
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)
    assert len(set(np.round(got, 8))) == 5  # the prompt matters
    s.close()


def test_losses_decrease_over_generations(tiny, tmp_path: Path) -> None:
    model, data, task = tiny
    cfg = tiny_config(model, data, task, budget=240, popsize=8, eval_every=80)
    tuner = Tuner.start(cfg, tmp_path / "run")
    zero_loss = float(tuner.s.oracle.losses(np.zeros((1, 3, 32)))[0])
    report = tuner.run()
    history = RunFolder(tmp_path / "run").read_history()
    gens = [r for r in history if "loss_mean" in r]
    assert len(gens) == 30 and report["status"] == "finished" and report["calls"] == 240
    first, last = np.mean([g["loss_mean"] for g in gens[:3]]), np.mean([g["loss_mean"] for g in gens[-3:]])
    assert last < first - 0.05, (first, last)
    assert report["best_train_loss"] < zero_loss - 0.05
    assert report["best_dev"] >= report["zero_shot_dev"]  # z = 0 stays a candidate


def test_mlm_head_and_hinge_loss_run(tiny, tmp_path: Path) -> None:
    _, data, _ = tiny
    model, _, _ = tiny_setup(tmp_path / "m", mlm=True)
    task = write_task(tmp_path, loss="hinge")
    report = Tuner.start(tiny_config(model, data, task, budget=12), tmp_path / "run").run()
    cfg = json.loads((tmp_path / "run/config.json").read_text())
    assert cfg["head"] == "mlm" and cfg["loss"] == "hinge" and report["generation"] == 2


class Interrupting(LossOracle):
    """Wraps an oracle; raises KeyboardInterrupt on the ``after``-th training call (mid-generation)."""

    def __init__(self, inner: LossOracle, after: int) -> None:
        super().__init__()
        self.inner, self.after, self.calls = inner, after, 0
        self.private, self.label, self.cost = inner.private, inner.label, inner.cost

    def upload(self, name, split, loss=None):
        self.inner.upload(name, split, loss)

    def losses(self, prompts, split="train"):
        self.calls += 1
        if self.calls == self.after:
            raise KeyboardInterrupt
        return self.inner.losses(prompts, split)

    def logits(self, prompts, split):
        return self.inner.logits(prompts, split)


def final_state(run: Path) -> dict:
    folder = RunFolder(run)
    state = load_checkpoint(folder.file(CHECKPOINT))
    history = [{k: v for k, v in r.items() if k != "seconds"} for r in folder.read_history()]
    return {
        "mean": np.asarray(state["es"].mean),
        "sigma": state["es"].sigma,
        "best_z": state["best"]["z"],
        "best": {k: v for k, v in state["best"].items() if k != "z"},
        "history": history,
        "prompt": np.load(folder.file(PROMPT)),
        "calls": state["calls"],
        "generation": state["generation"],
    }


def assert_same(a: dict, b: dict) -> None:
    assert a["history"] == b["history"]
    assert a["best"] == b["best"] and a["calls"] == b["calls"] and a["generation"] == b["generation"]
    for key in ("mean", "best_z", "prompt"):
        np.testing.assert_array_equal(a[key], b[key])
    assert a["sigma"] == b["sigma"]


@pytest.fixture(scope="module")
def uninterrupted(tiny, tmp_path_factory) -> dict:
    model, data, task = tiny
    run = tmp_path_factory.mktemp("ref") / "run"
    Tuner.start(tiny_config(model, data, task, budget=60), run).run()
    return final_state(run)


def test_ctrl_c_then_resume_equals_an_uninterrupted_run(tiny, uninterrupted, tmp_path: Path) -> None:
    model, data, task = tiny
    cfg = tiny_config(model, data, task, budget=60)
    session = open_session(cfg)
    with pytest.raises(KeyboardInterrupt):
        Tuner.start(cfg, tmp_path / "run", oracle=Interrupting(session.oracle, after=6)).run()
    state = load_checkpoint(tmp_path / "run" / CHECKPOINT)
    assert state["generation"] == 5 and not state["finished"]  # lost only the generation in flight
    Tuner.resume(tmp_path / "run").run()
    assert_same(final_state(tmp_path / "run"), uninterrupted)


def test_crash_between_history_and_checkpoint_is_repaired(
    tiny, uninterrupted, tmp_path: Path, monkeypatch
) -> None:
    """A history line written for a generation whose checkpoint never landed is dropped on resume."""
    model, data, task = tiny
    real_save, count = ckpt_module.save_checkpoint, {"n": 0}

    def dying_save(path, state):
        count["n"] += 1
        if count["n"] == 4:  # initial checkpoint, generations 1, 2 land; generation 3's does not
            raise KeyboardInterrupt
        real_save(path, state)

    monkeypatch.setattr("data_owner.tuner.save_checkpoint", dying_save)
    with pytest.raises(KeyboardInterrupt):
        Tuner.start(tiny_config(model, data, task, budget=60), tmp_path / "run").run()
    monkeypatch.setattr("data_owner.tuner.save_checkpoint", real_save)
    lines = (tmp_path / "run" / HISTORY).read_text().splitlines()
    assert len(lines) == 4  # generation 0..3 recorded, checkpoint at generation 2
    Tuner.resume(tmp_path / "run").run()
    assert_same(final_state(tmp_path / "run"), uninterrupted)


def test_resume_refuses_changed_data(tiny, tmp_path: Path) -> None:
    model, data, task = tiny
    data2 = tmp_path / "data"
    data2.mkdir()
    for f in data.iterdir():
        (data2 / f.name).write_bytes(f.read_bytes())
    cfg = tiny_config(model, data2, task, budget=60)
    with pytest.raises(KeyboardInterrupt):
        Tuner.start(cfg, tmp_path / "run", oracle=Interrupting(open_session(cfg).oracle, after=2)).run()
    with open(data2 / "train.tsv", "a") as fh:
        fh.write("1\tw50 w51\n")
    with pytest.raises(DataOwnerError, match="data files changed"):
        Tuner.resume(tmp_path / "run")


def test_eval_scores_f1_for_an_f1_task(tiny, tmp_path: Path) -> None:
    from data_owner import metrics
    from data_owner.evaluate import evaluate

    model, data, _ = tiny
    task = write_task(tmp_path, metric="f1")
    Tuner.start(tiny_config(model, data, task, budget=12), tmp_path / "run").run()
    ev = evaluate(tmp_path / "run", "test")
    s = open_session(
        tiny_config(model, data, task, budget=12), splits=("test",), std_ref=1.0
    )  # prompt from file
    best = np.load(tmp_path / "run" / PROMPT)
    pred = s.oracle.logits(best[None], "test")[0].argmax(-1)
    s.close()
    labels = s.splits["test"].labels
    assert ev["metric"] == "f1" and ev["tuned"] == pytest.approx(100 * metrics.f1(pred, labels))
    assert ev["tuned_accuracy"] == pytest.approx(100 * metrics.accuracy(pred, labels))
