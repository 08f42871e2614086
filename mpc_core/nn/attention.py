"""Multi-head self-attention in three modes, written once for both backends.

Shapes: x [N, T, H]; heads split to [N, h, T, d] with d = H / h; ``mask`` [N, T] is the public 0/1
padding mask (1 = real token).  Padding is public in our threat model: shapes and sequence lengths are
known to the servers (they see the share shapes anyway), so masking costs no secure operation beyond
exact multiplications by public 0/1 integers.

Modes (see :class:`~mpc_core.nn.config.AttentionConfig`):

* ``softmax``: softmax(q k^T / sqrt(d) + mask) v, exact up to the backend's softmax.
* ``rfa``: exp(q.k / sqrt(d)) = exp(x.y) with x = q d^(-1/4), y = k d^(-1/4), estimated by
  phi(x).phi(y), phi(x) = exp(|x|^2/2) [cos(W^T x), sin(W^T x)] / sqrt(m) (Rahimi-Recht features of the
  Gaussian kernel, the paper's RFA).  Two exact rewrites keep it in fixed-point range without changing
  the estimate of any attention row: the query factor exp(|x|^2/2) is common to a row's numerator and
  denominator and is dropped, and the key factor is shifted to exp(|y|^2/2 - max_j |y_j|^2/2) <= 1
  (a per-sequence constant that also cancels).
* ``favor``: FAVOR+ positive features phi(x) = exp(W^T x - |x|^2/2) / sqrt(m) with orthogonal
  antithetic W, keys centred per sequence (exp(x.(y - c)) differs from exp(x.y) by exp(x.c), a per-row
  constant that cancels), and exponent shifts that cancel exactly: a query row's factor
  exp(-|x|^2/2 - max_f w_f.x) is common to its numerator and denominator, and so is the per-sequence
  constant exp(-max_{j,f} (w_f.y_j - |y_j|^2/2)) on the keys.  So phi_q = exp(w.x - max_f w_f.x) and
  phi_k = exp(w.y - |y|^2/2 - max_{j,f}(...)), each <= 1/sqrt(m) with its largest entry exactly
  1/sqrt(m), and every exponent <= 0.  (Performer also subtracts |x|^2/2 from the query exponent and
  shifts keys by max w.y only; both leave the estimate unchanged but make denominators underflow: on
  all-MiniLM-L6-v2 that put 46% of them below 2^-16.)
Both random-feature modes compute out = num / max(den, floor) with num = phi(Q) (phi(K)^T V) and
den = phi(Q) phi(K)^T 1 in one product (V is extended by a column of ones): O(T m d) instead of O(T^2 d).
"""

from __future__ import annotations

import math

import numpy as np

from mpc_core.nn.backend import Backend, Value
from mpc_core.nn.config import AttentionConfig, EncoderConfig
from mpc_core.nn.features import favor_features, gaussian_features

#: Masked (padding) entries are set to -MASK_FILL before a max so that they never win it.
MASK_FILL = 64.0
#: Feature exponents are clipped at -EXP_CLIP (e^-200 is far below the 2^-16 resolution), which keeps
#: them inside the secure exp's domain [-240, 0] whatever the key norms.
EXP_CLIP = 200.0


def split_heads(x: Value, heads: int) -> Value:
    n, t, h = x.shape
    return x.reshape(n, t, heads, h // heads).transpose(0, 2, 1, 3)


def merge_heads(x: Value) -> Value:
    n, heads, t, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(n, t, heads * d)


def self_attention(
    B: Backend, cfg: EncoderConfig, attn: AttentionConfig, layer: int, x: Value, mask: np.ndarray
) -> Value:
    """The attention sub-layer of block ``layer`` including its output projection (before residual)."""
    prefix = f"layer.{layer}.attn"
    q, k, v = B.linear_many(x, [f"{prefix}.q", f"{prefix}.k", f"{prefix}.v"])
    q, k, v = (split_heads(t, cfg.heads) for t in (q, k, v))
    mask = np.asarray(mask)
    if attn.mode == "softmax":
        ctx = softmax_attention(B, q, k, v, mask)
    elif attn.mode == "rfa":
        ctx = rfa_attention(B, attn, layer, q, k, v, mask)
    elif attn.mode == "favor":
        ctx = favor_attention(B, attn, layer, q, k, v, mask)
    else:  # pragma: no cover - pydantic restricts the mode
        raise ValueError(f"unknown attention mode {attn.mode!r}")
    return B.linear(merge_heads(ctx), f"{prefix}.out")


def softmax_attention(B: Backend, q: Value, k: Value, v: Value, mask: np.ndarray) -> Value:
    d = q.shape[-1]
    scores = (q * (1.0 / math.sqrt(d))) @ k.swapaxes(-1, -2)  # [N, h, T, T]
    probs = B.softmax(scores, mask[:, None, None, :].astype(np.int64))
    return probs @ v


def _masked_for_max(x: Value, keep: np.ndarray) -> Value:
    """x where keep == 1, -MASK_FILL elsewhere (exact on shares: keep is a public integer array)."""
    return x * keep + (keep - 1).astype(np.float64) * MASK_FILL


def linear_attention(B: Backend, phi_q: Value, phi_k: Value, v: Value, floor: float, den_max: float) -> Value:
    """num / max(den, floor) with [num | den] = phi_q (phi_k^T [v | 1]); padded keys have phi_k = 0.

    ``den_max`` bounds the denominator from above (from the feature bounds), for the reciprocal's domain.
    """
    d = v.shape[-1]
    ones = v[..., :1] * 0 + 1.0
    kv = phi_k.swapaxes(-1, -2) @ B.concatenate([v, ones], axis=-1)  # [N, h, F, d + 1]
    out = phi_q @ kv  # [N, h, T, d + 1]
    num, den = out[..., :d], out[..., d:]
    return num * B.reciprocal(B.floor_at(den, floor), lo=floor, hi=max(2.0 * floor, den_max))


def rfa_attention(
    B: Backend, attn: AttentionConfig, layer: int, q: Value, k: Value, v: Value, mask: np.ndarray
) -> Value:
    t, d = q.shape[-2:]
    m = attn.features
    scale = d**-0.25
    w = gaussian_features(attn, layer, d)
    keep = mask[:, None, :, None].astype(np.int64)  # [N, 1, T, 1]
    qs, ks = q * scale, k * scale
    cq, sq = B.cos_sin(qs @ w)
    ck, sk = B.cos_sin(ks @ w)
    half_norm = B.square(ks).sum(-1, keepdims=True) * 0.5  # |y|^2 / 2, [N, h, T, 1]
    shifted = _masked_for_max(half_norm, keep)
    key_factor = B.exp(shifted - B.max(shifted, axis=-2), lower=-EXP_CLIP) * keep  # <= 1, 0 on padding
    inv = 1.0 / math.sqrt(m)
    phi_q = B.concatenate([cq, sq], axis=-1) * inv
    phi_k = B.concatenate([ck, sk], axis=-1) * (key_factor * inv)
    # |phi_q . phi_k| <= 2m / m = 2 per key, so |den| <= 2 T.
    return linear_attention(B, phi_q, phi_k, v, attn.denominator_floor, 2.0 * t)


def favor_attention(
    B: Backend, attn: AttentionConfig, layer: int, q: Value, k: Value, v: Value, mask: np.ndarray
) -> Value:
    n, heads, t, d = q.shape
    m = attn.features
    scale = d**-0.25
    w = favor_features(attn, layer, d)
    keep = mask[:, None, :, None].astype(np.int64)  # [N, 1, T, 1]
    qs, ks = q * scale, k * scale
    if attn.center_keys:
        lengths = np.maximum(mask.sum(axis=1), 1).astype(np.float64)
        mean = (ks * keep).sum(-2, keepdims=True) * (1.0 / lengths)[:, None, None, None]
        ks = ks - mean
    dq = qs @ w  # [N, h, T, m]
    dk = _masked_for_max(ks @ w - B.square(ks).sum(-1, keepdims=True) * 0.5, keep)  # w.y - |y|^2/2
    q_shift = B.max(dq, axis=-1)  # [N, h, T, 1]
    k_shift = B.max(dk.reshape(n, heads, t * m), axis=-1).reshape(n, heads, 1, 1)
    inv = 1.0 / math.sqrt(m)
    phi_q = B.exp(dq - q_shift, lower=-EXP_CLIP) * inv
    phi_k = B.exp(dk - k_shift, lower=-EXP_CLIP) * keep * inv
    # every feature is in [0, 1/sqrt(m)], so den <= m T / m = T.
    return linear_attention(B, phi_q, phi_k, v, attn.denominator_floor, float(t))
