"""Assembling a run from its configuration: task, data, encoder, oracle, projection.

Everything that can fail because of the user's input or environment (task file, data files, labels, empty
splits, templates, budget, model folder, cluster) fails here, before any run folder exists.  The oracle is
built last and is the only piece that talks to the cluster.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_owner.config import RunConfig
from data_owner.data import Example, find_split, k_shot, load_split
from data_owner.encode import EncodedSplit, Encoder, PublicModel, encode_plain_texts, verbalizer_ids
from data_owner.errors import DataOwnerError
from data_owner.oracle import LossOracle
from data_owner.projection import Projection
from data_owner.task import Head, TaskSpec, load_task


@dataclass
class Session:
    """Everything a tuner or evaluator needs, built from one :class:`RunConfig`."""

    config: RunConfig
    task: TaskSpec
    head: Head
    loss: str
    encoder: Encoder
    splits: dict[str, EncodedSplit]
    oracle: LossOracle
    projection: Projection
    std_ref: float
    data_hashes: dict[str, str]

    def close(self) -> None:
        self.oracle.close()


def file_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_examples(config: RunConfig, task: TaskSpec, split: str) -> tuple[list[Example], str]:
    data_dir = Path(config.data_dir)
    if not data_dir.is_dir():
        raise DataOwnerError(f"data folder not found: {data_dir}")
    path = find_split(data_dir, split)
    examples = load_split(path, task)
    if config.k_shot is not None and split in ("train", "dev"):
        offset = {"train": 0, "dev": 1}[split]
        examples = k_shot(
            examples, config.k_shot, config.seed * 2 + offset, task.num_classes, where=str(path)
        )
    return examples, file_hash(path)


def open_session(
    config: RunConfig, splits: tuple[str, ...] = ("train", "dev"), oracle: LossOracle | None = None
) -> Session:
    """Validate the configuration, encode ``splits`` and upload them to a fresh (or the given) oracle."""
    config.check_budget()
    task = load_task(config.task)
    loss = task.loss if config.loss == "task" else config.loss
    examples: dict[str, list[Example]] = {}
    hashes: dict[str, str] = {}
    for split in splits:
        examples[split], hashes[split] = load_examples(config, task, split)

    model = PublicModel.load(Path(config.model), need_weights=config.backend == "plain")
    has_mlm = model.cfg.has_mlm_head
    head: Head = ("mlm" if has_mlm else "similarity") if config.head == "auto" else config.head
    if head == "mlm" and not has_mlm:
        raise DataOwnerError(f"{config.model} has no MLM head; use --head similarity")
    tokenizer, embedding = model.tokenizer, model.embedding
    encoder = Encoder(
        tokenizer,
        embedding,
        task,
        head,
        config.prompt_length,
        config.placeholder,
        config.max_length,
        pool=config.pool,
    )
    encoded = {s: encoder.encode(ex) for s, ex in examples.items()}

    if config.scale_ref == "word":
        std_ref = float(np.std(embedding.word))
    else:
        ref = encoded["train"] if "train" in encoded else next(iter(encoded.values()))
        std_ref = float(np.std(ref.embeds[ref.attention_mask.astype(bool)]))
    std = Projection.entry_std(config.alpha, std_ref, config.intrinsic_dim, config.sigma0)
    projection = Projection(config.prompt_length, model.hidden, config.intrinsic_dim, std, config.seed)

    if oracle is None:
        oracle = build_oracle(config, task, head, model)
    try:
        for split, data in encoded.items():
            oracle.upload(split, data, loss if split == "train" else None)
    except BaseException:
        oracle.close()
        raise
    return Session(config, task, head, loss, encoder, encoded, oracle, projection, std_ref, hashes)


def build_oracle(config: RunConfig, task: TaskSpec, head: Head, model: PublicModel) -> LossOracle:
    """The configured backend.  There is no fallback: a secure run never silently becomes a plaintext run."""
    tok, emb = model.tokenizer, model.embedding
    anchors = encode_plain_texts(tok, emb, task.anchors()) if head == "similarity" else None
    words = verbalizer_ids(tok, task.words) if head == "mlm" else None
    if config.backend == "plain":
        from data_owner.backends.plain import PlainOracle
        from mpc_core.nn.adapted import attention_for, read_record

        attention = attention_for(config.attention, config.features, read_record(config.model))
        return PlainOracle(
            model, head, anchors=anchors, word_ids=words, scale=config.similarity_scale, attention=attention
        )
    from data_owner.backends.secure import SecureOracle

    return SecureOracle.connect(config, task, head, model, anchors=anchors, word_ids=words)
