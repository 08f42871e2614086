"""Tiny random LLaMA checkpoints built from a config in a folder, for fast decoder tests.

They say nothing about accuracy; they exercise every tensor name, shape and code path of the architecture
(grouped-query attention with 2 query heads per key/value head, tied or untied output embedding).
``initializer_range`` is larger than Hugging Face's default and the RMSNorm weights are perturbed so that
activations and errors have room to show.
"""

from __future__ import annotations

from pathlib import Path

TINY_LLAMA = {
    "hidden_size": 32,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "num_hidden_layers": 2,
    "intermediate_size": 48,
    "vocab_size": 64,
    "max_position_embeddings": 64,
    "rms_norm_eps": 1e-5,
    "initializer_range": 0.1,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}


def make_tiny_llama(folder: str | Path, seed: int = 0, tie: bool = True, **overrides) -> Path:
    """Save a randomly initialised LlamaForCausalLM with Hugging Face into ``folder``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = LlamaConfig(**{**TINY_LLAMA, **overrides}, tie_word_embeddings=tie, rope_theta=10000.0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def hf_causal_lm(folder: str | Path):
    """The checkpoint reloaded by Hugging Face in float64 with eager attention, eval mode."""
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(folder), dtype=torch.float64, attn_implementation="eager")
    model.eval()
    return model
