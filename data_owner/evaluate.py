"""Scoring a run's saved tuned prompt (and the zero-shot prompt, z = 0) on a labelled file.

The prompt scored is exactly the one the run saved (``prompt.npy``): the projection is rebuilt with the
scale fixed at training time (``std_ref`` in ``config.json``), never re-measured on the file being scored,
and the saved prompt is checked against the checkpoint's best point before it is used.  So scoring the run's
own dev file reproduces the dev score the run recorded, and the same file scores the same from any folder.

The file is a split of the run's data folder (``--split NAME``: ``<data-dir>/NAME.*``) or any labelled
file (``--file PATH``); the record names its absolute path and sha256.  Records are
``eval_<name>[_<backend>].json`` in the run folder; an earlier record is never replaced silently: a new
one gets the next free number (``eval_test.2.json``, ...) unless ``force`` replaces the unnumbered one.
Scores are in percent.

With the secure backend the prompt is secret-shared like in training, and only the class scores of the data
owner's own examples are reconstructed, here.
"""

from __future__ import annotations

import re
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
from data_owner.runfolder import CHECKPOINT, PROMPT, RunFolder
from data_owner.session import open_session, split_path
from data_owner.task import short_error
from data_owner.tuner import stored_std_ref

#: the oracle's name for a file given by path (never k-shot resampled, unlike ``train`` and ``dev``)
FILE_SPLIT = "file"


def evaluate(
    run_dir: Path,
    split: str = "test",
    data_dir: str | None = None,
    baseline: bool = True,
    oracle: LossOracle | None = None,
    overrides: dict[str, Any] | None = None,
    file: Path | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Score the run's saved prompt (and z = 0) on ``split`` of the data folder, or on ``file``.

    ``overrides`` (e.g. ``backend``, ``cluster``, ``model``) evaluate on another backend than the run's:
    a prompt tuned in plaintext can be confirmed on the cluster, the prompt travelling as shares.
    Returns the record, also written to the run folder (its name under ``output``).
    """
    folder = RunFolder(run_dir)
    record = folder.read_config()
    std_ref = stored_std_ref(folder, record)
    config = RunConfig.model_validate(record["config"])
    tuned_on = config.backend
    updates = {k: v for k, v in (overrides or {}).items() if v is not None}
    if data_dir is not None:
        updates["data_dir"] = str(Path(data_dir).resolve())
    if updates:
        try:
            config = RunConfig.model_validate({**config.model_dump(), **updates})
        except ValidationError as exc:
            raise DataOwnerError(
                f"invalid evaluation options: {'; '.join(short_error(e) for e in exc.errors())}"
            ) from exc
    if file is not None:
        path, name, oracle_split = Path(file).resolve(), Path(file).stem, FILE_SPLIT
        if not path.is_file():
            raise DataOwnerError(f"data file not found: {file}")
    else:
        path, name, oracle_split = split_path(config, split), split, split
    state = load_checkpoint(folder.file(CHECKPOINT))
    session = open_session(
        config, splits=(oracle_split,), oracle=oracle, std_ref=std_ref, files={oracle_split: path}
    )
    try:
        prompt = saved_prompt(folder, session.projection(state["best"]["z"]))
        data = session.splits[oracle_split]
        prompts = (
            np.stack([prompt, session.projection(np.zeros(config.intrinsic_dim))])
            if baseline
            else prompt[None]
        )
        logits = session.oracle.logits(prompts, oracle_split)
        scores = [metrics.percent(metrics.score(session.task.metric, lg, data.labels)) for lg in logits]
        acc = [metrics.percent(metrics.accuracy(lg.argmax(-1), data.labels)) for lg in logits]
        losses = [float(v) for v in metrics.loss(session.loss, logits, data.labels)]  # the dev-loss formula
        out: dict[str, Any] = {
            "name": name,
            "split": None if file is not None else split,
            "file": str(path),
            "sha256": session.data_hashes[oracle_split],
            "k_shot_resampled": config.k_shot is not None and oracle_split in ("train", "dev"),
            "examples": len(data),
            "metric": session.task.metric,
            "unit": "percent",
            "backend": session.oracle.label,
            "private": session.oracle.private,
            "privacy": session.oracle.privacy(),
            "tuned": scores[0],
            "tuned_accuracy": acc[0],
            "tuned_loss": losses[0],
            "run_status": "finished"
            if state["finished"]
            else f"incomplete (generation {state['generation']})",
            "best_source": state["best"]["source"],
            "best_calls": state["best"]["calls"],
            "std_ref": std_ref,
            "cost": session.oracle.cost.as_dict(),
        }
        if baseline:
            out.update(
                zero_shot=scores[1],
                zero_shot_accuracy=acc[1],
                zero_shot_loss=losses[1],
                gain=scores[0] - scores[1],
                gain_interval_95=list(metrics.gain_interval(session.task.metric, *logits, data.labels)),
            )
    finally:
        session.close()
    out["tuned_on"] = tuned_on
    target = output_file(folder, name, "" if config.backend == tuned_on else f"_{config.backend}", force)
    out["output"] = target.name
    atomic_write_json(target, out)
    write_report(folder)
    return out


def saved_prompt(folder: RunFolder, rebuilt: np.ndarray) -> np.ndarray:
    """``prompt.npy``, after checking it is the checkpoint's best point under the stored projection."""
    path = folder.file(PROMPT)
    if not path.is_file():
        raise DataOwnerError(f"{folder.path} has no {PROMPT}; resume the run to rebuild it")
    prompt = np.load(path)
    if prompt.shape != rebuilt.shape or not np.allclose(prompt, rebuilt, rtol=1e-9, atol=1e-12):
        raise DataOwnerError(
            f"{path} is not the prompt of the run's checkpoint (changed by hand, or from another run); "
            "resume the run to rebuild it"
        )
    return prompt


def output_file(folder: RunFolder, name: str, suffix: str, force: bool) -> Path:
    """``eval_<name><suffix>.json``, or with ``.2``, ``.3``, ... when it exists (``force``: replace it)."""
    stem = EVAL_PREFIX + (re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or FILE_SPLIT) + suffix
    target = folder.file(f"{stem}.json")
    n = 2
    while target.exists() and not force:
        target = folder.file(f"{stem}.{n}.json")
        n += 1
    return target
