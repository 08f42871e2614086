"""Configuration of the secure encoder: the architecture (public) and the attention mode (shared by servers).

This module owns the two pydantic models that cross process boundaries (they are written into the share
manifest and sent with a job): :class:`EncoderConfig`, built from a Hugging Face ``config.json``, and
:class:`AttentionConfig`, which selects exact softmax attention or one of the random-feature
approximations.  It knows nothing about weights or shares.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Hugging Face ``model_type`` values this project supports, and the activation names each may use.
SUPPORTED_ARCHS: tuple[str, ...] = ("bert", "roberta")
SUPPORTED_ACTIVATIONS: tuple[str, ...] = ("gelu",)


class UnsupportedModelError(ValueError):
    """The checkpoint is of an architecture (or variant) this project cannot run securely."""


class EncoderConfig(BaseModel):
    """The public architecture of a BERT-family encoder (shapes, epsilon, special ids).

    ``arch`` decides only the public embedding layer's position ids (RoBERTa offsets them by
    ``pad_token_id + 1``) and the checkpoint's tensor names; the encoder blocks are identical.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    arch: Literal["bert", "roberta"]
    hidden: int = Field(gt=0)
    heads: int = Field(gt=0)
    layers: int = Field(gt=0)
    intermediate: int = Field(gt=0)
    layer_norm_eps: float = Field(gt=0)
    vocab: int = Field(gt=0)
    max_positions: int = Field(gt=0)
    type_vocab: int = Field(ge=0)
    pad_token_id: int = Field(ge=0)
    has_mlm_head: bool = False

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> EncoderConfig:
        if self.hidden % self.heads:
            raise ValueError(f"hidden size {self.hidden} is not divisible by {self.heads} heads")
        return self

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @classmethod
    def from_hf(cls, hf: dict[str, Any], has_mlm_head: bool = False) -> EncoderConfig:
        """Build from a Hugging Face config dict; raises :class:`UnsupportedModelError` for other variants."""
        arch = hf.get("model_type")
        if arch not in SUPPORTED_ARCHS:
            raise UnsupportedModelError(
                f"unsupported architecture {arch!r}; supported architectures: {', '.join(SUPPORTED_ARCHS)}"
            )
        act = hf.get("hidden_act", "gelu")
        if act not in SUPPORTED_ACTIVATIONS:
            raise UnsupportedModelError(
                f"unsupported activation {act!r} in a {arch} checkpoint; "
                f"supported: {', '.join(SUPPORTED_ACTIVATIONS)}"
            )
        pos = hf.get("position_embedding_type", "absolute")
        if pos != "absolute":
            raise UnsupportedModelError(
                f"unsupported position_embedding_type {pos!r}; only 'absolute' is supported"
            )
        if hf.get("is_decoder") or hf.get("add_cross_attention"):
            raise UnsupportedModelError(
                "decoder or cross-attention variants of BERT/RoBERTa are not supported"
            )
        try:
            return cls(
                arch=arch,
                hidden=hf["hidden_size"],
                heads=hf["num_attention_heads"],
                layers=hf["num_hidden_layers"],
                intermediate=hf["intermediate_size"],
                layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
                vocab=hf["vocab_size"],
                max_positions=hf["max_position_embeddings"],
                type_vocab=hf.get("type_vocab_size", 0),
                pad_token_id=hf.get("pad_token_id", 0) or 0,
                has_mlm_head=has_mlm_head,
            )
        except KeyError as exc:
            raise UnsupportedModelError(f"config.json lacks the required field {exc.args[0]!r}") from None

    @classmethod
    def from_hf_file(cls, path: str | Path, has_mlm_head: bool = False) -> EncoderConfig:
        return cls.from_hf(json.loads(Path(path).read_text()), has_mlm_head)


class AttentionConfig(BaseModel):
    """Which attention the servers compute; every field is configuration all servers agree on.

    * ``softmax``: exact softmax(q k^T / sqrt(d)) v (the default for a pretrained checkpoint).
    * ``rfa``: the paper's random Fourier features, exp(x.y) ~ phi(x).phi(y) with
      phi(x) = exp(|x|^2/2) [cos(W^T x), sin(W^T x)] / sqrt(m), x = q / d^(1/4), ``features`` = m
      Gaussian vectors (feature dimension 2m), cos/sin through the one-round trig protocol.
    * ``favor``: FAVOR+ positive features phi(x) = exp(W^T x - |x|^2/2) / sqrt(m) with ``features`` = m
      vectors made of m/2 orthogonal directions and their negatives (antithetic pairs).
    Both approximations are lossy on a model that was not trained with them (see docs/fidelity.md);
    they are never chosen silently.

    ``normalize`` selects the well-posed form the model owner adapts a checkpoint to
    (``secp-adapt-model``): keys centred per sequence, queries and keys l2-normalised per head and
    scaled by a per-head factor s (x = s q/|q|, y = s k/|k|, so exp(x.y) = exp(s^2 cos(q, k)) has the
    bounded range [e^-s^2, e^s^2]).  s is the secret tensor ``layer.{i}.attn.scale`` [heads] when the
    checkpoint has it, else the public ``scale``.

    Denominator guards (the same in both backends, so that secure and plaintext compute one function):
    ``rfa`` divides by max(den, ``relative_floor`` x n_keys), n_keys the public number of real keys;
    every estimated kernel value is at most 1 in magnitude, so each output is at most
    max_j |v_j| / ``relative_floor`` (a bound the downstream domains rely on).  ``favor`` features are
    positive, so its output is a convex combination of the values whatever the floor;
    ``denominator_floor`` only keeps its reciprocal away from zero.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["softmax", "rfa", "favor"] = "softmax"
    features: int = Field(default=64, gt=0)
    seed: int = 0
    orthogonal: bool = True
    center_keys: bool = True
    denominator_floor: float = Field(default=2.0**-12, gt=0)
    relative_floor: float = Field(default=2.0**-3, gt=0, le=1)
    normalize: bool = False
    scale: float = Field(default=2.0, gt=0, le=8)

    @model_validator(mode="after")
    def _even_for_antithetic(self) -> AttentionConfig:
        if self.mode == "favor" and self.features % 2:
            raise ValueError("favor uses antithetic +-w pairs: features must be even")
        return self
