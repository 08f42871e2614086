"""Classification heads on the last hidden states: logits [N, C] for C classes, either backend.

* :class:`MLMHead` (checkpoints with an MLM head, RoBERTa-large in the paper): the masked-LM logits of the
  C label words at each example's ``<mask>`` position,
  logits = LayerNorm(GELU(h W_d + b_d)) W_dec[:, words] + b_dec[words].
  The label-word ids and mask positions are public to the servers (positions follow from the public
  lengths; the label words identify the task's verbalizer, which is revealed here).
* :class:`SimilarityHead` (sentence encoders such as all-MiniLM-L6-v2, no MLM head): mean-pool over real
  tokens (or the rows a pooling mask selects, see :mod:`mpc_core.nn.batch`), L2-normalise, and
  scale * cosine with C public label-anchor embeddings (computed once in plaintext with exact softmax,
  :func:`similarity_anchors`).  logits = scale * u A^T with
  u = p / |p|, p = sum_t mask_t h_t / sum_t mask_t, and A the unit-norm anchors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from mpc_core.nn.backend import Backend, PlainBackend, Value
from mpc_core.nn.config import AttentionConfig, EncoderConfig
from mpc_core.nn.encoder import encode


def mean_pool(hidden: Value, mask: np.ndarray) -> Value:
    """sum_t mask_t h_t / sum_t mask_t, [N, T, H] -> [N, H]; the mask multiplies exactly (public 0/1)."""
    mask = np.asarray(mask)
    keep = mask[..., None].astype(np.int64)
    lengths = np.maximum(mask.sum(axis=-1), 1).astype(np.float64)
    return (hidden * keep).sum(axis=-2) * (1.0 / lengths)[..., None]


def l2_normalise(B: Backend, v: Value) -> Value:
    """v / |v| along the last axis (v * rsqrt(sum v^2))."""
    return v * B.rsqrt(B.square(v).sum(axis=-1, keepdims=True))


@dataclass(frozen=True)
class SimilarityHead:
    """scale * cos(pooled hidden state, anchor_c) for public anchors [C, H]."""

    anchors: np.ndarray
    scale: float = 20.0
    kind: str = field(default="similarity", init=False)

    def __post_init__(self) -> None:
        a = np.asarray(self.anchors, dtype=np.float64)
        if a.ndim != 2:
            raise ValueError(f"anchors must be [classes, hidden], got shape {a.shape}")
        object.__setattr__(self, "anchors", a / np.linalg.norm(a, axis=-1, keepdims=True))

    @property
    def classes(self) -> int:
        return self.anchors.shape[0]

    def logits(
        self,
        B: Backend,
        cfg: EncoderConfig,
        hidden: Value,
        mask: np.ndarray,
        mask_positions: np.ndarray | None,
    ) -> Value:
        unit = l2_normalise(B, mean_pool(hidden, mask))
        return unit @ (self.scale * self.anchors.T)


@dataclass(frozen=True)
class MLMHead:
    """Verbalizer logits of ``label_word_ids`` at the mask position of each example."""

    label_word_ids: Sequence[int]
    kind: str = field(default="mlm", init=False)

    @property
    def classes(self) -> int:
        return len(self.label_word_ids)

    def logits(
        self,
        B: Backend,
        cfg: EncoderConfig,
        hidden: Value,
        mask: np.ndarray,
        mask_positions: np.ndarray | None,
    ) -> Value:
        if not cfg.has_mlm_head:
            raise ValueError("this checkpoint has no MLM head: use the similarity head")
        if mask_positions is None:
            raise ValueError("the MLM head needs the mask position of every example")
        positions = np.asarray(mask_positions, dtype=np.int64)
        if positions.shape != (hidden.shape[0],):
            raise ValueError(f"need one mask position per sequence, got shape {positions.shape}")
        h = hidden[np.arange(hidden.shape[0]), positions]  # [N, H]
        h = B.gelu(B.linear(h, "mlm.dense"))
        h = B.layer_norm(h, "mlm.ln", cfg.layer_norm_eps)
        return B.linear_columns(h, "mlm.decoder", list(self.label_word_ids))


Head = SimilarityHead | MLMHead


def similarity_anchors(
    weights: dict[str, np.ndarray], cfg: EncoderConfig, anchor_embeddings: np.ndarray, mask: np.ndarray
) -> np.ndarray:
    """Unit-norm anchor embeddings [C, H] of C anchor sentences, in plaintext with exact softmax.

    ``anchor_embeddings`` is the public embedding layer's output for the anchor sentences [C, T, H].
    """
    B = PlainBackend(weights)
    hidden = encode(B, cfg, AttentionConfig(mode="softmax"), anchor_embeddings, mask)
    pooled = mean_pool(hidden, mask)
    return pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)
