"""Public parameter contracts that both ends of the party API must agree on, defined once.

The data owner builds these objects and the servers validate them (``extra="forbid"``: an unknown field is
an error, not silently dropped), so a field added on one side cannot drift from the other.  Nothing here is
secret: every server sees the parameters of every batch.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

#: Names of uploaded tensors and of program outputs (``<split>.p<i>.x``, ``prompts``, ``anchors.x``, ...).
TENSOR_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")


class TuningParams(BaseModel):
    """Public parameters of one ``prompt_tuning`` evaluation (split, output, loss, head, padding and the
    head's public pieces, attention mode)."""

    model_config = ConfigDict(extra="forbid")

    split: str = Field(pattern=TENSOR_NAME_PATTERN.pattern)
    output: Literal["losses", "logits"]
    loss: Literal["ce", "hinge"] = "ce"
    head: Literal["similarity", "mlm"]
    mask: list[list[int]]
    #: positions (the same in every example) the similarity head leaves out of its mean pooling, e.g. the
    #: prompt's placeholder rows; they still take part in attention.  A row list, not a second [n, T] mask,
    #: so the parameters stay small (``max_params_bytes``).
    pool_exclude: list[int] | None = None
    mask_positions: list[int] | None = None
    label_words: list[int] | None = None
    anchor_mask: list[list[int]] | None = None
    scale: float = Field(default=20.0, gt=0, le=1000)
    attention: Literal["softmax", "rfa", "favor"] = "softmax"
    features: int = Field(default=64, gt=0, le=4096)
