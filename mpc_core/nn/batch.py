"""Batched evaluation of ``P`` candidate prompts on ``n`` examples in one pass (either backend).

The data owner embeds its examples once with the public embedding layer, ``examples`` [n, T, H], with
input ids "<first special token> <L placeholder tokens> text ... <last special token> <pad> ...".  Each
candidate prompt [L, H] is *added* to rows 1..L of every example (BBT's "add" mode), so the prompt
occupies the placeholder rows right after the first special token.  The example shares are uploaded once
and reused; only the prompts [P, L, H] change from call to call.  All P x n sequences run through the
encoder as one batch of N = P n sequences (candidate-major), and the head and loss see [P, n, ...].

The mask [n, T] and the mask positions [n] are public (lengths are public in our threat model).  An
optional pooling mask [n, T] (a subset of the mask, also public) tells a pooling head which rows to pool:
the data owner may leave the prompt rows out of the sentence embedding while they still take part in
attention.
"""

from __future__ import annotations

import numpy as np

from mpc_core.nn.backend import Backend, Value
from mpc_core.nn.config import AttentionConfig, EncoderConfig
from mpc_core.nn.encoder import encode
from mpc_core.nn.heads import Head
from mpc_core.nn.loss import loss_fn


def insert_prompts(B: Backend, examples: Value, prompts: Value) -> Value:
    """[P n, T, H]: example i with prompt p added to rows 1..L, candidate-major (row p n + i)."""
    n, t, h = examples.shape
    p, length, h2 = prompts.shape
    if h2 != h:
        raise ValueError(f"prompt width {h2} differs from the hidden size {h}")
    if length + 2 > t:
        raise ValueError(f"prompt length {length} does not fit sequences of {t} tokens")
    first = B.broadcast_to(examples[None, :, :1], (p, n, 1, h))
    middle = examples[None, :, 1 : 1 + length] + prompts[:, None]
    rest = B.broadcast_to(examples[None, :, 1 + length :], (p, n, t - 1 - length, h))
    joined = B.concatenate([first, middle, rest], axis=2)
    return joined.reshape(p * n, t, h)


def candidate_logits(
    B: Backend,
    cfg: EncoderConfig,
    attn: AttentionConfig,
    head: Head,
    examples: Value,
    prompts: Value,
    mask: np.ndarray,
    mask_positions: np.ndarray | None = None,
    pool_mask: np.ndarray | None = None,
) -> Value:
    """Head logits [P, n, C] of every (candidate, example) pair; ``pool_mask`` (default ``mask``) is what a
    pooling head averages over."""
    n = examples.shape[0]
    p = prompts.shape[0]
    mask = np.asarray(mask)
    if mask.shape != tuple(examples.shape[:2]):
        raise ValueError(f"mask has shape {mask.shape}, expected {tuple(examples.shape[:2])}")
    x = insert_prompts(B, examples, prompts)
    big_mask = np.tile(mask, (p, 1))
    positions = None if mask_positions is None else np.tile(np.asarray(mask_positions), p)
    pooled_rows = big_mask if pool_mask is None else np.tile(_pool_mask(pool_mask, mask), (p, 1))
    hidden = encode(B, cfg, attn, x, big_mask)
    logits = head.logits(B, cfg, hidden, pooled_rows, positions)
    return logits.reshape(p, n, head.classes)


def candidate_losses(
    B: Backend,
    cfg: EncoderConfig,
    attn: AttentionConfig,
    head: Head,
    examples: Value,
    prompts: Value,
    onehot: Value,
    mask: np.ndarray,
    mask_positions: np.ndarray | None = None,
    loss: str = "ce",
    *,
    pool_mask: np.ndarray | None = None,
    **loss_options: float,
) -> Value:
    """One loss per candidate, [P]: the examples' loss averaged (cross-entropy ``"ce"`` or ``"hinge"``)."""
    fn = loss_fn(loss)
    logits = candidate_logits(B, cfg, attn, head, examples, prompts, mask, mask_positions, pool_mask)
    return fn(B, logits, onehot, **loss_options)


def _pool_mask(pool_mask: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A pooling mask must be 0/1 and pick real tokens only, at least one per example."""
    pool_mask = np.asarray(pool_mask)
    if pool_mask.shape != mask.shape:
        raise ValueError(f"pool_mask has shape {pool_mask.shape}, expected {mask.shape}")
    if not np.isin(pool_mask, (0, 1)).all():
        raise ValueError("pool_mask must be 0/1")
    chosen = pool_mask.astype(bool)
    if (chosen & ~mask.astype(bool)).any():
        raise ValueError("pool_mask may select only real (unmasked) tokens")
    if not chosen.any(axis=-1).all():
        raise ValueError("pool_mask must select at least one token of every example")
    return pool_mask
