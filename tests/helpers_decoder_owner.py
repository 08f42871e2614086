"""A tiny random LLaMA folder with a word-level tokenizer, a learnable task and its data, for the data
owner's decoder tests (they say nothing about accuracy; they exercise every path of ``secp-tune`` on a
decoder in seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from helpers_llama import make_tiny_llama

WORDS = [f"w{i}" for i in range(50)]
EXTRA = ["Review", ":", "Sentiment", "?"]
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]  # ids 0, 1, 2, 3 (TINY_LLAMA: pad 0, bos 1, eos 2)

DECODER_TASK = {
    "name": "tiny_decoder",
    "kind": "single",
    "labels": [0, 1],
    "template": "<P> {text} <mask>",
    "words": ["w1", "w2"],
    "decoder": {"template": "Review : {text} Sentiment :<answer>", "words": [" w1", " w2"]},
}


def save_word_tokenizer(folder: Path) -> None:
    """A whitespace word-level tokenizer that starts every text with <s> (as LLaMA's does)."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS + EXTRA)}
    tk = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    fast.save_pretrained(str(folder))


def make_tiny_decoder(folder: Path, **overrides) -> Path:
    make_tiny_llama(folder, seed=2, **overrides)
    save_word_tokenizer(folder)
    return folder


def decoder_rows(n_per_class: int, seed: int) -> list[tuple[int, str]]:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_per_class):
        for label, (lo, hi) in enumerate(((5, 25), (27, 50))):
            words = rng.integers(lo, hi, size=int(rng.integers(3, 8)))
            rows.append((label, " ".join(f"w{w}" for w in words)))
    return rows


def decoder_setup(root: Path, **task_overrides) -> tuple[Path, Path, Path]:
    """(model folder, data folder, task file) under ``root``."""
    model = make_tiny_decoder(root / "model")
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    for split, (n, seed) in {"train": (6, 1), "dev": (6, 2), "test": (10, 3)}.items():
        rows = decoder_rows(n, seed)
        (data / f"{split}.tsv").write_text("label\ttext\n" + "".join(f"{a}\t{b}\n" for a, b in rows))
    task = root / "task.json"
    task.write_text(json.dumps({**DECODER_TASK, **task_overrides}))
    return model, data, task
