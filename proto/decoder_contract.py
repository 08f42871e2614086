"""Public parameters of one ``decoder_tuning`` evaluation (a LLaMA-family decoder), for both ends.

As :class:`proto.contracts.TuningParams` for the encoder: the data owner builds them, every server validates
them (``extra="forbid"``), and nothing here is secret.  The template's and the verbalizer words' embeddings
are not parameters (they would not fit ``max_params_bytes``): they are uploaded as inputs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from proto.contracts import TENSOR_NAME_PATTERN


class DecoderTuningParams(BaseModel):
    """One evaluation of P candidate prompts on n examples of a split.

    ``placement``: ``prefix`` puts the prompt after each example's first token (as BBT), the example rows
    ending with the answer template; ``suffix`` puts it after the example text, followed by the uploaded
    template (``template.x``), and the examples' keys and values are computed once per job and kept.
    """

    model_config = ConfigDict(extra="forbid")

    split: str = Field(pattern=TENSOR_NAME_PATTERN.pattern)
    placement: Literal["prefix", "suffix"]
    output: Literal["losses", "logits"]
    loss: Literal["ce", "hinge"] = "ce"
    #: real tokens per example (right padding), as in TuningParams.
    lengths: list[int]
    #: the verbalizer words' token ids (public to the servers, as the MLM head's label words); with tied
    #: embeddings their rows are uploaded as ``verbalizer.x`` [C, H].
    label_words: list[int] = Field(min_length=2)
