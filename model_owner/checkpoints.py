"""Which reader a model owner's checkpoint needs: BERT-family encoders, LLaMA-family decoders, GGUF files.

:func:`read_checkpoint` looks at the Hugging Face ``model_type`` (config.json) before reading any weight and
refuses an architecture the project does not run, naming it and the supported ones.  A ``.gguf`` file is
first turned into a plain Hugging Face folder by transformers' GGUF loader (dequantised to float32,
:func:`mpc_core.nn.llama_weights.gguf_to_folder`) in a temporary folder that the caller removes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mpc_core.nn.config import SUPPORTED_ARCHS as ENCODER_ARCHS
from mpc_core.nn.config import EncoderConfig, UnsupportedModelError
from mpc_core.nn.llama_config import DECODER_ARCHS, DecoderConfig
from mpc_core.nn.llama_weights import decoder_shapes, load_llama_checkpoint
from mpc_core.nn.weights import canonical_shapes, load_checkpoint, read_hf_config

#: Every Hugging Face ``model_type`` that secp-share-model accepts.
SUPPORTED_ARCHS: tuple[str, ...] = (*ENCODER_ARCHS, *DECODER_ARCHS)

ModelConfig = EncoderConfig | DecoderConfig

#: The tokenizer files a Hugging Face folder may hold, in one place so that every tool that copies a
#: checkpoint's tokenizer (the public share folder, an adapted checkpoint) copies the same set.
TOKENIZER_FILES: tuple[str, ...] = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "sentencepiece.bpe.model",
    "spiece.model",
)


def is_gguf(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".gguf"


def read_checkpoint(folder: str | Path) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """(config, canonical float64 tensors) of a local Hugging Face folder of a supported architecture."""
    arch = read_hf_config(folder).get("model_type")
    if arch in DECODER_ARCHS:
        return load_llama_checkpoint(folder)
    if arch in ENCODER_ARCHS:
        return load_checkpoint(folder)
    raise UnsupportedModelError(
        f"unsupported architecture {arch!r}; supported architectures: {', '.join(SUPPORTED_ARCHS)}"
    )


def model_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every canonical tensor of the architecture with its shape."""
    return decoder_shapes(cfg) if isinstance(cfg, DecoderConfig) else canonical_shapes(cfg)


def describe(cfg: ModelConfig) -> str:
    """A one-line public summary for the command line."""
    if isinstance(cfg, DecoderConfig):
        return (
            f"{cfg.arch} decoder ({cfg.layers} layers, hidden {cfg.hidden}, {cfg.heads} query / "
            f"{cfg.kv_heads} key-value heads, tied embeddings: {'yes' if cfg.tie_word_embeddings else 'no'})"
        )
    return (
        f"{cfg.arch} ({cfg.layers} layers, hidden {cfg.hidden}, "
        f"MLM head: {'yes' if cfg.has_mlm_head else 'no'})"
    )
