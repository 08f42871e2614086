"""The plaintext loss oracle: the same tuning code on a model in the clear.  NOT PRIVATE.

For fast studies and as the reference of the secure backend: it runs helper D's layers
(``mpc_core.nn``: ``candidate_logits`` and the losses) on their float64 ``PlainBackend``, exactly the code
the servers run on shares.  Examples are processed in chunks of similar length (each chunk cut to its own
longest row; padding rows are masked, so the result is the same up to float rounding) to keep the
plaintext study fast.  Every output of a run on this backend carries
:data:`~data_owner.oracle.NOT_PRIVATE`; the oracle reports zero bytes because nothing is sent.
"""

from __future__ import annotations

import time

import numpy as np

from data_owner.encode import EncodedSplit, PublicModel
from data_owner.errors import DataOwnerError
from data_owner.oracle import LossOracle, check_prompts
from data_owner.task import Head
from mpc_core.nn import (
    AttentionConfig,
    MLMHead,
    PlainBackend,
    SimilarityHead,
    candidate_logits,
    similarity_anchors,
)
from mpc_core.nn.loss import loss_fn


class PlainOracle(LossOracle):
    """Evaluates candidates with ``mpc_core.nn`` on its float64 plaintext backend, in this process."""

    private = False
    label = "plain (NOT PRIVATE)"

    def __init__(
        self,
        model: PublicModel,
        head: Head,
        *,
        anchors: tuple[np.ndarray, np.ndarray] | None = None,
        word_ids: list[int] | None = None,
        scale: float = 20.0,
        attention: AttentionConfig | None = None,
        chunk_rows: int = 128,
    ) -> None:
        super().__init__()
        if model.weights is None:
            raise DataOwnerError(f"{model.folder}: the plain backend needs the plaintext weights")
        self.cfg = model.cfg
        self.B = PlainBackend(model.weights)
        self.attention = attention or AttentionConfig(mode="softmax")
        self.chunk_rows = chunk_rows
        self.splits: dict[str, tuple[EncodedSplit, str | None]] = {}
        if head == "similarity":
            if anchors is None:
                raise ValueError("the similarity head needs the anchor texts' embedding-layer outputs")
            self.head = SimilarityHead(similarity_anchors(model.weights, self.cfg, *anchors), scale=scale)
        else:
            if not self.cfg.has_mlm_head:
                raise DataOwnerError(f"{model.folder} has no MLM head; use --head similarity")
            if word_ids is None:
                raise ValueError("the MLM head needs the verbalizer word ids")
            self.head = MLMHead(word_ids)

    def upload(self, name: str, split: EncodedSplit, loss: str | None = None) -> None:
        self.splits[name] = (split, loss)

    def logits(self, prompts: np.ndarray, split: str) -> np.ndarray:
        data, _ = self._split(split)
        prompts = check_prompts(prompts, data.prompt_length, data.embeds.shape[-1])
        t0 = time.perf_counter()
        k, n = len(prompts), len(data)
        lengths = data.attention_mask.sum(1)
        order = np.argsort(lengths, kind="stable")
        per_chunk = max(1, self.chunk_rows // k)
        out = np.empty((k, n, self.head.classes))
        mpos = data.mask_pos if self.head.kind == "mlm" else None
        for s in range(0, n, per_chunk):
            idx = order[s : s + per_chunk]
            T = max(int(lengths[idx].max()), data.prompt_length + 2)
            out[:, idx] = candidate_logits(
                self.B,
                self.cfg,
                self.attention,
                self.head,
                data.embeds[idx, :T],
                prompts,
                data.attention_mask[idx, :T],
                None if mpos is None else mpos[idx],
                None if data.pool_mask is None else data.pool_mask[idx, :T],
            )
        self.cost.seconds += time.perf_counter() - t0
        return out

    def losses(self, prompts: np.ndarray, split: str = "train") -> np.ndarray:
        data, loss = self._split(split)
        logits = self.logits(prompts, split)
        return np.asarray(loss_fn(loss or "ce")(self.B, logits, data.onehot), dtype=np.float64)

    def _split(self, name: str) -> tuple[EncodedSplit, str | None]:
        if name not in self.splits:
            raise KeyError(f"split {name!r} was not uploaded")
        return self.splits[name]
