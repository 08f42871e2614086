"""The public embedding layer, computed in plaintext by the data owner (float64).

    e = LayerNorm(word[ids] + position[pos] + token_type[types])

BERT numbers positions 0..T-1; RoBERTa numbers real tokens pad_id + 1, pad_id + 2, ... and gives padding
the position pad_id (as Hugging Face's ``create_position_ids_from_input_ids``).  The weights are public in
our threat model (DESIGN.md §1); this module never sees a share.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract.manifest import ShareManifest
from mpc_core.nn.config import EncoderConfig


@dataclass(frozen=True)
class PublicEmbeddings:
    cfg: EncoderConfig
    word: np.ndarray
    position: np.ndarray
    token_type: np.ndarray | None
    ln_weight: np.ndarray
    ln_bias: np.ndarray

    @classmethod
    def from_tensors(cls, cfg: EncoderConfig, tensors: Mapping[str, np.ndarray]) -> PublicEmbeddings:
        def f64(name: str) -> np.ndarray:
            return np.asarray(tensors[name], dtype=np.float64)

        return cls(
            cfg=cfg,
            word=f64("emb.word"),
            position=f64("emb.position"),
            token_type=f64("emb.token_type") if "emb.token_type" in tensors else None,
            ln_weight=f64("emb.ln.weight"),
            ln_bias=f64("emb.ln.bias"),
        )

    @classmethod
    def load(cls, shared_folder: str | Path) -> PublicEmbeddings:
        """From a ``secp-share-model`` output folder (its manifest and ``public/`` embedding file)."""
        from safetensors.numpy import load_file

        manifest = ShareManifest.read(shared_folder)
        path = Path(shared_folder) / manifest.public.folder / manifest.public.embeddings
        return cls.from_tensors(manifest.config, load_file(str(path)))

    @property
    def word_std(self) -> float:
        """Standard deviation of the word embeddings (BBT scales its random projection with it)."""
        return float(self.word.std())

    def position_ids(self, input_ids: np.ndarray) -> np.ndarray:
        input_ids = np.asarray(input_ids)
        if self.cfg.arch == "roberta":
            real = (input_ids != self.cfg.pad_token_id).astype(np.int64)
            return np.cumsum(real, axis=-1) * real + self.cfg.pad_token_id
        return np.broadcast_to(np.arange(input_ids.shape[-1]), input_ids.shape)

    def __call__(self, input_ids: np.ndarray, token_type_ids: np.ndarray | None = None) -> np.ndarray:
        """Embedding-layer output [..., T, H] for integer ``input_ids`` [..., T]."""
        input_ids = np.asarray(input_ids, dtype=np.int64)
        pos = self.position_ids(input_ids)
        if pos.max(initial=0) >= self.position.shape[0]:
            raise ValueError(
                f"sequence too long: positions up to {pos.max()} exceed {self.position.shape[0]}"
            )
        x = self.word[input_ids] + self.position[pos]
        if self.token_type is not None:
            types = np.zeros_like(input_ids) if token_type_ids is None else np.asarray(token_type_ids)
            x = x + self.token_type[types]
        mu = x.mean(axis=-1, keepdims=True)
        var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
        return (x - mu) / np.sqrt(var + self.cfg.layer_norm_eps) * self.ln_weight + self.ln_bias
