"""The decoder's classification head: next-token logits of the verbalizer words at the answer position.

For each sequence the data owner names the *answer position* a (public, it follows from the public
lengths and template): the position whose next-token distribution decides the label, i.e. the last token
before the answer slot.  The head takes only those rows of the residual stream, applies the final RMSNorm,
and multiplies by the C verbalizer rows of the output embedding:

    logits = RMSNorm(h_a) E[words]^T                      [N, C]

Only C rows of the [V, H] output matrix take part (V = 49,152 for SmolLM2, C = 2 for SST-2).  With tied
embeddings E is the public token embedding (DESIGN.md section 1), so the rows are public constants and the
product is local on shares (one truncation); an untied ``head.weight`` is secret and its C columns are one
fixed-operand product.  The verbalizer word ids are public to the servers (as for the MLM head).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from mpc_core.nn.backend import Value
from mpc_core.nn.decoder import final_norm
from mpc_core.nn.llama_config import DecoderConfig


@dataclass(frozen=True)
class NextTokenHead:
    """Verbalizer logits of ``label_word_ids``; ``rows`` [C, H] are their public output-embedding rows
    (required for a checkpoint with tied embeddings, unused otherwise)."""

    label_word_ids: Sequence[int]
    rows: np.ndarray | None = None
    kind: str = field(default="next-token", init=False)

    @classmethod
    def from_embeddings(cls, label_word_ids: Sequence[int], word: np.ndarray) -> NextTokenHead:
        """For a tied checkpoint: the rows of the public token embedding [V, H]."""
        ids = [int(i) for i in label_word_ids]
        if not ids or min(ids) < 0 or max(ids) >= word.shape[0]:
            raise ValueError(f"verbalizer word ids must be in [0, {word.shape[0]})")
        return cls(ids, np.asarray(word, dtype=np.float64)[ids])

    @property
    def classes(self) -> int:
        return len(self.label_word_ids)

    def logits(self, B, cfg: DecoderConfig, hidden: Value, answer_positions: np.ndarray) -> Value:
        """[N, C] from the residual stream [N, T, H] (before the final norm) at one position per row."""
        positions = np.asarray(answer_positions, dtype=np.int64)
        n, t = hidden.shape[0], hidden.shape[1]
        if positions.shape != (n,):
            raise ValueError(f"need one answer position per sequence, got shape {positions.shape}")
        if positions.min(initial=0) < 0 or positions.max(initial=0) >= t:
            raise ValueError(f"answer positions must lie in [0, {t})")
        h = final_norm(B, cfg, hidden[np.arange(n), positions])  # [N, H]
        if not cfg.tie_word_embeddings:
            return B.project_columns(h, "head", list(self.label_word_ids))
        if self.rows is None or self.rows.shape != (self.classes, cfg.hidden):
            raise ValueError("a tied checkpoint needs the verbalizer rows of the public embedding")
        return h @ self.rows.T
