"""Tasks, data files, k-shot sampling, metrics, the projection and atomic files (no model needed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from data_owner import metrics
from data_owner.checkpoint import atomic_write_bytes
from data_owner.config import RunConfig
from data_owner.data import find_split, k_shot, load_split
from data_owner.errors import DataOwnerError
from data_owner.projection import Projection
from data_owner.task import builtin_tasks, load_task

REPO = Path(__file__).resolve().parents[1]
ROWS = {
    "sst2": (32, 32, 436),
    "yelp_polarity": (32, 32, 500),
    "ag_news": (64, 64, 500),
    "mrpc": (32, 32, 203),
    "rte": (32, 32, 135),
}


def test_builtin_tasks_follow_bbt() -> None:
    assert builtin_tasks() == sorted(ROWS)
    sst2, ag, mrpc, rte = (load_task(n) for n in ("sst2", "ag_news", "mrpc", "rte"))
    assert sst2.words == ["bad", "great"] and sst2.template == "<P> . {text} . It was <mask> ."
    assert ag.words == ["World", "Sports", "Business", "Tech"] and ag.num_classes == 4
    assert mrpc.words == ["No", "Yes"] and mrpc.metric == "f1" and mrpc.loss == "hinge"
    assert rte.words == ["Yes", "No"] and rte.kind == "pair"
    assert sst2.anchors() == ["It was terrible.", "It was great."]


@pytest.mark.parametrize("task", sorted(ROWS))
def test_shipped_data_loads_with_expected_sizes(task: str) -> None:
    spec = load_task(task)
    sizes = tuple(
        len(load_split(find_split(REPO / "data" / task, s), spec)) for s in ("train", "dev", "test")
    )
    assert sizes == ROWS[task]


def test_tsv_is_read_without_quote_handling(tmp_path: Path) -> None:
    path = tmp_path / "train.tsv"
    path.write_text('label\ttext\n1\t"quoted start, "inner" quotes\n0\tplain\n', encoding="utf-8")
    ex = load_split(path, load_task("sst2"))
    assert ex[0].texts["text"] == '"quoted start, "inner" quotes' and [e.label for e in ex] == [1, 0]


def test_csv_and_jsonl_give_the_same_examples_as_tsv(tmp_path: Path) -> None:
    spec = load_task("mrpc")
    (tmp_path / "a.tsv").write_text("label\ttext_a\ttext_b\n1\tx, y\tz\n0\tp\tq\n")
    (tmp_path / "a.csv").write_text('label,text_a,text_b\n1,"x, y",z\n0,p,q\n')
    (tmp_path / "a.jsonl").write_text(
        json.dumps({"label": 1, "text_a": "x, y", "text_b": "z"})
        + "\n"
        + json.dumps({"label": "0", "text_a": "p", "text_b": "q"})
        + "\n"
    )
    got = [load_split(tmp_path / f"a.{ext}", spec) for ext in ("tsv", "csv", "jsonl")]
    assert got[0] == got[1] == got[2]
    assert got[0][0].texts == {"text_a": "x, y", "text_b": "z"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("label\ttext\n0\tfine\n7\tbad label\n", "train.tsv:3: label '7' is not one of the labels"),
        ("label\ttext\n", "empty split"),
        ("", "empty split"),
        ("label\ttext\n0\ttoo\tmany\n", "train.tsv:2: expected 2 tab-separated columns, found 3"),
        ("label\ttext\textra\n", "header has 3 columns"),
    ],
)
def test_bad_data_files_are_clear_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "train.tsv"
    path.write_text(content)
    with pytest.raises(DataOwnerError, match=message.replace("(", r"\(")):
        load_split(path, load_task("sst2"))


def test_missing_split_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataOwnerError, match=r"data file not found: .*dev\.tsv"):
        find_split(tmp_path, "dev")


def write_task(tmp_path: Path, suffix: str = ".yaml", **fields) -> Path:
    base = {
        "name": "mine",
        "labels": ["neg", "pos"],
        "template": "<P> {text} It was <mask> .",
        "words": ["bad", "good"],
    }
    path = tmp_path / f"task{suffix}"
    text = json.dumps({**base, **fields})  # JSON is valid YAML too
    path.write_text(text)
    return path


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_user_task_from_a_file(tmp_path: Path, suffix: str) -> None:
    spec = load_task(str(write_task(tmp_path, suffix, descriptions=["Bad.", "Good."])))
    assert spec.labels == ["neg", "pos"] and spec.anchors() == ["Bad.", "Good."]
    data = tmp_path / "train.tsv"
    data.write_text("label\ttext\npos\tnice\nneg\tawful\n")
    assert [e.label for e in load_split(data, spec)] == [1, 0]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"template": "<P> {text} It was ."}, "mask slot <mask>"),
        ({"template": "<P> It was <mask> ."}, "no text slot"),
        ({"template": "{text} <P> <mask>"}, "may only come first"),
        ({"template": "{sentence} <mask>"}, "no text slot"),
        ({"words": ["bad"]}, "words has 1 entries but the task has 2 labels"),
        ({"labels": ["a", "a"]}, "distinct"),
        ({"kind": "pair"}, "no text slot"),
    ],
)
def test_bad_user_tasks_are_clear_errors(tmp_path: Path, fields: dict, message: str) -> None:
    with pytest.raises(DataOwnerError, match=message):
        load_task(str(write_task(tmp_path, **fields)))


def test_unknown_task_and_missing_task_file() -> None:
    with pytest.raises(DataOwnerError, match="unknown task 'nope'"):
        load_task("nope")
    with pytest.raises(DataOwnerError, match="task file not found"):
        load_task("/nonexistent/task.yaml")


def test_k_shot_is_stratified_and_seeded() -> None:
    spec = load_task("ag_news")
    ex = load_split(REPO / "data/ag_news/test.tsv", spec)
    a, b, c = k_shot(ex, 4, 1, 4), k_shot(ex, 4, 1, 4), k_shot(ex, 4, 2, 4)
    assert a == b and a != c
    assert np.bincount([e.label for e in a]).tolist() == [4, 4, 4, 4]
    assert len({e.texts["text"] for e in a}) == 16
    with pytest.raises(DataOwnerError, match="fewer than k=200"):
        k_shot(ex, 200, 0, 4)


def test_metrics_by_hand() -> None:
    labels = np.array([1, 1, 0, 0, 1])
    pred = np.array([1, 0, 0, 1, 1])
    assert metrics.accuracy(pred, labels) == pytest.approx(3 / 5)
    assert metrics.f1(pred, labels) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    logits = np.array([[[2.0, 0.0], [0.0, 1.0]]])  # one candidate, two examples
    y = np.array([0, 0])
    ce = np.mean([np.log(1 + np.exp(-2.0)), np.log(1 + np.e)])
    assert metrics.loss("ce", logits, y) == pytest.approx([ce])
    assert metrics.loss("hinge", logits, y) == pytest.approx([np.mean([0.0, 3.0])])


def test_projection_follows_the_bbt_scale() -> None:
    std = Projection.entry_std(alpha=2.0, std_ref=0.05, intrinsic_dim=100, sigma0=0.5)
    assert std == pytest.approx(2.0 * 0.05 / (10 * 0.5))
    proj = Projection(4, 64, 100, std, seed=3)
    assert np.array_equal(proj.A, Projection(4, 64, 100, std, seed=3).A)
    z = np.random.default_rng(0).normal(0, 0.5, size=(200, 100))
    prompts = proj(z)
    assert prompts.shape == (200, 4, 64)
    assert prompts.std() == pytest.approx(2.0 * 0.05, rel=0.05)  # alpha * std_ref
    assert np.array_equal(proj(np.zeros(100)), np.zeros((4, 64)))


def test_budget_below_one_generation() -> None:
    cfg = RunConfig(task="sst2", data_dir="data/sst2", model="m", popsize=20, budget=19)
    with pytest.raises(DataOwnerError, match="below one generation"):
        cfg.check_budget()
    assert RunConfig(task="sst2", data_dir="d", model="m", popsize=20, budget=45).generations == 2


def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "state.bin"
    atomic_write_bytes(path, b"old")

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(path, b"new and longer")
    assert path.read_bytes() == b"old"
