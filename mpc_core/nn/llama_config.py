"""The public architecture of a LLaMA-family decoder (SmolLM2, LLaMA 2/3 shapes), from a Hugging Face config.

This module owns :class:`DecoderConfig`, the pydantic model written into the share manifest for a decoder
(the encoder's is :class:`~mpc_core.nn.config.EncoderConfig`; ``arch`` tells them apart).  It knows
nothing about weights or shares.  Variants the secure layers do not implement are refused here, by name,
before any weight is read: another activation than SiLU, biases in attention or MLP, scaled rotary
embeddings (``rope_scaling`` / ``rope_parameters`` of a type other than ``default``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mpc_core.nn.config import UnsupportedModelError

#: Hugging Face ``model_type`` values run by the decoder layers.
DECODER_ARCHS: tuple[str, ...] = ("llama",)


class DecoderConfig(BaseModel):
    """Shapes and constants of a LLaMA decoder: RMSNorm, SwiGLU MLP, rotary embeddings, grouped-query
    causal attention, optionally tied input and output embeddings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    arch: Literal["llama"]
    hidden: int = Field(gt=0)
    heads: int = Field(gt=0)
    kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    layers: int = Field(gt=0)
    intermediate: int = Field(gt=0)
    rms_norm_eps: float = Field(gt=0)
    vocab: int = Field(gt=0)
    max_positions: int = Field(gt=0)
    rope_theta: float = Field(gt=0)
    tie_word_embeddings: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None

    @model_validator(mode="after")
    def _shapes_agree(self) -> DecoderConfig:
        if self.heads % self.kv_heads:
            raise ValueError(
                f"{self.heads} query heads are not a multiple of {self.kv_heads} key/value heads"
            )
        if self.head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head dimension, got {self.head_dim}")
        return self

    @property
    def group(self) -> int:
        """Query heads per key/value head (grouped-query attention)."""
        return self.heads // self.kv_heads

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> DecoderConfig:
        """Build from a Hugging Face config dict; raises :class:`UnsupportedModelError` for other variants."""
        arch = hf.get("model_type")
        if arch not in DECODER_ARCHS:
            raise UnsupportedModelError(
                f"unsupported architecture {arch!r}; decoder architectures: {', '.join(DECODER_ARCHS)}"
            )
        act = hf.get("hidden_act", "silu")
        if act != "silu":
            raise UnsupportedModelError(
                f"unsupported activation {act!r} in a {arch} checkpoint; supported: silu"
            )
        for flag in ("attention_bias", "mlp_bias"):
            if hf.get(flag):
                raise UnsupportedModelError(f"{arch} checkpoints with {flag} are not supported")
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise UnsupportedModelError(f"scaled rotary embeddings ({rope_type!r}) are not supported")
        theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
        try:
            heads = hf["num_attention_heads"]
            return cls(
                arch=arch,
                hidden=hf["hidden_size"],
                heads=heads,
                kv_heads=hf.get("num_key_value_heads") or heads,
                head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
                layers=hf["num_hidden_layers"],
                intermediate=hf["intermediate_size"],
                rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
                vocab=hf["vocab_size"],
                max_positions=hf["max_position_embeddings"],
                rope_theta=theta,
                tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
                bos_token_id=_single_id(hf.get("bos_token_id")),
                eos_token_id=_single_id(hf.get("eos_token_id")),
                pad_token_id=_single_id(hf.get("pad_token_id")),
            )
        except KeyError as exc:
            raise UnsupportedModelError(f"config.json lacks the required field {exc.args[0]!r}") from None

    @classmethod
    def from_hf_file(cls, path: str | Path) -> DecoderConfig:
        return cls.from_hf(json.loads(Path(path).read_text()))


def _single_id(value: Any) -> int | None:
    """A token id as config.json gives it (LLaMA 3 lists several eos ids: keep the first)."""
    if isinstance(value, list):
        return int(value[0]) if value else None
    return None if value is None else int(value)
