"""The BERT/RoBERTa encoder stack after the (public) embedding layer, for either backend.

One block (post-LayerNorm, as BERT and RoBERTa):

    a = LayerNorm(x + Attention(x))
    y = LayerNorm(a + W_out GELU(W_in a + b_in) + b_out)

The input is the embedding layer's output [N, T, H] (already LayerNorm-ed), the output the last hidden
states [N, T, H].  Tensor names are the canonical ones of :mod:`mpc_core.nn.weights`.
"""

from __future__ import annotations

import numpy as np

from mpc_core.nn.attention import self_attention
from mpc_core.nn.backend import Backend, Value
from mpc_core.nn.config import AttentionConfig, EncoderConfig


def encoder_layer(
    B: Backend, cfg: EncoderConfig, attn: AttentionConfig, layer: int, x: Value, mask: np.ndarray
) -> Value:
    prefix = f"layer.{layer}"
    a = B.layer_norm(
        self_attention(B, cfg, attn, layer, x, mask) + x, f"{prefix}.attn.ln", cfg.layer_norm_eps
    )
    h = B.gelu(B.linear(a, f"{prefix}.ffn.in"))
    return B.layer_norm(B.linear(h, f"{prefix}.ffn.out") + a, f"{prefix}.ffn.ln", cfg.layer_norm_eps)


def encode(
    B: Backend,
    cfg: EncoderConfig,
    attn: AttentionConfig,
    x: Value,
    mask: np.ndarray,
    layers: int | None = None,
) -> Value:
    """Run the first ``layers`` blocks (all by default) on embeddings ``x`` [N, T, H] with public ``mask``."""
    mask = np.asarray(mask)
    if mask.shape != tuple(x.shape[:2]):
        raise ValueError(f"mask has shape {mask.shape}, expected {tuple(x.shape[:2])}")
    for layer in range(cfg.layers if layers is None else layers):
        x = encoder_layer(B, cfg, attn, layer, x, mask)
    return x
