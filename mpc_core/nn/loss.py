"""Losses over verbalizer logits, averaged per candidate prompt, for either backend.

``logits`` is [..., n, C] (a leading candidate axis in batched tuning) and ``onehot`` the [n, C] one-hot
labels: secret-shared in the secure backend (the servers never learn a label), a float array in the
plaintext one.  The result is one loss per candidate, [...]; only the data owner ever opens it.

* cross-entropy: mean_i (logsumexp_c x_ic - sum_c y_ic x_ic), with logsumexp computed stably as
  m + log sum_c exp(x_c - m), m = max_c x_c: every exponent is <= 0 and the log's argument lies in [1, C].
  The secure exp needs the logit spread max - min below 240 (the similarity head's logits lie in
  [-scale, scale]; verbalizer logits of a pretrained MLM spread by a few tens).
* hinge (multi-class, summed over wrong classes): mean_i sum_{c != y_i} max(0, margin - x_iy + x_ic).
  For C = 2 this is max(0, margin - (x_y - x_other)), the margin ranking loss BBT uses for MRPC and RTE.
  The c = y term equals max(0, margin) = margin exactly, so it is subtracted instead of masked out,
  which saves a secret product.
"""

from __future__ import annotations

from collections.abc import Callable

from mpc_core.nn.backend import Backend, Value


def cross_entropy(B: Backend, logits: Value, onehot: Value) -> Value:
    m = B.max(logits, axis=-1)  # [..., n, 1]
    classes = logits.shape[-1]
    lse = B.log(B.exp(logits - m).sum(axis=-1), lo=1.0, hi=float(max(2, classes))) + m[..., 0]  # [..., n]
    true = (logits * onehot).sum(axis=-1)
    return (lse - true).mean(axis=-1)


def hinge(B: Backend, logits: Value, onehot: Value, margin: float = 2.0) -> Value:
    if margin <= 0:
        raise ValueError("the hinge margin must be positive")
    true = (logits * onehot).sum(axis=-1, keepdims=True)
    per_example = B.relu(logits - true + margin).sum(axis=-1) - margin
    return per_example.mean(axis=-1)


LOSSES: dict[str, Callable[..., Value]] = {"ce": cross_entropy, "hinge": hinge}


def loss_fn(name: str) -> Callable[..., Value]:
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}") from None
