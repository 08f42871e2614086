"""The LLaMA decoder stack after the (public) token embedding, written once for both decoder backends.

One block (pre-norm, as LLaMA):

    a = x + W_o Attention(RMSNorm(x))
    y = a + W_down (SiLU(W_gate n) * (W_up n)),  n = RMSNorm(a)

Attention is grouped-query causal softmax attention with rotary position embeddings:

* q, k, v = n W_q, n W_k, n W_v in one fused product; q has ``heads`` heads, k and v ``kv_heads``;
* rotary embeddings rotate q and k by public angles pos * theta^(-2i/d) (Hugging Face's rotate_half
  layout); on shares that is local products with public ring integers and one truncation for q and k
  together, with 1/sqrt(d) folded into q's tables (no separate scaling product);
* grouped-query: the ``group`` query heads of one key/value head are stacked along the rows, so scores are
  one product [N, kv, group T, d] @ [N, kv, d, T] and no key or value is repeated (no extra traffic);
* the causal mask and the padding mask are public: key j is visible from query i iff j <= i and j is a
  real token (a padding row sees itself too, so no softmax row is empty; its output is never used).

Positions are public (cumulative count of real tokens, so right and left padding both number real tokens
0, 1, ...).  Inputs are token embeddings [N, T, H] (the data owner's rows of the public ``emb.word``);
the output is the residual stream after the last block [N, T, H], before the final RMSNorm (the head
applies it to the rows it needs).  Tensor names are those of :mod:`mpc_core.nn.llama_weights`.
"""

from __future__ import annotations

import math

import numpy as np

from mpc_core.nn.backend import Value
from mpc_core.nn.llama_config import DecoderConfig


def embed_tokens(word: np.ndarray, input_ids: np.ndarray) -> np.ndarray:
    """Rows of the public token embedding [V, H] for integer ids [..., T] (the data owner's side)."""
    ids = np.asarray(input_ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= word.shape[0]):
        raise ValueError(f"token ids must lie in [0, {word.shape[0]}), got [{ids.min()}, {ids.max()}]")
    return np.asarray(word, dtype=np.float64)[ids]


def positions_from_mask(mask: np.ndarray) -> np.ndarray:
    """Position ids [N, T]: real tokens numbered 0, 1, ... in order; padding gets its neighbour's number."""
    mask = np.asarray(mask, dtype=np.int64)
    return np.maximum(np.cumsum(mask, axis=-1) - 1, 0)


def causal_keep(mask: np.ndarray) -> np.ndarray:
    """Public 0/1 attention mask [N, 1, T, T]: query i sees key j iff j <= i and (j is real or j == i)."""
    mask = np.asarray(mask, dtype=np.int64)
    t = mask.shape[-1]
    lower = np.tril(np.ones((t, t), dtype=np.int64))
    visible = np.maximum(mask[:, None, :], np.eye(t, dtype=np.int64)[None])  # [N, T(query), T(key)]
    return (lower[None] * visible)[:, None]


def rotary_tables(cfg: DecoderConfig, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin [N, 1, T, d] of the angles pos * theta^(-2i/d), duplicated over both halves (float64;
    Hugging Face computes the angles in float32, which differs by about 1e-7 * pos)."""
    d = cfg.head_dim
    inv_freq = 1.0 / cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
    angles = np.asarray(positions, dtype=np.float64)[..., None] * inv_freq  # [N, T, d/2]
    angles = np.concatenate([angles, angles], axis=-1)[:, None]
    return np.cos(angles), np.sin(angles)


def _split_heads(x: Value, heads: int) -> Value:
    n, t, width = x.shape
    return x.reshape(n, t, heads, width // heads).transpose(0, 2, 1, 3)


def merge_heads(x: Value) -> Value:
    n, heads, t, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(n, t, heads * d)


def project_qkv(B, cfg: DecoderConfig, layer: int, x: Value, cos: np.ndarray, sin: np.ndarray):
    """Heads of block ``layer`` for normed x [N, T, H]: q [N, h, T, d] (rotated, times 1/sqrt(d)),
    k [N, kv, T, d] (rotated) and v [N, kv, T, d]; one fused product, one rotation (one truncation)."""
    prefix = f"layer.{layer}.attn"
    n, t, _ = x.shape
    h, kv, d = cfg.heads, cfg.kv_heads, cfg.head_dim
    q, k, v = B.project_many(x, [f"{prefix}.q", f"{prefix}.k", f"{prefix}.v"])
    q, k, v = _split_heads(q, h), _split_heads(k, kv), _split_heads(v, kv)
    scale = 1.0 / math.sqrt(d)
    cos_qk, sin_qk = (
        np.concatenate([np.broadcast_to(c * scale, (n, h, t, d)), np.broadcast_to(c, (n, kv, t, d))], axis=1)
        for c in (cos, sin)
    )
    qk = B.rotate(B.concatenate([q, k], axis=1), cos_qk, sin_qk)
    return qk[:, :h], qk[:, h:], v


def attention(
    B,
    cfg: DecoderConfig,
    layer: int,
    x: Value,
    keep: np.ndarray,
    cos: np.ndarray,
    sin: np.ndarray,
    record: list | None = None,
) -> Value:
    """Grouped-query causal attention of block ``layer`` on normed input x [N, T, H], incl. W_o.

    ``record`` (a list), when given, receives this layer's (k, v): the keys and values a later call of
    :func:`mpc_core.nn.decoder_cache.extend` attends to.
    """
    n, t, _ = x.shape
    h, kv, g, d = cfg.heads, cfg.kv_heads, cfg.group, cfg.head_dim
    q, k, v = project_qkv(B, cfg, layer, x, cos, sin)
    if record is not None:
        record.append((k, v))
    scores = q.reshape(n, kv, g * t, d) @ k.swapaxes(-1, -2)  # [N, kv, g T, T]
    probs = B.softmax(scores.reshape(n, h, t, t), keep)
    ctx = probs.reshape(n, kv, g * t, t) @ v  # [N, kv, g T, d]
    return B.project(merge_heads(ctx.reshape(n, h, t, d)), f"layer.{layer}.attn.out")


def mlp(B, layer: int, x: Value) -> Value:
    """SwiGLU: W_down (SiLU(x W_gate) * (x W_up)), gate and up in one fused product."""
    prefix = f"layer.{layer}.mlp"
    gate, up = B.project_many(x, [f"{prefix}.gate", f"{prefix}.up"])
    return B.project(B.silu(gate) * up, f"{prefix}.down")


def decoder_layer(
    B,
    cfg: DecoderConfig,
    layer: int,
    x: Value,
    keep: np.ndarray,
    cos: np.ndarray,
    sin: np.ndarray,
    record: list | None = None,
) -> Value:
    eps = cfg.rms_norm_eps
    normed = B.rms_norm(x, f"layer.{layer}.attn_norm", eps)
    a = x + attention(B, cfg, layer, normed, keep, cos, sin, record)
    return a + mlp(B, layer, B.rms_norm(a, f"layer.{layer}.mlp_norm", eps))


def decode(
    B,
    cfg: DecoderConfig,
    x: Value,
    mask: np.ndarray,
    positions: np.ndarray | None = None,
    layers: int | None = None,
    record: list | None = None,
) -> Value:
    """The first ``layers`` blocks (all by default) on token embeddings x [N, T, H] with public ``mask``.

    ``positions`` (public, [N, T]) default to :func:`positions_from_mask`.  Returns the residual stream
    [N, T, H] before the final RMSNorm; ``record`` receives every layer's (k, v) (see :func:`attention`).
    """
    mask = np.asarray(mask)
    if mask.shape != tuple(x.shape[:2]):
        raise ValueError(f"mask has shape {mask.shape}, expected {tuple(x.shape[:2])}")
    positions = positions_from_mask(mask) if positions is None else np.asarray(positions)
    if positions.shape != mask.shape:
        raise ValueError(f"positions have shape {positions.shape}, expected {mask.shape}")
    if positions.max(initial=0) >= cfg.max_positions:
        raise ValueError(
            f"sequence too long: position {positions.max()} is beyond the model's {cfg.max_positions}"
        )
    keep = causal_keep(mask)
    cos, sin = rotary_tables(cfg, positions)
    for layer in range(cfg.layers if layers is None else layers):
        x = decoder_layer(B, cfg, layer, x, keep, cos, sin, record)
    return x


def final_norm(B, cfg: DecoderConfig, x: Value) -> Value:
    """The model's last RMSNorm (``norm.weight``): Hugging Face's last hidden state."""
    return B.rms_norm(x, "norm", cfg.rms_norm_eps)
