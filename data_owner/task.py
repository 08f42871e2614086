"""Task specifications: labels, templates, verbalizer words and label descriptions.

A task says how an example becomes model input and how the model's output becomes a label:

- ``template``: the Black-Box Tuning (BBT) MLM template, e.g. ``<P> . {text} . It was <mask> .``.  The
  continuous prompt always sits right after the first special token (``[CLS]``/``<s>``); a leading ``<P>``
  marks that place and may appear nowhere else.  ``<mask>`` is the verbalizer position.
- ``words``: one verbalizer word per label (MLM head: logits of these words at ``<mask>``).
- ``similarity_template`` and ``descriptions``: for sentence encoders without an MLM head (the bundled
  all-MiniLM-L6-v2), the similarity head scores the mean-pooled sentence against one anchor sentence per
  label ("It was terrible." / "It was great.").

Built-in tasks live as YAML files in ``data_owner/tasks/``; a user-defined task is the same YAML/JSON
format in a file of the user's choosing.  This module only parses and validates; it does no I/O on data.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from data_owner.errors import DataOwnerError

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
PROMPT_MARK = "<P>"
MASK_MARK = "<mask>"
SLOT_RE = re.compile(r"\{(\w+)\}")
SLOTS = {"single": ("text",), "pair": ("text_a", "text_b")}

Head = Literal["similarity", "mlm"]


class TaskSpec(BaseModel):
    """One classification task; label ``i`` of the model output is ``labels[i]`` in the data files."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: Literal["single", "pair"] = "single"
    labels: list[str] = Field(min_length=2, description="label values as written in the data files")
    label_names: list[str] | None = None
    template: str
    words: list[str]
    similarity_template: str | None = None
    descriptions: list[str] | None = None
    metric: Literal["accuracy", "f1"] = "accuracy"
    loss: Literal["ce", "hinge"] = "ce"

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_as_text(cls, value: object) -> object:
        if isinstance(value, list):
            return [str(v) for v in value]
        return value

    @model_validator(mode="after")
    def _check(self) -> TaskSpec:
        n = len(self.labels)
        if len(set(self.labels)) != n:
            raise ValueError(f"labels must be distinct, got {self.labels}")
        for field in ("label_names", "words", "descriptions"):
            value = getattr(self, field)
            if value is not None and len(value) != n:
                raise ValueError(f"{field} has {len(value)} entries but the task has {n} labels")
        check_template(self.template, self.kind, need_mask=True, what="template")
        if self.similarity_template is not None:
            check_template(self.similarity_template, self.kind, need_mask=False, what="similarity_template")
        return self

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def slots(self) -> tuple[str, ...]:
        return SLOTS[self.kind]

    def template_for(self, head: Head) -> str:
        """The template the given head reads (the similarity head falls back to the bare text slots)."""
        if head == "mlm":
            return self.template
        if self.similarity_template is not None:
            return self.similarity_template
        return " ? ".join("{" + s + "}" for s in self.slots)

    def anchors(self) -> list[str]:
        """Label descriptions for the similarity head (the verbalizer words when none are given)."""
        return list(self.descriptions) if self.descriptions is not None else list(self.words)

    def label_index(self, raw: str) -> int | None:
        try:
            return self.labels.index(raw)
        except ValueError:
            return None


def check_template(template: str, kind: str, need_mask: bool, what: str = "template") -> None:
    """Raise ``ValueError`` unless ``template`` has every text slot of ``kind`` and, if needed, ``<mask>``."""
    slots = SLOTS[kind]
    found = SLOT_RE.findall(template)
    missing = [s for s in slots if s not in found]
    if missing:
        want = ", ".join("{" + s + "}" for s in slots)
        raise ValueError(f"{what} {template!r} has no text slot {missing}; a {kind} task needs {want}")
    unknown = [s for s in found if s not in slots]
    if unknown:
        raise ValueError(f"{what} {template!r} has unknown slots {unknown}; allowed: {list(slots)}")
    for s in slots:
        if found.count(s) != 1:
            raise ValueError(f"{what} {template!r} must use {{{s}}} exactly once")
    n_mask = template.count(MASK_MARK)
    if need_mask and n_mask != 1:
        raise ValueError(f"{what} {template!r} must contain the mask slot {MASK_MARK} exactly once")
    if not need_mask and n_mask > 1:
        raise ValueError(f"{what} {template!r} may contain {MASK_MARK} at most once")
    body = template.strip()
    if body.startswith(PROMPT_MARK):
        body = body[len(PROMPT_MARK) :]
    if PROMPT_MARK in body:
        raise ValueError(f"{what} {template!r}: the prompt {PROMPT_MARK} may only come first")


def strip_prompt_mark(template: str) -> str:
    body = template.strip()
    return body[len(PROMPT_MARK) :].strip() if body.startswith(PROMPT_MARK) else body


def builtin_tasks() -> list[str]:
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


def load_task(name_or_path: str) -> TaskSpec:
    """A built-in task by name (``sst2``) or a user task from a ``.yaml``/``.yml``/``.json`` file."""
    path = Path(name_or_path)
    if path.suffix.lower() not in {".yaml", ".yml", ".json"}:
        if name_or_path not in builtin_tasks():
            raise DataOwnerError(
                f"unknown task {name_or_path!r}: built-in tasks are {builtin_tasks()}, "
                "or give a task file (.yaml/.yml/.json)"
            )
        path = TASKS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise DataOwnerError(f"task file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        raw = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, json.JSONDecodeError, yaml.YAMLError) as exc:
        raise DataOwnerError(f"cannot read task file {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise DataOwnerError(f"task file {path} must hold a mapping (name, labels, template, words, ...)")
    raw.setdefault("name", path.stem)
    try:
        return TaskSpec.model_validate(raw)
    except ValidationError as exc:
        msgs = "; ".join(short_error(e) for e in exc.errors())
        raise DataOwnerError(f"invalid task {path}: {msgs}") from exc


def short_error(err: dict) -> str:
    loc = ".".join(str(x) for x in err.get("loc", ()))
    msg = str(err.get("msg", "")).removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg
