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


#: Resamples of :func:`gain_interval` (seeded: the same logits always give the same interval).
BOOTSTRAP_ROUNDS = 2000


def gain_interval(
    metric: str, tuned: np.ndarray, baseline: np.ndarray, labels: np.ndarray, level: float = 0.95
) -> tuple[float, float]:
    """A paired bootstrap interval of score(tuned) - score(baseline), in percent points.

    Why: on a few dozen test examples one prediction moves accuracy by several points, so a gain means
    little without its uncertainty.  The examples are resampled with replacement (the same indices for both
    prompts: the comparison is paired) and the task metric recomputed; the interval is the central
    ``level`` of the resampled gains.  It covers the sampling of the evaluated examples only, not the
    seed of the run (docs/accuracy.md gives the spread over seeds).
    """
    pred_a, pred_b = np.asarray(tuned).argmax(-1), np.asarray(baseline).argmax(-1)
    labels = np.asarray(labels)
    rng = np.random.default_rng(0)
    index = rng.integers(0, labels.size, size=(BOOTSTRAP_ROUNDS, labels.size))
    if metric == "f1":
        gains = [f1(pred_a[i], labels[i]) - f1(pred_b[i], labels[i]) for i in index]
    else:
        gains = (
            (pred_a[index] == labels[index]).mean(-1) - (pred_b[index] == labels[index]).mean(-1)
        ).tolist()
    lo, hi = np.quantile(np.asarray(gains), [(1 - level) / 2, (1 + level) / 2])
    return percent(lo), percent(hi)
