"""Loading, validating and sampling the data owner's labelled examples.

Formats, chosen by the file suffix:

- ``.tsv``: one header line, tab-separated, **no quoting** (the format of ``data/``, see data/README.md):
  ``label<TAB>text`` or ``label<TAB>text_a<TAB>text_b``.
- ``.csv``: one header line, standard CSV quoting, columns named ``label`` and the task's text slots.
- ``.jsonl``: one JSON object per line with the keys ``label`` and the task's text slots.

Every problem is a :class:`~data_owner.errors.DataOwnerError` naming the file and line: a missing file, a
wrong column count, a label outside the task's labels, an empty split.  k-shot sampling is stratified and
deterministic for a seed.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_owner.errors import DataOwnerError
from data_owner.task import TaskSpec

FORMATS = (".tsv", ".csv", ".jsonl")

#: The project's bundled few-shot data (``data/<task>``, see data/README.md), located from this package so
#: that it does not depend on the current directory.
BUNDLED_DATA = Path(__file__).resolve().parents[1] / "data"


def bundled_data_dir(task: str) -> Path:
    """The absolute folder of a built-in task's bundled data; an error when it is missing."""
    folder = BUNDLED_DATA / task
    if not folder.is_dir():
        raise DataOwnerError(
            f"no --data-dir given and this installation has no bundled data for {task!r} ({folder})"
        )
    return folder


@dataclass(frozen=True)
class Example:
    """One labelled example: the text slots (``text`` or ``text_a``/``text_b``) and the class index."""

    texts: dict[str, str]
    label: int


def find_split(data_dir: Path, split: str) -> Path:
    """``<data_dir>/<split>.{tsv,csv,jsonl}``; exactly one must exist."""
    found = [data_dir / f"{split}{ext}" for ext in FORMATS if (data_dir / f"{split}{ext}").is_file()]
    if not found:
        raise DataOwnerError(f"data file not found: {data_dir / split}.tsv (also looked for .csv and .jsonl)")
    if len(found) > 1:
        raise DataOwnerError(f"ambiguous split {split!r} in {data_dir}: {[p.name for p in found]}")
    return found[0]


def load_split(path: Path, task: TaskSpec) -> list[Example]:
    """Read and validate one split file; raises on any malformed row and on an empty file."""
    path = Path(path)
    if not path.is_file():
        raise DataOwnerError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".tsv":
            rows = _read_tsv(path, task)
        elif suffix == ".csv":
            rows = _read_csv(path, task)
        elif suffix == ".jsonl":
            rows = _read_jsonl(path, task)
        else:
            raise DataOwnerError(f"unsupported data format {suffix!r} for {path}; use one of {FORMATS}")
    except UnicodeDecodeError as exc:
        raise DataOwnerError(f"{path} is not UTF-8 text: {exc}") from exc
    examples = []
    for line_no, raw_label, texts in rows:
        index = task.label_index(raw_label.strip())
        if index is None:
            raise DataOwnerError(
                f"{path}:{line_no}: label {raw_label!r} is not one of the labels of task {task.name!r}: "
                f"{task.labels}"
            )
        examples.append(Example(texts=texts, label=index))
    if not examples:
        raise DataOwnerError(f"empty split: {path} has no examples")
    return examples


def _read_tsv(path: Path, task: TaskSpec) -> list[tuple[int, str, dict[str, str]]]:
    with path.open(encoding="utf-8", newline="") as fh:
        lines = fh.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise DataOwnerError(f"empty split: {path} has no header and no examples")
    ncol = 1 + len(task.slots)
    header = lines[0].rstrip("\r").split("\t")
    if len(header) != ncol:
        raise DataOwnerError(
            f"{path}:1: header has {len(header)} columns, the {task.kind} task {task.name!r} needs {ncol} "
            f"(label, {', '.join(task.slots)})"
        )
    rows = []
    for i, line in enumerate(lines[1:], start=2):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) != ncol:
            raise DataOwnerError(f"{path}:{i}: expected {ncol} tab-separated columns, found {len(cols)}")
        rows.append((i, cols[0], dict(zip(task.slots, cols[1:], strict=True))))
    return rows


def _read_csv(path: Path, task: TaskSpec) -> list[tuple[int, str, dict[str, str]]]:
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None:
            raise DataOwnerError(f"empty split: {path} has no header and no examples")
        need = ["label", *task.slots]
        missing = [c for c in need if c not in reader.fieldnames]
        if missing:
            raise DataOwnerError(f"{path}:1: missing columns {missing} (have {reader.fieldnames})")
        rows = []
        for row in reader:
            line_no = reader.line_num
            if any(row.get(c) is None for c in need):
                raise DataOwnerError(f"{path}:{line_no}: too few columns")
            rows.append((line_no, row["label"], {s: row[s] for s in task.slots}))
    return rows


def _read_jsonl(path: Path, task: TaskSpec) -> list[tuple[int, str, dict[str, str]]]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for i, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataOwnerError(f"{path}:{i}: not valid JSON: {exc.msg}") from exc
            if not isinstance(obj, dict):
                raise DataOwnerError(f"{path}:{i}: each line must be a JSON object")
            missing = [c for c in ("label", *task.slots) if c not in obj]
            if missing:
                raise DataOwnerError(f"{path}:{i}: missing keys {missing}")
            rows.append((i, str(obj["label"]), {s: str(obj[s]) for s in task.slots}))
    return rows


def k_shot(examples: list[Example], k: int, seed: int, num_classes: int, where: str = "") -> list[Example]:
    """``k`` examples per class drawn without replacement (stratified, deterministic for ``seed``).

    The result keeps the classes interleaved in a seeded random order so that a prefix is balanced.
    """
    if k < 1:
        raise DataOwnerError(f"k-shot must be at least 1, got {k}")
    rng = np.random.default_rng(seed)
    chosen: list[Example] = []
    for c in range(num_classes):
        pool = [e for e in examples if e.label == c]
        if len(pool) < k:
            raise DataOwnerError(f"{where or 'split'}: class {c} has {len(pool)} examples, fewer than k={k}")
        idx = rng.choice(len(pool), size=k, replace=False)
        chosen.extend(pool[i] for i in sorted(idx))
    order = rng.permutation(len(chosen))
    return [chosen[i] for i in order]
