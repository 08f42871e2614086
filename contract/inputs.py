"""Token ids with prompt placeholders, as the data owner builds them (plaintext, public tokenizer).

Each example becomes ``<first special> <L placeholders> template(text) <last special> <pad> ...``: the L
placeholder rows are where :func:`mpc_core.nn.batch.insert_prompts` adds a candidate prompt (BBT's "add"
mode).  The placeholder is an ordinary token (the tokenizer's unknown token by default), so the prompt is
added to a fixed, public embedding row.  Lengths, and so the padding mask and the ``<mask>`` position,
are public in our threat model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EncodedBatch:
    input_ids: np.ndarray  # [n, T] int64
    mask: np.ndarray  # [n, T] 0/1 int64
    mask_positions: np.ndarray | None  # [n] position of the tokenizer's mask token, if the template has one


def encode_texts(
    tokenizer,
    texts: Sequence[str],
    prompt_len: int,
    max_len: int | None = None,
    template: str = "{text}",
    placeholder_id: int | None = None,
) -> EncodedBatch:
    """Ids [n, T] with T the longest example (at most ``max_len``; longer texts are cut at the end).

    ``template`` may contain the tokenizer's mask token (e.g. "{text} . It was <mask> ."), whose position
    is returned for the MLM head.
    """
    if "{text}" not in template:
        raise ValueError("the template must contain {text}")
    first = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    last = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    pad = tokenizer.pad_token_id
    placeholder = tokenizer.unk_token_id if placeholder_id is None else placeholder_id
    if template.count(tokenizer.mask_token or "\0") > 1:
        raise ValueError("the template may hold at most one mask token")
    rows = []
    for text in texts:
        body = tokenizer(template.format(text=text), add_special_tokens=False)["input_ids"]
        if max_len is not None:
            room = max_len - prompt_len - 2
            if room <= 0:
                raise ValueError(f"max_len {max_len} leaves no room after {prompt_len} prompt tokens")
            if len(body) > room:
                tail = body[-4:] if tokenizer.mask_token_id in body[-4:] else []
                body = body[: room - len(tail)] + tail  # keep a trailing "... <mask> ." part
        rows.append([first, *([placeholder] * prompt_len), *body, last])
    t = max(len(r) for r in rows)
    ids = np.full((len(rows), t), pad, dtype=np.int64)
    mask = np.zeros((len(rows), t), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    positions = None
    if tokenizer.mask_token_id is not None and tokenizer.mask_token and tokenizer.mask_token in template:
        positions = np.array([int(np.flatnonzero(row == tokenizer.mask_token_id)[0]) for row in ids])
    return EncodedBatch(ids, mask, positions)
