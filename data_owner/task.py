"""Task specifications: labels, templates, verbalizer words and label descriptions.

A task says how an example becomes model input and how the model's output becomes a label:

- ``template``: the Black-Box Tuning (BBT) MLM template, e.g. ``<P> . {text} . It was <mask> .``.  The
  continuous prompt always sits right after the first special token (``[CLS]``/``<s>``); a leading ``<P>``
  marks that place and may appear nowhere else.  ``<mask>`` is the verbalizer position.
- ``words``: one verbalizer word per label (MLM head: logits of these words at ``<mask>``).
- ``similarity_template`` and ``descriptions``: for sentence encoders without an MLM head (the bundled
  all-MiniLM-L6-v2), the similarity head scores the mean-pooled sentence against one anchor sentence per
  label ("It was terrible." / "It was great.").
- ``decoder``: for causal decoders (LLaMA family), a :class:`DecoderTemplate`: a template that ends in the
  answer slot ``<answer>`` (the next token there decides the label) and one verbalizer word per label, written
  as it follows the template (usually with its leading space, " positive"); each must be ONE token of the
  model's tokenizer, which is checked when a run starts (the tokenizer is the model's, not the task's).

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
ANSWER_MARK = "<answer>"
SLOT_RE = re.compile(r"\{(\w+)\}")
SLOTS = {"single": ("text",), "pair": ("text_a", "text_b")}

Head = Literal["similarity", "mlm", "next-token"]


class DecoderTemplate(BaseModel):
    """A causal decoder's template and verbalizer for one task.

    The model reads the filled template up to ``<answer>`` and its next-token logits of ``words`` are the
    class scores, so the answer slot must be the template's very end: anything after it would be read
    before the answer is decided.  The text after the last text slot is the *answer template*: with suffix
    placement the prompt goes between the example text and it (``split``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    template: str
    words: list[str] = Field(min_length=2)

    @model_validator(mode="after")
    def _check(self) -> DecoderTemplate:
        if self.template.count(ANSWER_MARK) != 1 or not self.template.endswith(ANSWER_MARK):
            raise ValueError(
                f"decoder template {self.template!r} must end with the answer slot {ANSWER_MARK} "
                "(exactly one, nothing after it)"
            )
        for mark in (MASK_MARK, PROMPT_MARK):
            if mark in self.template:
                raise ValueError(
                    f"decoder template {self.template!r} may not contain {mark}: the prompt's place is "
                    "chosen by --placement and the answer slot is " + ANSWER_MARK
                )
        if len(set(self.words)) != len(self.words) or any(not w.strip() for w in self.words):
            raise ValueError(f"decoder words must be distinct and non-empty, got {self.words}")
        return self

    def split(self) -> tuple[str, str]:
        """(example part, answer template): the template cut right after its last text slot, the answer
        slot dropped.  ``"Review: {text}\nSentiment:<answer>"`` -> ``("Review: {text}", "\nSentiment:")``."""
        body = self.template.removesuffix(ANSWER_MARK)
        last = list(SLOT_RE.finditer(body))[-1]
        return body[: last.end()], body[last.end() :]


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
    decoder: DecoderTemplate | None = None

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
        if self.decoder is not None:
            check_template(
                self.decoder.template.removesuffix(ANSWER_MARK),
                self.kind,
                need_mask=False,
                what="decoder template",
            )
            if len(self.decoder.words) != n:
                raise ValueError(
                    f"decoder.words has {len(self.decoder.words)} entries but the task has {n} labels"
                )
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
        if head == "next-token":
            if self.decoder is None:
                raise DataOwnerError(
                    f"task {self.name!r} has no decoder section (decoder: template, words); a decoder "
                    "checkpoint needs one"
                )
            return self.decoder.template
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
