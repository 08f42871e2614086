"""The plaintext loss oracle: the same tuning code on a model in the clear.  NOT PRIVATE.

For fast studies and as the reference of the secure backend.  Every output of a run on this backend carries
:data:`~data_owner.oracle.NOT_PRIVATE`; the oracle reports zero bytes because nothing is sent.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from data_owner import metrics
from data_owner.backends.plain_model import PlainModel
from data_owner.encode import EncodedSplit
from data_owner.errors import DataOwnerError
from data_owner.oracle import LossOracle, check_prompts
from data_owner.task import Head


class PlainOracle(LossOracle):
    """Evaluates candidates with :class:`PlainModel` (float64 by default) in this process."""

    private = False
    label = "plain (NOT PRIVATE)"

    def __init__(
        self,
        model_dir: Path,
        head: Head,
        *,
        anchors: tuple[np.ndarray, np.ndarray] | None = None,
        word_ids: list[int] | None = None,
        scale: float = 20.0,
        dtype: str = "float64",
        batch_rows: int = 64,
    ) -> None:
        super().__init__()
        self.model = PlainModel(model_dir, dtype=getattr(torch, dtype), batch_rows=batch_rows)
        self.head = head
        self.scale = scale
        self.splits: dict[str, tuple[EncodedSplit, str | None]] = {}
        if head == "similarity":
            if anchors is None:
                raise ValueError("the similarity head needs anchor texts embedded with the public layer")
            emb, mask = anchors
            with torch.no_grad():
                x = torch.from_numpy(emb).to(self.model.dtype)
                m = torch.from_numpy(mask)
                self.anchor_vecs = PlainModel.mean_pool(self.model.encoder(x, m), m)  # [C, H], public
        else:
            if not self.model.has_mlm_head:
                raise DataOwnerError(f"{model_dir} has no MLM head; use --head similarity")
            if word_ids is None:
                raise ValueError("the MLM head needs the verbalizer word ids")
            self.word_ids = word_ids

    def upload(self, name: str, split: EncodedSplit, loss: str | None = None) -> None:
        self.splits[name] = (split, loss)

    def _head(self, split: EncodedSplit):
        mask_pos = torch.from_numpy(split.mask_pos)

        def similarity(hidden: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            return self.scale * PlainModel.mean_pool(hidden, mask) @ self.anchor_vecs.T

        def mlm(hidden: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            at = hidden[torch.arange(hidden.shape[0]), mask_pos[rows]]
            return self.model.mlm_logits(at, self.word_ids)

        return similarity if self.head == "similarity" else mlm

    def logits(self, prompts: np.ndarray, split: str) -> np.ndarray:
        data, _ = self._split(split)
        prompts = check_prompts(prompts, data.prompt_length, data.embeds.shape[-1])
        t0 = time.perf_counter()
        out = self.model.candidate_logits(data.embeds, data.attention_mask, prompts, self._head(data))
        self.cost.seconds += time.perf_counter() - t0
        return out

    def losses(self, prompts: np.ndarray, split: str = "train") -> np.ndarray:
        data, loss = self._split(split)
        return metrics.loss(loss or "ce", self.logits(prompts, split), data.labels)

    def _split(self, name: str) -> tuple[EncodedSplit, str | None]:
        if name not in self.splits:
            raise KeyError(f"split {name!r} was not uploaded")
        return self.splits[name]
