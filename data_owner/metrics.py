"""Scores the data owner computes on its own side from revealed logits: accuracy, F1, CE and hinge.

Training losses are computed by the oracle (on the servers in the secure backend); these functions score
dev and test predictions, and define the loss formulas that the plaintext reference must match:

- cross-entropy: mean_i [ logsumexp_j s_ij - s_i,y_i ];
- hinge (margin m, BBT recommends m = 2 for MRPC and RTE): mean_i max_{j != y_i} max(0, m - s_i,y_i + s_ij).
"""

from __future__ import annotations

import numpy as np

HINGE_MARGIN = 2.0


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-candidate mean cross-entropy; ``logits`` [..., n, C], ``labels`` [n] -> [...]."""
    m = logits.max(-1, keepdims=True)
    lse = np.log(np.exp(logits - m).sum(-1)) + m[..., 0]
    picked = np.take_along_axis(logits, np.broadcast_to(labels[..., None], (*logits.shape[:-1], 1)), -1)[
        ..., 0
    ]
    return (lse - picked).mean(-1)


def hinge(logits: np.ndarray, labels: np.ndarray, margin: float = HINGE_MARGIN) -> np.ndarray:
    """Per-candidate mean multi-class hinge loss; ``logits`` [..., n, C], ``labels`` [n] -> [...]."""
    onehot = np.eye(logits.shape[-1], dtype=bool)[labels]
    correct = np.where(onehot, logits, 0.0).sum(-1, keepdims=True)
    viol = np.where(onehot, 0.0, np.maximum(0.0, margin - correct + logits))
    return viol.max(-1).mean(-1)


def loss(kind: str, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    if kind == "ce":
        return cross_entropy(logits, labels)
    if kind == "hinge":
        return hinge(logits, labels)
    raise ValueError(f"unknown loss {kind!r}")


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
