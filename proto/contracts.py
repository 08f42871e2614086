"""Public parameter contracts that both ends of the party API must agree on, defined once.

The data owner builds these objects and the servers validate them (``extra="forbid"``: an unknown field is
an error, not silently dropped), so a field added on one side cannot drift from the other.  Nothing here is
secret: every server sees the parameters of every batch.
"""

from __future__ import annotations

import re
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

#: Names of uploaded tensors and of program outputs (``<split>.p<i>.x``, ``prompts``, ``anchors.x``, ...).
TENSOR_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
#: Most parts one evaluation may name: each part is one more pass through the encoder (its rounds), and
#: two named inputs of a job (``limits.max_inputs``, 64 by default).
MAX_PARTS = 16


class TuningPart(BaseModel):
    """One part of a split evaluated inside a multi-part request: its inputs are ``<name>.x`` [n_i, T_i, H]
    (and ``<name>.y`` [n_i, C] for losses), padded only to this part's own longest row, so that a split
    shared in length-sorted parts wastes little on padding and still takes one request per generation."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=TENSOR_NAME_PATTERN.pattern)
    #: real tokens per example of this part (right padding), as :attr:`TuningParams.lengths`.
    lengths: list[int]
    mask_positions: list[int] | None = None


class TuningParams(BaseModel):
    """Public parameters of one ``prompt_tuning`` evaluation (split, output, loss, head, padding and the
    head's public pieces, attention mode)."""

    model_config = ConfigDict(extra="forbid")

    #: the inputs' prefix (``<split>.x``, ``<split>.y``) of a one-part request; with ``parts``, the name of
    #: the split the parts come from (informational).
    split: str = Field(pattern=TENSOR_NAME_PATTERN.pattern)
    output: Literal["losses", "logits"]
    loss: Literal["ce", "hinge"] = "ce"
    head: Literal["similarity", "mlm"]
    #: real tokens per example (right padding: example i's first ``lengths[i]`` rows are real).  Lengths,
    #: not [n, T] masks, so that the parameters of a whole test split stay under ``max_params_bytes``.
    #: Empty when ``parts`` is given (each part carries its own).
    lengths: list[int] = Field(default_factory=list)
    #: A multi-part request: the parts in order, their rows concatenated (part 0's first) give the rows of
    #: ``logits`` [P, sum n_i, C], and ``losses`` is the loss over all of them (for a mean loss: the
    #: row-weighted mean of the parts' means, exactly what one request over the whole split computes).
    parts: list[TuningPart] | None = Field(default=None, min_length=1, max_length=MAX_PARTS)
    #: Most sequences (candidates x examples) in one pass of the secure forward (0: a part in one pass):
    #: the servers' memory grows with it, so a capped request runs each part in candidate groups.
    max_sequences: int = Field(default=0, ge=0)
    #: positions (the same in every example) the similarity head leaves out of its mean pooling, e.g. the
    #: prompt's placeholder rows; they still take part in attention.
    pool_exclude: list[int] | None = None
    mask_positions: list[int] | None = None
    label_words: list[int] | None = None
    #: real tokens per anchor sentence (similarity head), right padding as ``lengths``.
    anchor_lengths: list[int] | None = None
    scale: float = Field(default=20.0, gt=0, le=1000)
    attention: Literal["softmax", "rfa", "favor"] = "softmax"
    features: int = Field(default=64, gt=0, le=4096)

    def part_list(self) -> list[TuningPart]:
        """The parts this request evaluates: ``parts``, or the one part the top-level fields describe."""
        if self.parts is not None:
            return list(self.parts)
        return [TuningPart(name=self.split, lengths=self.lengths, mask_positions=self.mask_positions)]


def padding_lengths(mask: np.ndarray) -> list[int]:
    """The ``lengths`` of a right-padded 0/1 mask [n, T]; any other mask is refused, not approximated."""
    mask = np.asarray(mask)
    lengths = mask.sum(axis=1).astype(np.int64)
    if mask.ndim != 2 or not np.array_equal(mask, padding_mask(lengths, mask.shape[1])):
        raise ValueError("the mask must be 0/1 with each row's real tokens first (right padding)")
    return lengths.tolist()


def padding_mask(lengths, t: int) -> np.ndarray:
    """[n, t] int64 mask whose row i has ``lengths[i]`` leading ones."""
    return (np.arange(t)[None, :] < np.asarray(lengths, dtype=np.int64)[:, None]).astype(np.int64)


#: Ids of server-side checkpoints (a file name on each server: no path separators, no leading dot).
CHECKPOINT_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ResumeFrom(BaseModel):
    """Which server-side checkpoint a ``gradient_tuning`` job starts from: its id, the step it holds and
    the job that wrote it (every participant checks all three against its own file)."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str = Field(pattern=CHECKPOINT_ID_PATTERN.pattern)
    step: int = Field(ge=1, le=1 << 30)
    job: str = Field(pattern=CHECKPOINT_ID_PATTERN.pattern)


class GradientParams(BaseModel):
    """Public parameters of one ``gradient_tuning`` batch: one Adam step of secure SFT (``sft``: every
    encoder tensor trained) or secure gradient prompt tuning (``prompt``: a soft prompt [1, L, H] trained).

    Only the similarity head, the cross-entropy loss and softmax attention have a backward pass
    (:mod:`mpc_core.nn.grad`).  The Adam settings (``lr``, betas, ``eps``, ``grad_max``, ``loss_scale``)
    are fixed for a job and for every job resuming its checkpoints; ``checkpoint`` asks every server to
    write its shares of the trained state after this batch's step; ``resume`` (first batch only) starts
    from such a checkpoint instead of the model and the uploaded prompt.
    """

    model_config = ConfigDict(extra="forbid")

    method: Literal["sft", "prompt"]
    split: str = Field(default="train", pattern=TENSOR_NAME_PATTERN.pattern)
    loss: Literal["ce"] = "ce"
    head: Literal["similarity"] = "similarity"
    lengths: list[int]
    pool_exclude: list[int] | None = None
    #: real tokens per anchor sentence; needed with ``anchors.x`` (a fresh job's first batch).
    anchor_lengths: list[int] | None = None
    scale: float = Field(default=20.0, gt=0, le=1000)
    lr: float = Field(gt=0, le=1.0)
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.999, ge=0, lt=1)
    eps: float = Field(default=1e-2, ge=1e-6, le=1.0)
    grad_max: float = Field(default=1.0, gt=0, le=1e4)
    #: public power of two the backward's gradients are scaled by (fixed-point headroom), 1 .. 2^16.
    loss_scale: float = Field(default=256.0, ge=1.0, le=65536.0)
    #: also return the prompt after this step (``method="prompt"`` only: the data owner owns its prompt).
    output_prompt: bool = False
    checkpoint: str | None = Field(default=None, pattern=CHECKPOINT_ID_PATTERN.pattern)
    resume: ResumeFrom | None = None
