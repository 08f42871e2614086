"""Model weights: Hugging Face checkpoints -> canonical float64 tensors, and party share files -> shares.

Canonical names are the same for BERT and RoBERTa, and linear weights are stored [in, out] so that a layer
is ``x @ W + b``:

    emb.word [V, H]  emb.position [P, H]  emb.token_type [types, H]  emb.ln.{weight,bias} [H]   (public)
    layer.{i}.attn.{q,k,v,out}.{weight [H, H], bias [H]}   layer.{i}.attn.ln.{weight,bias} [H]
    layer.{i}.ffn.in.{weight [H, I], bias [I]}   layer.{i}.ffn.out.{weight [I, H], bias [H]}
    layer.{i}.ffn.ln.{weight,bias} [H]
    mlm.dense.{weight [H, H], bias}  mlm.ln.{weight,bias}  mlm.decoder.{weight [H, V], bias [V]}  (MLM head)

``emb.*`` is the public embedding layer; everything else is secret-shared.  A checkpoint's pooler and
task heads are ignored.  This module reads checkpoints; it never writes (the model owner's tool does) and
never logs a value.  Party share files are read by :mod:`contract.manifest`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mpc_core.nn.config import EncoderConfig, UnsupportedModelError

if TYPE_CHECKING:
    from mpc_core.context import Context

PUBLIC_PREFIX = "emb."


class CheckpointError(ValueError):
    """A checkpoint or share folder is missing, incomplete or corrupt."""


# ---------------------------------------------------------------------------------------------- names
def canonical_shapes(cfg: EncoderConfig) -> dict[str, tuple[int, ...]]:
    """Every canonical tensor of ``cfg`` with its shape (public and secret)."""
    H, intermediate, V = cfg.hidden, cfg.intermediate, cfg.vocab
    shapes: dict[str, tuple[int, ...]] = {
        "emb.word": (V, H),
        "emb.position": (cfg.max_positions, H),
        "emb.ln.weight": (H,),
        "emb.ln.bias": (H,),
    }
    if cfg.type_vocab:
        shapes["emb.token_type"] = (cfg.type_vocab, H)
    for i in range(cfg.layers):
        for part in ("q", "k", "v", "out"):
            shapes[f"layer.{i}.attn.{part}.weight"] = (H, H)
            shapes[f"layer.{i}.attn.{part}.bias"] = (H,)
        shapes[f"layer.{i}.ffn.in.weight"] = (H, intermediate)
        shapes[f"layer.{i}.ffn.in.bias"] = (intermediate,)
        shapes[f"layer.{i}.ffn.out.weight"] = (intermediate, H)
        shapes[f"layer.{i}.ffn.out.bias"] = (H,)
        for ln in ("attn.ln", "ffn.ln"):
            shapes[f"layer.{i}.{ln}.weight"] = (H,)
            shapes[f"layer.{i}.{ln}.bias"] = (H,)
    if cfg.has_mlm_head:
        shapes.update(
            {
                "mlm.dense.weight": (H, H),
                "mlm.dense.bias": (H,),
                "mlm.ln.weight": (H,),
                "mlm.ln.bias": (H,),
                "mlm.decoder.weight": (H, V),
                "mlm.decoder.bias": (V,),
            }
        )
    return shapes


def attention_scale_shapes(cfg: EncoderConfig) -> dict[str, tuple[int, ...]]:
    """The per-head scales an adapted checkpoint adds (``secp-adapt-model``, AttentionConfig.normalize)."""
    return {f"layer.{i}.attn.scale": (cfg.heads,) for i in range(cfg.layers)}


def _adapted_tensors(folder: Path, cfg: EncoderConfig, expected: dict[str, tuple[int, ...]]):
    """The learned tensors of an adapted checkpoint (canonical names), checked; {} for a plain one.

    They either replace a canonical tensor (same shape) or are the per-head attention scales (all layers).
    """
    from mpc_core.nn.adapted import TENSORS_FILE

    path = folder / TENSORS_FILE
    if not path.is_file():
        return {}
    from safetensors.numpy import load_file

    try:
        extra = {k: np.asarray(v, dtype=np.float64) for k, v in load_file(str(path)).items()}
    except Exception as exc:
        raise CheckpointError(f"{path} is corrupt or unreadable ({type(exc).__name__})") from None
    scales = attention_scale_shapes(cfg)
    allowed = {**expected, **scales}
    for name, value in extra.items():
        if name not in allowed or tuple(value.shape) != allowed[name]:
            raise CheckpointError(f"{path} holds an unexpected tensor {name} {tuple(value.shape)}")
    present = set(extra) & set(scales)
    if present and present != set(scales):
        raise CheckpointError(f"{path} holds attention scales for some layers only")
    return extra


def is_public(name: str) -> bool:
    return name.startswith(PUBLIC_PREFIX)


def is_matrix_weight(name: str, shape: tuple[int, ...] | list[int]) -> bool:
    """A weight used as the fixed right operand of a product (marked ``.fixed(name)`` on shares)."""
    return name.endswith(".weight") and len(shape) == 2 and not is_public(name)


_LAYER_PARTS = {
    "attention.self.query": "attn.q",
    "attention.self.key": "attn.k",
    "attention.self.value": "attn.v",
    "attention.output.dense": "attn.out",
    "attention.output.LayerNorm": "attn.ln",
    "intermediate.dense": "ffn.in",
    "output.dense": "ffn.out",
    "output.LayerNorm": "ffn.ln",
}
_EMBEDDINGS = {
    "embeddings.word_embeddings.weight": "emb.word",
    "embeddings.position_embeddings.weight": "emb.position",
    "embeddings.token_type_embeddings.weight": "emb.token_type",
    "embeddings.LayerNorm.weight": "emb.ln.weight",
    "embeddings.LayerNorm.bias": "emb.ln.bias",
}
_MLM = {
    "cls.predictions.transform.dense": "mlm.dense",
    "cls.predictions.transform.LayerNorm": "mlm.ln",
    "cls.predictions.decoder": "mlm.decoder",
    "lm_head.dense": "mlm.dense",
    "lm_head.layer_norm": "mlm.ln",
    "lm_head.decoder": "mlm.decoder",
}
_MLM_BIAS = ("cls.predictions.bias", "lm_head.bias")
_MLM_PREFIXES = ("cls.predictions.", "lm_head.")
#: HF [out, in] linear weights that become canonical [in, out].
_TRANSPOSED = ("attn.q", "attn.k", "attn.v", "attn.out", "ffn.in", "ffn.out", "mlm.dense", "mlm.decoder")


def _canonical_name(raw: str) -> str | None:
    """The canonical name of a raw (prefix-stripped) HF tensor name, or None if it is not used."""
    raw = raw.replace(".gamma", ".weight").replace(".beta", ".bias")
    if raw in _EMBEDDINGS:
        return _EMBEDDINGS[raw]
    if raw in _MLM_BIAS:
        return "mlm.decoder.bias"
    if raw.startswith("encoder.layer."):
        rest = raw[len("encoder.layer.") :]
        index, _, tail = rest.partition(".")
        module, _, leaf = tail.rpartition(".")
        if index.isdigit() and module in _LAYER_PARTS:
            return f"layer.{index}.{_LAYER_PARTS[module]}.{leaf}"
        return None
    module, _, leaf = raw.rpartition(".")
    if module in _MLM:
        return f"{_MLM[module]}.{leaf}"
    return None


def _is_transposed(name: str) -> bool:
    module, _, leaf = name.rpartition(".")
    part = module.split(".", 2)[2] if module.startswith("layer.") else module
    return leaf == "weight" and part in _TRANSPOSED


def _strip_prefix(name: str, arch: str) -> str:
    for prefix in (f"{arch}.", "bert.", "roberta.", "model."):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


# ---------------------------------------------------------------------------------------------- checkpoints
def _read_raw_tensors(folder: Path) -> dict[str, np.ndarray]:
    """All tensors of the checkpoint as float64 (safetensors, sharded safetensors or pytorch_model.bin)."""
    import torch

    def as_f64(t: torch.Tensor) -> np.ndarray:
        return t.detach().to(torch.float64).cpu().numpy()

    single = folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    binary = folder / "pytorch_model.bin"
    try:
        if single.is_file() or index.is_file():
            from safetensors.torch import load_file

            files = (
                [single]
                if single.is_file()
                else sorted({folder / f for f in json.loads(index.read_text())["weight_map"].values()})
            )
            out: dict[str, np.ndarray] = {}
            for f in files:
                out.update({k: as_f64(v) for k, v in load_file(str(f)).items()})
            return out
        if binary.is_file():
            state = torch.load(binary, map_location="cpu", weights_only=True)
            return {k: as_f64(v) for k, v in state.items() if isinstance(v, torch.Tensor)}
    except CheckpointError:
        raise
    except Exception as exc:  # safetensors, torch and json raise many types for damaged files
        raise CheckpointError(
            f"the checkpoint in {folder} is corrupt or unreadable ({type(exc).__name__})"
        ) from None
    raise CheckpointError(
        f"no weights in {folder}: expected model.safetensors, model.safetensors.index.json "
        "or pytorch_model.bin"
    )


def checked_tensors(
    folder: Path, tensors: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]]
) -> dict[str, np.ndarray]:
    """The ``expected`` tensors of a checkpoint in ``folder``, in ``expected``'s order; others are dropped.

    Every checkpoint reader (encoders here, decoders in :mod:`mpc_core.nn.llama_weights`) checks the same
    two things before a weight is used, so that a truncated or mismatched download is named at load time
    rather than failing later inside a secure layer: raises :class:`CheckpointError` naming up to five
    missing tensors, or the first tensor whose shape is not the one config.json implies.
    """
    missing = sorted(set(expected) - set(tensors))
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise CheckpointError(
            f"the checkpoint in {folder} is incomplete: {len(missing)} tensors missing ({shown})"
        )
    for name, shape in expected.items():
        if tensors[name].shape != shape:
            raise CheckpointError(
                f"tensor {name} has shape {tensors[name].shape} in {folder}, config.json implies {shape}"
            )
    return {name: tensors[name] for name in expected}


def read_hf_config(folder: str | Path) -> dict:
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist")
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"no config.json in {folder}: not a Hugging Face checkpoint folder")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise CheckpointError(f"{path} is not valid JSON") from None


def load_checkpoint(folder: str | Path) -> tuple[EncoderConfig, dict[str, np.ndarray]]:
    """Read a local HF BERT/RoBERTa checkpoint into (config, canonical float64 tensors).

    Raises :class:`UnsupportedModelError` for other architectures (naming the supported ones) and
    :class:`CheckpointError` for missing, corrupt or incomplete checkpoints.
    """
    folder = Path(folder)
    hf = read_hf_config(folder)
    EncoderConfig.from_hf(hf)  # architecture check before reading any weights
    raw = {_strip_prefix(k, hf["model_type"]): v for k, v in _read_raw_tensors(folder).items()}
    has_mlm = any(k.startswith(_MLM_PREFIXES) for k in raw)
    cfg = EncoderConfig.from_hf(hf, has_mlm_head=has_mlm)
    tensors: dict[str, np.ndarray] = {}
    for raw_name, value in raw.items():
        name = _canonical_name(raw_name)
        if name is None:
            continue
        if _is_transposed(name):
            value = value.T
        tensors[name] = np.ascontiguousarray(value)
    if has_mlm and "mlm.decoder.weight" not in tensors and "emb.word" in tensors:
        tensors["mlm.decoder.weight"] = np.ascontiguousarray(tensors["emb.word"].T)  # tied to the embeddings
    expected = canonical_shapes(cfg)
    out = checked_tensors(folder, tensors, expected)
    out.update(_adapted_tensors(folder, cfg, expected))
    return cfg, out


def split_public(tensors: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(public embedding-layer tensors, secret tensors)."""
    public = {k: v for k, v in tensors.items() if is_public(k)}
    secret = {k: v for k, v in tensors.items() if not is_public(k)}
    return public, secret


# ---------------------------------------------------------------------------------------------- shares
def wrap_shares(ctx: Context, shares: Mapping[str, np.ndarray] | None, shapes: Mapping[str, tuple[int, ...]]):
    """Shares per name as SharedTensors of ``ctx`` (None at the dealer); weight matrices marked fixed.

    :func:`contract.manifest.load_party_shares` reads them from a share folder first.
    """
    from mpc_core.tensor import SharedTensor

    out = {}
    for name, shape in shapes.items():
        share = None if ctx.is_dealer or shares is None else shares[name]
        tensor = SharedTensor.from_share(ctx, share, tuple(shape))
        out[name] = tensor.fixed(name) if is_matrix_weight(name, shape) else tensor
    return out


__all__ = [
    "CheckpointError",
    "UnsupportedModelError",
    "attention_scale_shapes",
    "canonical_shapes",
    "checked_tensors",
    "is_matrix_weight",
    "is_public",
    "load_checkpoint",
    "read_hf_config",
    "split_public",
    "wrap_shares",
]
