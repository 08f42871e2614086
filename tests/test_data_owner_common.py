"""Shared builders for the data owner's tests: a tiny random BERT and a small learnable few-shot task.

The tiny model (``helpers_models.make_tiny_model``) says nothing about accuracy; the synthetic task uses
disjoint token ranges per class so that a prompt can move the loss.  The one test here checks the builders.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from helpers_models import make_tiny_model

from data_owner.config import RunConfig

TINY_TASK = {
    "name": "tiny",
    "kind": "single",
    "labels": [0, 1],
    "template": "<P> {text} w3 <mask>",
    "words": ["w1", "w2"],
    "similarity_template": "{text}",
    "descriptions": ["w10 w11 w12", "w60 w61 w62"],
    "loss": "ce",
}


def write_task(folder: Path, **overrides) -> Path:
    path = folder / "tiny_task.json"
    path.write_text(json.dumps({**TINY_TASK, **overrides}))
    return path


def synthetic_rows(n_per_class: int, seed: int) -> list[tuple[int, str]]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_per_class):
        for label, (lo, hi) in enumerate(((5, 40), (45, 90))):
            words = rng.integers(lo, hi, size=int(rng.integers(3, 9)))
            rows.append((label, " ".join(f"w{w}" for w in words)))
        del i
    return rows


def write_split(path: Path, rows: list[tuple[int, str]]) -> Path:
    path.write_text("label\ttext\n" + "".join(f"{lab}\t{text}\n" for lab, text in rows), encoding="utf-8")
    return path


def write_data(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_split(folder / "train.tsv", synthetic_rows(8, 1))
    write_split(folder / "dev.tsv", synthetic_rows(8, 2))
    write_split(folder / "test.tsv", synthetic_rows(16, 3))
    return folder


def tiny_setup(root: Path, mlm: bool = False) -> tuple[Path, Path, Path]:
    """(model folder, data folder, task file) under ``root``."""
    model = make_tiny_model(root / ("model_mlm" if mlm else "model"), mlm=mlm, seed=3)
    data = write_data(root / "data")
    task = write_task(root)
    return model, data, task


def tiny_config(model: Path, data: Path, task: Path, **overrides) -> RunConfig:
    base = dict(
        task=str(task),
        data_dir=str(data),
        model=str(model),
        backend="plain",
        prompt_length=3,
        intrinsic_dim=8,
        popsize=6,
        budget=36,
        eval_every=12,
        seed=5,
        max_length=32,
        alpha=4.0,
        scale_ref="output",
    )
    return RunConfig.model_validate({**base, **overrides})


def test_builders_make_a_loadable_model_and_balanced_data(tmp_path: Path) -> None:
    from data_owner.session import open_session

    model, data, task = tiny_setup(tmp_path)
    session = open_session(tiny_config(model, data, task))
    train = session.splits["train"]
    assert train.embeds.shape[0] == 16 and np.bincount(train.labels).tolist() == [8, 8]
    assert session.head == "similarity" and not session.oracle.private
    session.close()
