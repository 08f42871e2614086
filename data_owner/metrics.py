"""Scores the data owner computes on its own side from revealed logits: accuracy, F1 and the dev loss.

Training losses are computed by the oracle (on the servers in the secure backend).  Dev and test logits come
back to the data owner, which scores them here; the dev loss (used to break ties between equal dev scores)
is the same ``mpc_core.nn.loss`` formula the servers use (cross-entropy, or hinge with margin 2).
"""

from __future__ import annotations

import numpy as np

from mpc_core.nn import PlainBackend
from mpc_core.nn.loss import loss_fn


def loss(kind: str, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-candidate loss [...] of logits [..., n, C]: ``mpc_core.nn.loss`` on the plaintext backend."""
    onehot = np.eye(logits.shape[-1])[labels]
    return np.asarray(loss_fn(kind)(PlainBackend({}), np.asarray(logits, dtype=np.float64), onehot))


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    return float((pred == labels).mean())


def f1(pred: np.ndarray, labels: np.ndarray, positive: int = 1) -> float:
    """F1 of the positive class (GLUE's MRPC metric)."""
    tp = float(((pred == positive) & (labels == positive)).sum())
    fp = float(((pred == positive) & (labels != positive)).sum())
    fn = float(((pred != positive) & (labels == positive)).sum())
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def score(metric: str, logits: np.ndarray, labels: np.ndarray) -> float:
    """The task metric of one candidate's logits [n, C]."""
    pred = logits.argmax(-1)
    return f1(pred, labels) if metric == "f1" else accuracy(pred, labels)


def percent(value: float) -> float:
    """A score (accuracy or F1, a fraction in [0, 1]) in percent: the one unit every output of ``secp-tune``
    uses (text, JSON, report, plots), as docs/accuracy.md does.  Internal state keeps the fraction."""
    return 100.0 * float(value)
