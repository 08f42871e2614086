"""The ``LossOracle``: the only way the tuner reaches the model.

One generation is ONE call: ``losses(prompts [popsize, L, H]) -> [popsize]`` on the uploaded training split;
dev and test scoring is ``logits(prompts [k, L, H], split) -> [k, n, C]``.  The plain backend computes both in
float64/float32 plaintext (NOT PRIVATE); the secure backend secret-shares the prompts, has the cluster
evaluate them and reconstructs only the returned result shares.  Splits are uploaded once with ``upload``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from data_owner.encode import EncodedSplit

NOT_PRIVATE = "NOT PRIVATE: plaintext backend (the model and the data are in the clear; for studies only)"


@dataclass
class Cost:
    """Traffic so far: the data owner's own (shares up, result shares down) and the servers' (peer
    messages between the compute parties and the dealer, as the servers report them), and wall time."""

    bytes_sent: int = 0
    bytes_received: int = 0
    rounds: int = 0
    server_bytes: int = 0
    server_rounds: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "rounds": self.rounds,
            "server_bytes": self.server_bytes,
            "server_rounds": self.server_rounds,
            "seconds": round(self.seconds, 3),
        }


class LossOracle(ABC):
    """Evaluates candidate prompts on uploaded splits."""

    #: ``False`` only for the plaintext backend; every output of a non-private run says so.
    private: bool
    #: A short name for outputs, e.g. ``"plain (NOT PRIVATE)"`` or ``"secure 2pc"``.
    label: str

    def __init__(self) -> None:
        self.cost = Cost()

    @abstractmethod
    def upload(self, name: str, split: EncodedSplit, loss: str | None = None) -> None:
        """Make a split available under ``name`` (sent once); ``loss`` ('ce'/'hinge') for training splits."""

    @abstractmethod
    def losses(self, prompts: np.ndarray, split: str = "train") -> np.ndarray:
        """Per-candidate loss [popsize] of prompts [popsize, L, H] on an uploaded split, in one request."""

    @abstractmethod
    def logits(self, prompts: np.ndarray, split: str) -> np.ndarray:
        """Class scores [k, n, C] of prompts [k, L, H] on an uploaded split, in one request."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections (the secure backend closes its job)."""

    @property
    def job_ref(self) -> str | None:
        """The server-side job this oracle holds (recorded in the checkpoint), if any."""
        return None

    def release(self, job_ref: str) -> None:  # noqa: B027 - optional hook
        """Close a job an earlier process left behind (a crashed or failed run), wherever it still exists."""

    def privacy(self) -> str:
        return "private (secure backend)" if self.private else NOT_PRIVATE


def check_prompts(prompts: np.ndarray, length: int, hidden: int) -> np.ndarray:
    prompts = np.asarray(prompts, dtype=np.float64)
    if prompts.ndim != 3 or prompts.shape[1:] != (length, hidden):
        raise ValueError(f"prompts must be [k, {length}, {hidden}], got {prompts.shape}")
    return prompts
