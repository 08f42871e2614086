"""Multi-head self-attention in three modes, written once for both backends.

Shapes: x [N, T, H]; heads split to [N, h, T, d] with d = H / h; ``mask`` [N, T] is the public 0/1
padding mask (1 = real token).  Padding is public in our threat model: shapes and sequence lengths are
known to the servers (they see the share shapes anyway), so masking costs no secure operation beyond
exact multiplications by public 0/1 integers.

Modes (see :class:`~mpc_core.nn.config.AttentionConfig`):

* ``softmax``: softmax(q k^T / sqrt(d) + mask) v, exact up to the backend's softmax.
* ``rfa``: the paper's random Fourier features, through the one-round trig protocol on shares:
  exp(-|x - y|^2 / 2) = E_w[cos(w.(x - y))] = E_w[cos w.x cos w.y + sin w.x sin w.y], w ~ N(0, I),
  estimated with m directions (orthogonal within blocks of d, Yu et al. 2016, which only lowers the
  variance), features phi(x) = [cos(W^T x), sin(W^T x)].
  - raw form (``normalize`` off, the paper's): x = q d^(-1/4), y = k d^(-1/4) and
    exp(x.y) = exp(|x|^2/2) exp(|y|^2/2) exp(-|x - y|^2/2); the query factor cancels in each row and the
    key factor is shifted to exp(|y|^2/2 - max_j |y_j|^2/2) <= 1 (a per-sequence constant that cancels).
    On a pretrained model the estimate is noise (docs/fidelity.md).
  - well-posed form (``normalize`` on, what the model owner adapts a checkpoint to): keys centred per
    sequence (exact for softmax: the shift q.c is a per-row constant), x = s q/|q|, y = s k/|k| with a
    per-head s, so |x| = |y| = s, the key factor is the constant exp(s^2/2) and cancels, and each kernel
    value exp(-|x - y|^2/2) = e^(-s^2) exp(s^2 cos(q, k)) lies in [e^(-2 s^2), 1].
  Estimate's error: every phi(x).phi(y) / m is a mean of m terms cos(w.(x - y)) in [-1, 1], so (Hoeffding,
  for i.i.d. directions) the estimate of a row's mean kernel value D / n_keys is within
  sqrt(2 ln(2/delta) / m) of its expectation with probability 1 - delta (orthogonal directions only
  tighten this); in the well-posed form D / n_keys >= e^(-2 s^2), so the denominator is positive with
  probability >= 1 - delta whenever e^(-2 s^2) > sqrt(2 ln(2/delta) / m) (e.g. s^2 <= 0.36 for m = 64,
  delta = 1e-3), and tested empirically far beyond that (tests/test_attention.py).
* ``favor``: FAVOR+ positive features phi(x) = exp(W^T x - |x|^2/2) with orthogonal antithetic W
  (x = q d^(-1/4), or s q/|q| in the well-posed form), keys centred per sequence, and exponent shifts that
  cancel exactly: a query row's factor exp(-|x|^2/2 - max_f w_f.x) is common to its numerator and
  denominator, and so is the per-sequence constant exp(-max_{j,f} (w_f.y_j - |y_j|^2/2)) on the keys.
  So phi_q = exp(w.x - max_f w_f.x) and phi_k = exp(w.y - |y|^2/2 - max_{j,f}(...)), each in [0, 1]
  with its largest entry exactly 1, every exponent <= 0.  (The 1/sqrt(m) normalisation of the textbook
  features also cancels and is left out: it would put each feature a factor sqrt(m) closer to the
  fixed-point resolution.)

Both random-feature modes compute out = num / den with [num | den] = phi(Q) (phi(K)^T [V | 1]) in one
product: O(T m d) instead of O(T^2 d).  Denominator guards, identical in both backends (the plaintext
reference computes the same guarded function, so a secure result can be compared with it):

* ``rfa``: den is divided by the public n_keys m (n_keys real keys) and floored at ``relative_floor``
  (r): den_rel = max(den / (n_keys m), r) in [r, 1].  Each estimated kernel value is at most 1 in
  magnitude, so |out| <= max_j |v_j| / r: bounded whatever the estimate, which keeps LayerNorm, GELU and
  every later function in its domain (the unguarded paper form floored ~45% of MiniLM's rows at 2^-12
  and sent activations to 5e4, LayerNorm variances to 9e7).  The reciprocal's domain is [r, 1].
* ``favor``: features are positive, so num / den is a convex combination of the values for any den > 0,
  and num / max(den, floor) stays within max |v| too (num <= den max |v|); den is in (0, m T] and the
  reciprocal's domain is [``denominator_floor``, m T] (den is not scaled down: that would cost relative
  precision on the small denominators).
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
#: Domain of |q|^2 / d (and |k_c|^2 / d) where the well-posed form normalises; both backends clamp to it.
NORM_DOMAIN = (2.0**-10, 2.0**10)


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


def _key_counts(mask: np.ndarray) -> np.ndarray:
    """Number of real keys per sequence (at least 1), shaped [N, 1, 1, 1] to broadcast over heads and rows."""
    return np.maximum(mask.sum(axis=1), 1).astype(np.float64)[:, None, None, None]


def linear_attention(
    B: Backend, phi_q: Value, phi_k: Value, v: Value, norm: np.ndarray | None, floor: float, den_max: float
) -> Value:
    """num / max(den, floor norm) with [num | den] = phi_q (phi_k^T [v | 1]); padded keys have phi_k = 0.

    ``norm`` (public, [N, 1, 1, 1], or None for 1) scales the denominator into [0, ``den_max``]: the
    reciprocal runs on den / norm in [floor, den_max] and the result is rescaled by the public 1 / norm at
    the end (after the product with num, where the value is large and one truncation costs nothing
    relative).  Scaling a small denominator down costs relative precision (one ulp of den / norm), so a
    mode whose denominators may be small (favor) passes None.
    """
    d = v.shape[-1]
    ones = v[..., :1] * 0 + 1.0
    kv = phi_k.swapaxes(-1, -2) @ B.concatenate([v, ones], axis=-1)  # [N, h, F, d + 1]
    out = phi_q @ kv  # [N, h, T, d + 1]
    num, den = out[..., :d], out[..., d:]
    hi = max(2.0 * floor, den_max)
    if norm is None:
        return num * B.reciprocal(B.floor_at(den, floor), lo=floor, hi=hi, precise=True)
    den_rel = B.floor_at(den * (1.0 / norm), floor)
    return (num * B.reciprocal(den_rel, lo=floor, hi=hi, precise=True)) * (1.0 / norm)


def normalized_query_key(
    B: Backend, attn: AttentionConfig, layer: int, q: Value, k: Value, mask: np.ndarray
) -> tuple[Value, Value]:
    """(s q / |q|, s k_c / |k_c|) per head, k_c the keys centred over each sequence's real tokens.

    |v|^2 / d is clamped to NORM_DOMAIN in both backends (the guard: the secure rsqrt is only right there;
    a row outside it is normalised as if it were at the edge, in the plaintext reference too).
    s is the secret per-head tensor ``layer.{layer}.attn.scale`` when the checkpoint has one (an adapted
    checkpoint), else the public ``attn.scale``.
    """
    heads, d = q.shape[1], q.shape[-1]
    keep = mask[:, None, :, None].astype(np.int64)
    lengths = _key_counts(mask)
    k = k - (k * keep).sum(-2, keepdims=True) * (1.0 / lengths)
    lo, hi = NORM_DOMAIN

    def inverse_norm(x: Value) -> Value:
        sq = B.square(x).sum(-1, keepdims=True) * (1.0 / d)
        return B.rsqrt(B.clamp(sq, lo, hi), lo=lo, hi=hi)  # 1 / (|x| / sqrt(d))

    name = f"layer.{layer}.attn.scale"
    if name in B.weights:
        scale = B.param(name).reshape(1, heads, 1, 1) * d**-0.5
        gq, gk = inverse_norm(q) * scale, inverse_norm(k) * scale
    else:
        gq, gk = inverse_norm(q) * (attn.scale * d**-0.5), inverse_norm(k) * (attn.scale * d**-0.5)
    return q * gq, k * gk


def rfa_attention(
    B: Backend, attn: AttentionConfig, layer: int, q: Value, k: Value, v: Value, mask: np.ndarray
) -> Value:
    d = q.shape[-1]
    m = attn.features
    w = gaussian_features(attn, layer, d)
    keep = mask[:, None, :, None].astype(np.int64)  # [N, 1, T, 1]
    if attn.normalize:
        xs, ys = normalized_query_key(B, attn, layer, q, k, mask)
        key_factor = None  # |y| = s for every key: exp(|y|^2 / 2) is a constant and cancels
    else:
        scale = d**-0.25
        xs, ys = q * scale, k * scale
        half_norm = B.square(ys).sum(-1, keepdims=True) * 0.5  # |y|^2 / 2, [N, h, T, 1]
        shifted = _masked_for_max(half_norm, keep)
        key_factor = B.exp(shifted - B.max(shifted, axis=-2), lower=-EXP_CLIP) * keep  # <= 1, 0 on padding
    cq, sq = B.cos_sin(xs @ w)
    ck, sk = B.cos_sin(ys @ w)
    phi_q = B.concatenate([cq, sq], axis=-1)
    phi_k = B.concatenate([ck, sk], axis=-1)
    phi_k = phi_k * keep if key_factor is None else phi_k * key_factor
    # phi_q . phi_k = sum_f cos(w_f.(x - y)) (times a key factor <= 1): at most m per key.
    return linear_attention(B, phi_q, phi_k, v, _key_counts(mask) * m, attn.relative_floor, 1.0)


def favor_attention(
    B: Backend, attn: AttentionConfig, layer: int, q: Value, k: Value, v: Value, mask: np.ndarray
) -> Value:
    n, heads, t, d = q.shape
    m = attn.features
    w = favor_features(attn, layer, d)
    keep = mask[:, None, :, None].astype(np.int64)  # [N, 1, T, 1]
    if attn.normalize:
        qs, ks = normalized_query_key(B, attn, layer, q, k, mask)
        dk = _masked_for_max(ks @ w, keep)  # |y|^2 / 2 = s^2 / 2 for every key: a constant, dropped
    else:
        scale = d**-0.25
        qs, ks = q * scale, k * scale
        if attn.center_keys:
            mean = (ks * keep).sum(-2, keepdims=True) * (1.0 / _key_counts(mask))
            ks = ks - mean
        dk = _masked_for_max(ks @ w - B.square(ks).sum(-1, keepdims=True) * 0.5, keep)  # w.y - |y|^2/2
    dq = qs @ w  # [N, h, T, m]
    q_shift = B.max(dq, axis=-1)  # [N, h, T, 1]
    k_shift = B.max(dk.reshape(n, heads, t * m), axis=-1).reshape(n, heads, 1, 1)
    phi_q = B.exp(dq - q_shift, lower=-EXP_CLIP)
    phi_k = B.exp(dk - k_shift, lower=-EXP_CLIP) * keep
    # every feature is in [0, 1], so den <= m T.
    return linear_attention(B, phi_q, phi_k, v, None, attn.denominator_floor, float(m * t))
