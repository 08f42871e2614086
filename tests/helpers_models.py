"""Tiny random BERT and RoBERTa checkpoints, built from a config in a folder, for fast tests.

They say nothing about accuracy; they exercise every tensor name, shape and code path of the real
architectures (MLM head included).  ``initializer_range`` is larger than Hugging Face's default so that
activations are not all near zero and errors have room to show.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

TINY = {
    "hidden_size": 32,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "intermediate_size": 64,
    "vocab_size": 96,
    "max_position_embeddings": 40,
    "type_vocab_size": 2,
    "initializer_range": 0.1,
}


def _vocab(size: int) -> list[str]:
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    return special + [f"w{i}" for i in range(size - len(special))]


#: The smallest useful encoder (one layer, hidden 16): for cluster tests that run many secure batches.
ONE_LAYER = {"num_hidden_layers": 1, "hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32}


def make_tiny_model(
    folder: str | Path, arch: str = "bert", mlm: bool = True, seed: int = 0, **overrides
) -> Path:
    """Save a randomly initialised ``arch`` model ("bert" | "roberta") with Hugging Face into ``folder``."""
    import torch
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        BertModel,
        RobertaConfig,
        RobertaForMaskedLM,
        RobertaModel,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    params = {**TINY, **overrides}
    if arch == "bert":
        config = BertConfig(**params, pad_token_id=0)
        model = BertForMaskedLM(config) if mlm else BertModel(config, add_pooling_layer=True)
    elif arch == "roberta":
        params["max_position_embeddings"] += 2  # RoBERTa's positions start at pad_token_id + 1
        config = RobertaConfig(**params, pad_token_id=1, bos_token_id=0, eos_token_id=2)
        model = RobertaForMaskedLM(config) if mlm else RobertaModel(config)
    else:
        raise ValueError(arch)
    # Non-trivial LayerNorm parameters and biases (HF initialises them to 1 and 0).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name:
                p.add_(0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "vocab.txt").write_text("\n".join(_vocab(params["vocab_size"])) + "\n")
    return folder


def hf_model(folder: str | Path, mlm: bool):
    """The checkpoint reloaded by Hugging Face in float64, eval mode."""
    import torch
    from transformers import AutoModel, AutoModelForMaskedLM

    cls = AutoModelForMaskedLM if mlm else AutoModel
    model = cls.from_pretrained(str(folder), dtype=torch.float64)
    model.eval()
    return model


def random_batch(
    rng: np.random.Generator, n: int, t: int, vocab: int, pad: int, first: int, last: int, min_len: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """Input ids [n, t] "<first> tokens <last> <pad>..." of random lengths, and the 0/1 mask."""
    ids = np.full((n, t), pad, dtype=np.int64)
    mask = np.zeros((n, t), dtype=np.int64)
    for i in range(n):
        length = int(rng.integers(min_len, t + 1)) if i else t
        body = rng.integers(5, vocab, size=length - 2)
        ids[i, :length] = [first, *body, last]
        mask[i, :length] = 1
    return ids, mask
