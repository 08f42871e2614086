"""Scoring a run's tuned prompt (and the zero-shot prompt, z = 0) on a labelled split, e.g. ``test``.

The prompt never leaves the data owner in the clear: with the secure backend it is secret-shared like in
training, and only the class scores of the data owner's own examples are reconstructed, here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from data_owner import metrics
from data_owner.checkpoint import atomic_write_json, load_checkpoint
from data_owner.config import RunConfig
from data_owner.errors import DataOwnerError
from data_owner.oracle import LossOracle
from data_owner.report import EVAL_PREFIX, write_report
from data_owner.runfolder import CHECKPOINT, RunFolder
from data_owner.session import open_session
from data_owner.task import short_error


def evaluate(
    run_dir: Path,
    split: str = "test",
    data_dir: str | None = None,
    baseline: bool = True,
    oracle: LossOracle | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score the run's best prompt (and z = 0) on ``split``; writes ``eval_<split>[_<backend>].json``.

    ``overrides`` (e.g. ``backend``, ``cluster``, ``model``) evaluate on another backend than the run's:
    a prompt tuned in plaintext can be confirmed on the cluster, the prompt travelling as shares.
    """
    folder = RunFolder(run_dir)
    record = folder.read_config()
    config = RunConfig.model_validate(record["config"])
    tuned_on = config.backend
    updates = {k: v for k, v in (overrides or {}).items() if v is not None}
    if data_dir is not None:
        updates["data_dir"] = data_dir
    if updates:
        try:
            config = RunConfig.model_validate({**config.model_dump(), **updates})
        except ValidationError as exc:
            raise DataOwnerError(
                f"invalid evaluation options: {'; '.join(short_error(e) for e in exc.errors())}"
            ) from exc
    state = load_checkpoint(folder.file(CHECKPOINT))
    session = open_session(config, splits=(split,), oracle=oracle)
    try:
        data = session.splits[split]
        Z = (
            np.stack([state["best"]["z"], np.zeros(config.intrinsic_dim)])
            if baseline
            else state["best"]["z"][None]
        )
        logits = session.oracle.logits(session.projection(Z), split)
        scores = [metrics.score(session.task.metric, lg, data.labels) for lg in logits]
        acc = [metrics.accuracy(lg.argmax(-1), data.labels) for lg in logits]
        out: dict[str, Any] = {
            "split": split,
            "examples": len(data),
            "metric": session.task.metric,
            "backend": session.oracle.label,
            "private": session.oracle.private,
            "privacy": session.oracle.privacy(),
            "tuned": scores[0],
            "tuned_accuracy": acc[0],
            "run_status": "finished"
            if state["finished"]
            else f"incomplete (generation {state['generation']})",
            "best_source": state["best"]["source"],
            "best_calls": state["best"]["calls"],
            "cost": session.oracle.cost.as_dict(),
        }
        if baseline:
            out.update(zero_shot=scores[1], zero_shot_accuracy=acc[1], gain=scores[0] - scores[1])
    finally:
        session.close()
    suffix = "" if config.backend == tuned_on else f"_{config.backend}"
    out["tuned_on"] = tuned_on
    atomic_write_json(folder.file(f"{EVAL_PREFIX}{split}{suffix}.json"), out)
    write_report(folder)
    return out
