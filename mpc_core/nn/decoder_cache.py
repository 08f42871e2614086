"""`suffix` prompt placement with the examples' keys and values computed once (either decoder backend).

In a causal model the examples' hidden states do not depend on tokens placed after them.  So for
``suffix`` placement (example text, then the prompt, then the answer template) the examples run once per
job (:func:`prefill`, which keeps every layer's rotated keys and values), and each of the P candidates runs
only its own L = L_prompt + L_template tokens per example (:func:`extend`), attending to the kept keys and
values and causally to its own tokens.  On shares the kept keys and values are shares that are never
opened; only the final logits or losses are.

Shapes: examples [n, T, H] with public mask [n, T] (right or left padding; real tokens are numbered 0..len-1);
new tokens [P, L, H], the same for every example (the prompt and the template's embeddings); the new
tokens of example i take positions len_i, len_i + 1, ...  The P n sequences are candidate-major (row p n + i).

Cost of :func:`extend` per layer: the attention to the cache is one product per example and key/value head
with all P candidates' queries stacked along the rows ([n, kv, P g L, d] @ [n, kv, d, T]), so the cache
is never repeated P times (no extra opening of it in 2pc); the softmax runs over T + L keys per new query.
Against recomputing the P n full sequences, the linear layers and MLPs shrink from (T + L) to L rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpc_core.nn.backend import Value
from mpc_core.nn.decoder import decode, merge_heads, mlp, project_qkv, rotary_tables
from mpc_core.nn.decoder_head import NextTokenHead
from mpc_core.nn.llama_config import DecoderConfig
from mpc_core.nn.loss import loss_fn


@dataclass
class DecoderCache:
    """Every layer's keys and values [n, kv, T, d] of the examples, and their public mask and lengths."""

    keys: list[Value]
    values: list[Value]
    mask: np.ndarray
    lengths: np.ndarray


def cache_entries(cfg: DecoderConfig, rows: int, tokens: int) -> int:
    """Entries of the cache of ``rows`` examples padded to ``tokens``: every layer's keys and values,
    layers x rows x kv_heads x tokens x head_dim x 2 (one float64 in plaintext, one ring element per share
    slot on shares: 8 bytes each).  Known from public shapes: memory limits are checked before a prefill."""
    return 2 * cfg.layers * rows * cfg.kv_heads * tokens * cfg.head_dim


def prefill(B, cfg: DecoderConfig, examples: Value, mask: np.ndarray) -> DecoderCache:
    """Run the examples [n, T, H] once and keep every layer's keys and values."""
    mask = np.asarray(mask, dtype=np.int64)
    record: list = []
    decode(B, cfg, examples, mask, record=record)
    return DecoderCache([k for k, _ in record], [v for _, v in record], mask, mask.sum(axis=1))


def suffix_tokens(B, prompts: Value, template: np.ndarray | Value) -> Value:
    """[P, L_prompt + L_template, H]: each candidate's prompt rows followed by the template rows.

    The template [L_template, H] is public (an array) or a value of the backend (on shares: uploaded by the
    data owner, since the servers do not hold the public embedding table); either way no product is needed.
    """
    p, _, h = prompts.shape
    if isinstance(template, np.ndarray) or not hasattr(template, "shape"):
        template = np.asarray(template, dtype=np.float64)
    if len(template.shape) != 2 or template.shape[1] != h:
        raise ValueError(f"template embeddings must be [tokens, {h}], got shape {tuple(template.shape)}")
    if isinstance(template, np.ndarray):
        public = B.broadcast_to(prompts[:, :1] * 0, (p, template.shape[0], h)) + template[None]
    else:
        public = B.broadcast_to(template[None], (p, template.shape[0], h))
    return B.concatenate([prompts, public], axis=1)


def extend(B, cfg: DecoderConfig, cache: DecoderCache, new: Value) -> Value:
    """The residual stream [P n, L, H] of the new tokens [P, L, H] after every example of the cache."""
    n, t = cache.mask.shape
    p, length, hidden = new.shape
    if length < 1:
        raise ValueError("extend needs at least one new token")
    if int(cache.lengths.max(initial=0)) + length > cfg.max_positions:
        raise ValueError(
            f"sequence too long: {int(cache.lengths.max())} + {length} tokens exceed the model's "
            f"{cfg.max_positions} positions"
        )
    rows = p * n
    positions = np.tile(cache.lengths[:, None] + np.arange(length)[None], (p, 1))  # [P n, L]
    cos, sin = rotary_tables(cfg, positions)
    # cached keys: visible where real (every new token comes after them); new keys: causal
    keep = np.concatenate(
        [
            np.broadcast_to(np.tile(cache.mask, (p, 1))[:, None, None, :], (rows, 1, length, t)),
            np.broadcast_to(np.tril(np.ones((length, length), dtype=np.int64)), (rows, 1, length, length)),
        ],
        axis=-1,
    )
    x = B.broadcast_to(new[:, None], (p, n, length, hidden)).reshape(rows, length, hidden)
    eps = cfg.rms_norm_eps
    for layer in range(cfg.layers):
        normed = B.rms_norm(x, f"layer.{layer}.attn_norm", eps)
        x = x + _cached_attention(B, cfg, layer, normed, cache, keep, cos, sin, p)
        x = x + mlp(B, layer, B.rms_norm(x, f"layer.{layer}.mlp_norm", eps))
    return x


def candidate_logits(
    B,
    cfg: DecoderConfig,
    head: NextTokenHead,
    cache: DecoderCache,
    prompts: Value,
    template: np.ndarray | Value,
) -> Value:
    """Verbalizer logits [P, n, C] of every (candidate, example) pair: the next-token logits after the
    candidate's prompt and the template's last token (the answer position), from the cached examples."""
    out = extend(B, cfg, cache, suffix_tokens(B, prompts, template))
    rows, length = out.shape[0], out.shape[1]
    logits = head.logits(B, cfg, out, np.full(rows, length - 1))
    return logits.reshape(prompts.shape[0], cache.mask.shape[0], head.classes)


def candidate_losses(
    B,
    cfg: DecoderConfig,
    head: NextTokenHead,
    cache: DecoderCache,
    prompts: Value,
    template: np.ndarray | Value,
    onehot: Value,
    loss: str = "ce",
    **loss_options: float,
) -> Value:
    """One loss per candidate [P] (cross-entropy ``"ce"`` or ``"hinge"`` over the verbalizer logits,
    averaged over the examples), computed on shares end to end: only the data owner opens it."""
    fn = loss_fn(loss)
    return fn(B, candidate_logits(B, cfg, head, cache, prompts, template), onehot, **loss_options)


def _cached_attention(
    B, cfg: DecoderConfig, layer: int, x: Value, cache: DecoderCache, keep, cos, sin, p: int
):
    n, t = cache.mask.shape
    rows, length, _ = x.shape
    h, kv, g, d = cfg.heads, cfg.kv_heads, cfg.group, cfg.head_dim
    q, k, v = project_qkv(B, cfg, layer, x, cos, sin)  # q [P n, h, L, d]
    kc, vc = cache.keys[layer], cache.values[layer]  # [n, kv, T, d]
    # all candidates' queries of example i stacked along the rows: [n, kv, P g L, d]
    q_by_example = (
        q.reshape(p, n, kv, g, length, d).transpose(1, 2, 0, 3, 4, 5).reshape(n, kv, p * g * length, d)
    )
    s_cache = (q_by_example @ kc.swapaxes(-1, -2)).reshape(n, kv, p, g, length, t)
    s_cache = s_cache.transpose(2, 0, 1, 3, 4, 5).reshape(rows, h, length, t)
    s_new = (q.reshape(rows, kv, g * length, d) @ k.swapaxes(-1, -2)).reshape(rows, h, length, length)
    probs = B.softmax(B.concatenate([s_cache, s_new], axis=-1), keep)
    p_cache = probs[..., :t].reshape(p, n, kv, g, length, t).transpose(1, 2, 0, 3, 4, 5)
    ctx_cache = (p_cache.reshape(n, kv, p * g * length, t) @ vc).reshape(n, kv, p, g, length, d)
    ctx_cache = ctx_cache.transpose(2, 0, 1, 3, 4, 5).reshape(rows, h, length, d)
    ctx_new = (probs[..., t:].reshape(rows, kv, g * length, length) @ v).reshape(rows, h, length, d)
    return B.project(merge_heads(ctx_cache + ctx_new), f"layer.{layer}.attn.out")


def full_sequences(examples: np.ndarray, mask: np.ndarray, new: np.ndarray) -> list[np.ndarray]:
    """The P n unpadded sequences that :func:`extend` stands for (plaintext reference, tests)."""
    lengths = np.asarray(mask).sum(axis=1)
    starts = [int(np.argmax(m)) for m in np.asarray(mask)]  # first real token (left padding)
    return [
        np.concatenate([examples[i, starts[i] : starts[i] + lengths[i]], new[c]], axis=0)
        for c in range(new.shape[0])
        for i in range(examples.shape[0])
    ]


__all__ = [
    "DecoderCache",
    "cache_entries",
    "candidate_logits",
    "candidate_losses",
    "extend",
    "full_sequences",
    "prefill",
    "suffix_tokens",
]
