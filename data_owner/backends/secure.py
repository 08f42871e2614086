"""The secure loss oracle: prompts go to the cluster only as secret shares; only result shares come back.

Per job the data owner shares the embedding-layer outputs and one-hot labels of each split once; per
generation it shares the ``popsize`` prompts [popsize, L, H] and sends each server its share in ONE request;
the servers run the batched secure forward pass and return shares of the ``popsize`` losses (training) or of
the class scores (evaluation of the data owner's own examples), which only the data owner reconstructs.

The transport is helper F's cluster client (``server/``), reached through :class:`ClusterClient`, the one
interface this module needs.  Until that client exists, :meth:`SecureOracle.connect` raises
:class:`~data_owner.errors.ClusterUnavailableError`: there is never a fallback to the plaintext backend.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Protocol

import numpy as np

from data_owner.encode import EncodedSplit, PublicEmbedding
from data_owner.errors import ClusterUnavailableError
from data_owner.oracle import LossOracle, check_prompts
from data_owner.task import Head, TaskSpec

if TYPE_CHECKING:
    from data_owner.config import RunConfig


class ClusterClient(Protocol):
    """What the data owner needs from the cluster client (shares are made and combined inside it)."""

    def upload_split(
        self,
        name: str,
        embeds: np.ndarray,
        attention_mask: np.ndarray,
        mask_pos: np.ndarray,
        onehot: np.ndarray,
        loss: str | None,
    ) -> None: ...

    def losses(self, prompts: np.ndarray, split: str) -> np.ndarray: ...

    def logits(self, prompts: np.ndarray, split: str) -> np.ndarray: ...

    def traffic(self) -> dict[str, int]: ...

    def close(self) -> None: ...


class SecureOracle(LossOracle):
    private = True

    def __init__(self, client: ClusterClient, suite: str) -> None:
        super().__init__()
        self.client = client
        self.label = f"secure {suite}"
        self.shapes: dict[str, tuple[int, int]] = {}

    @classmethod
    def connect(
        cls, config: RunConfig, task: TaskSpec, head: Head, tokenizer, embedding: PublicEmbedding
    ) -> SecureOracle:
        """Open a job on the cluster named by ``config.cluster``; fails loudly if it cannot."""
        try:
            from server.client import open_tuning_job  # helper F's client
        except ImportError as exc:
            raise ClusterUnavailableError(
                "the secure backend needs the cluster client (server/), which is not installed in this "
                "checkout; use --backend plain for a (NOT PRIVATE) plaintext study"
            ) from exc
        try:
            client = open_tuning_job(
                config=config, task=task, head=head, tokenizer=tokenizer, embedding=embedding
            )
        except (ConnectionError, OSError, TimeoutError) as exc:
            raise ClusterUnavailableError(f"cannot reach the cluster at {config.cluster}: {exc}") from exc
        return cls(client, config.suite)

    def upload(self, name: str, split: EncodedSplit, loss: str | None = None) -> None:
        self._call(
            self.client.upload_split,
            name,
            split.embeds,
            split.attention_mask,
            split.mask_pos,
            split.onehot,
            loss,
        )
        self.shapes[name] = (split.prompt_length, split.embeds.shape[-1])

    def losses(self, prompts: np.ndarray, split: str = "train") -> np.ndarray:
        prompts = check_prompts(prompts, *self.shapes[split])
        return np.asarray(self._call(self.client.losses, prompts, split), dtype=np.float64)

    def logits(self, prompts: np.ndarray, split: str) -> np.ndarray:
        prompts = check_prompts(prompts, *self.shapes[split])
        return np.asarray(self._call(self.client.logits, prompts, split), dtype=np.float64)

    def close(self) -> None:
        self.client.close()

    def _call(self, fn, *args):
        t0 = time.perf_counter()
        try:
            return fn(*args)
        except (ConnectionError, OSError, TimeoutError) as exc:
            raise ClusterUnavailableError(f"lost the cluster: {exc}") from exc
        finally:
            self.cost.seconds += time.perf_counter() - t0
            t = self.client.traffic()
            self.cost.bytes_sent = int(t.get("bytes_sent", 0))
            self.cost.bytes_received = int(t.get("bytes_received", 0))
            self.cost.rounds = int(t.get("rounds", 0))
