"""Plaintext forward pass of a BERT/RoBERTa encoder and its heads: THE single adapter to the model code.

Helper D's ``mpc_core/nn`` (layers written once over a plaintext and a secure backend) is the reference the
secure path is compared with; until it exposes per-candidate logits/losses, this module is the one place
that computes them, in torch on CPU from the checkpoint's safetensors (no Hugging Face model classes, so the
maths is explicit and matches ``mpc_core/nn``): post-LN BERT blocks, exact softmax attention, erf GELU, and

- the similarity head: mean-pool over real tokens (prompt rows included), L2-normalise, ``scale * cos`` with
  label anchors (the mean-pooled, normalised label descriptions, computed once without a prompt);
- the MLM head: the masked-LM transform and decoder at the ``<mask>`` row, restricted to the label words.

The prompt [L, H] is ADDED to rows 1..L of the embedding-layer output.  Nothing here is private.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from data_owner.encode import load_config
from data_owner.errors import DataOwnerError

PREFIXES = ("bert.", "roberta.", "")


class PlainModel:
    """Encoder blocks and heads of a checkpoint, evaluated in plaintext with torch."""

    def __init__(self, model_dir: Path, dtype: torch.dtype = torch.float64, batch_rows: int = 64) -> None:
        from safetensors.torch import load_file

        model_dir = Path(model_dir)
        self.config = load_config(model_dir)
        self.dtype = dtype
        self.batch_rows = batch_rows
        raw: dict[str, torch.Tensor] = {}
        for f in sorted(model_dir.glob("*.safetensors")):
            raw.update(load_file(str(f)))
        if not raw:
            raw = _load_bin(model_dir)
        self.w = {k: v.to(dtype) for k, v in raw.items()}
        self.prefix = next(
            (p for p in PREFIXES if f"{p}encoder.layer.0.attention.self.query.weight" in self.w), None
        )
        if self.prefix is None:
            raise DataOwnerError(f"{model_dir}: not a BERT/RoBERTa encoder checkpoint")
        self.layers = int(self.config["num_hidden_layers"])
        self.heads = int(self.config["num_attention_heads"])
        self.eps = float(self.config.get("layer_norm_eps", 1e-12))
        self.mlm_keys = _mlm_keys(self.w, self.prefix)
        if self.config.get("hidden_act", "gelu") not in ("gelu", "gelu_new", "gelu_python"):
            raise DataOwnerError(f"unsupported activation {self.config.get('hidden_act')!r}")

    @property
    def has_mlm_head(self) -> bool:
        return self.mlm_keys is not None

    # ------------------------------------------------------------------ encoder
    def _p(self, name: str) -> torch.Tensor:
        return self.w[self.prefix + name]

    def _ln(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return torch.nn.functional.layer_norm(
            x, x.shape[-1:], self._p(name + ".weight"), self._p(name + ".bias"), self.eps
        )

    def _lin(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return x @ self._p(name + ".weight").T + self._p(name + ".bias")

    def encoder(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Hidden states [B, T, H] after every block, from embedding-layer outputs [B, T, H]."""
        B, T, H = x.shape
        nh, dh = self.heads, H // self.heads
        bias = (1.0 - mask.to(x.dtype))[:, None, None, :] * torch.finfo(x.dtype).min
        for i in range(self.layers):
            p = f"encoder.layer.{i}."
            q = self._lin(x, p + "attention.self.query").view(B, T, nh, dh).transpose(1, 2)
            k = self._lin(x, p + "attention.self.key").view(B, T, nh, dh).transpose(1, 2)
            v = self._lin(x, p + "attention.self.value").view(B, T, nh, dh).transpose(1, 2)
            att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh) + bias, dim=-1)
            ctx = (att @ v).transpose(1, 2).reshape(B, T, H)
            x = self._ln(self._lin(ctx, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
            h = torch.nn.functional.gelu(self._lin(x, p + "intermediate.dense"))
            x = self._ln(self._lin(h, p + "output.dense") + x, p + "output.LayerNorm")
        return x

    # ------------------------------------------------------------------ heads
    @staticmethod
    def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.to(hidden.dtype)[..., None]
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        return pooled / pooled.norm(dim=-1, keepdim=True).clamp(min=1e-12)

    def mlm_logits(self, hidden_at_mask: torch.Tensor, word_ids: list[int]) -> torch.Tensor:
        if self.mlm_keys is None:
            raise DataOwnerError("this checkpoint has no MLM head; use the similarity head")
        dense, ln, dec_w, dec_b = self.mlm_keys
        h = hidden_at_mask @ self.w[dense + ".weight"].T + self.w[dense + ".bias"]
        h = torch.nn.functional.gelu(h)
        h = torch.nn.functional.layer_norm(
            h, h.shape[-1:], self.w[ln + ".weight"], self.w[ln + ".bias"], self.eps
        )
        ids = torch.tensor(word_ids)
        return h @ self.w[dec_w][ids].T + self.w[dec_b][ids]

    def candidate_logits(self, embeds: np.ndarray, mask: np.ndarray, prompts: np.ndarray, head) -> np.ndarray:
        """Class scores [k, n, C] for every (candidate, example) pair, batched over rows.

        ``head(hidden [B, T, H], mask [B, T], rows [B]) -> [B, C]`` maps final hidden states to class scores.
        """
        k, L, _ = prompts.shape
        n = embeds.shape[0]
        e = torch.from_numpy(np.ascontiguousarray(embeds)).to(self.dtype)
        m = torch.from_numpy(np.ascontiguousarray(mask))
        p = torch.from_numpy(np.ascontiguousarray(prompts)).to(self.dtype)
        out: np.ndarray | None = None
        lengths = mask.sum(1)
        # example-major order, shortest examples first: each chunk is cut to its own longest row
        pairs = [(c, i) for i in np.argsort(lengths, kind="stable") for c in range(k)]
        with torch.no_grad():
            for s in range(0, len(pairs), self.batch_rows):
                chunk = pairs[s : s + self.batch_rows]
                cs = torch.tensor([c for c, _ in chunk])
                xs = torch.tensor([int(i) for _, i in chunk])
                T = int(lengths[xs.numpy()].max())
                x = e[xs, :T].clone()
                x[:, 1 : 1 + L] += p[cs]
                scores = head(self.encoder(x, m[xs, :T]), m[xs, :T], xs).to(torch.float64).numpy()
                if out is None:
                    out = np.empty((k, n, scores.shape[-1]))
                out[cs.numpy(), xs.numpy()] = scores
        assert out is not None
        return out


def _mlm_keys(w: dict[str, torch.Tensor], prefix: str) -> tuple[str, str, str, str] | None:
    word = f"{prefix}embeddings.word_embeddings.weight"
    if "cls.predictions.transform.dense.weight" in w:
        dec = "cls.predictions.decoder.weight" if "cls.predictions.decoder.weight" in w else word
        return (
            "cls.predictions.transform.dense",
            "cls.predictions.transform.LayerNorm",
            dec,
            "cls.predictions.bias",
        )
    if "lm_head.dense.weight" in w:
        dec = "lm_head.decoder.weight" if "lm_head.decoder.weight" in w else word
        return ("lm_head.dense", "lm_head.layer_norm", dec, "lm_head.bias")
    return None


def _load_bin(model_dir: Path) -> dict[str, torch.Tensor]:
    path = model_dir / "pytorch_model.bin"
    if not path.is_file():
        raise DataOwnerError(f"no model weights (.safetensors or pytorch_model.bin) in {model_dir}")
    return torch.load(path, map_location="cpu", weights_only=True)
