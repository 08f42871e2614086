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
from data_owner.decoder import DecoderEncoder, DecoderModel, DecoderSplit, is_decoder_folder
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
    encoder: Encoder | DecoderEncoder
    splits: dict[str, EncodedSplit] | dict[str, DecoderSplit]
    oracle: LossOracle
    projection: Projection
    std_ref: float
    data_hashes: dict[str, str]
    data_files: dict[str, Path]

    def close(self) -> None:
        self.oracle.close()


def file_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def split_path(config: RunConfig, split: str) -> Path:
    """The absolute path of ``<data_dir>/<split>.{tsv,csv,jsonl}``."""
    data_dir = Path(config.data_dir)
    if not data_dir.is_dir():
        hint = "" if data_dir.is_absolute() else f" (relative to the current directory {Path.cwd()})"
        raise DataOwnerError(f"data folder not found: {data_dir}{hint}")
    return find_split(data_dir, split).resolve()


def load_examples(
    config: RunConfig, task: TaskSpec, split: str, path: Path | None = None
) -> tuple[list[Example], str, Path]:
    """(examples, sha256, absolute path) of ``split``: ``<data_dir>/<split>.*``, or the file ``path``."""
    path = Path(path).resolve() if path is not None else split_path(config, split)
    examples = load_split(path, task)
    if config.k_shot is not None and split in ("train", "dev"):
        offset = {"train": 0, "dev": 1}[split]
        examples = k_shot(
            examples, config.k_shot, config.seed * 2 + offset, task.num_classes, where=str(path)
        )
    return examples, file_hash(path), path


def open_session(
    config: RunConfig,
    splits: tuple[str, ...] = ("train", "dev"),
    oracle: LossOracle | None = None,
    *,
    std_ref: float | None = None,
    files: dict[str, Path] | None = None,
) -> Session:
    """Validate the configuration, encode ``splits`` and upload them to a fresh (or the given) oracle.

    ``std_ref`` is the projection's reference std as fixed when the run was started (``config.json``):
    resume and evaluation pass it, so the prompt is rebuilt exactly and never depends on the file being
    scored.  Without it, it is measured (``scale_ref`` output: on the train split, which must then be among
    ``splits``).  ``files`` names a split's file directly instead of ``<data_dir>/<split>.*``.
    """
    config.check_budget()
    task = load_task(config.task)
    loss = task.loss if config.loss == "task" else config.loss
    examples: dict[str, list[Example]] = {}
    hashes: dict[str, str] = {}
    paths: dict[str, Path] = {}
    for split in splits:
        examples[split], hashes[split], paths[split] = load_examples(
            config, task, split, (files or {}).get(split)
        )
    if is_decoder_folder(config.model):
        return open_decoder_session(config, task, loss, examples, hashes, paths, oracle, std_ref)
    if config.prompt_init != "zeros":
        raise DataOwnerError(
            f"--prompt-init {config.prompt_init} is for decoders; for an encoder, --placeholder none adds "
            "the prompt to the text's first rows (z = 0 is then the plain input)"
        )
    if config.head == "next-token":
        raise DataOwnerError(f"{config.model} is not a decoder checkpoint; --head next-token needs one")
    if config.placement != "prefix":
        raise DataOwnerError(
            f"--placement {config.placement} is for decoder checkpoints; an encoder's prompt is a prefix"
        )

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

    if std_ref is None:
        std_ref = reference_std(config, embedding.word, encoded.get("train"))
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
    return Session(config, task, head, loss, encoder, encoded, oracle, projection, std_ref, hashes, paths)


def reference_std(config: RunConfig, word: np.ndarray, train: EncodedSplit | DecoderSplit | None) -> float:
    """The std the projection scale follows (BBT): the word embeddings [V, H], or the embedding-layer output
    over the real tokens of the TRAIN split (a decoder's: its token embeddings).  Computed once when a run
    starts and stored in its folder."""
    if config.scale_ref == "word":
        return float(np.std(word))
    if train is None:
        raise DataOwnerError("the projection scale (scale_ref output) is measured on the train split only")
    return float(np.std(train.embeds[train.attention_mask.astype(bool)]))


def open_decoder_session(
    config: RunConfig,
    task: TaskSpec,
    loss: str,
    examples: dict[str, list[Example]],
    hashes: dict[str, str],
    paths: dict[str, Path],
    oracle: LossOracle | None,
    std_ref: float | None,
) -> Session:
    """:func:`open_session` for a causal decoder: the next-token head and the task's decoder template.

    Every check (backend, head, attention, the template, single-token verbalizer words, the context length,
    the suffix cache's size) runs on the public config and the token ids, before the weights are read or
    anything is uploaded.
    """
    from data_owner.decoder import check_cache, check_context

    if config.head not in ("auto", "next-token"):
        raise DataOwnerError(f"{config.model} is a decoder: its head is next-token, not {config.head}")
    if config.attention != "softmax":
        raise DataOwnerError(f"decoders run softmax attention only, not {config.attention}")
    if config.prompt_init == "template" and config.placement != "suffix":
        raise DataOwnerError(
            "--prompt-init template needs --placement suffix: the prompt then stands in for the answer "
            "template's first tokens, right after the example text"
        )
    model = DecoderModel.open(Path(config.model))
    encoder = DecoderEncoder(
        model.tokenizer, task, config.prompt_length, config.max_length, config.prompt_init
    )
    tokens = {split: encoder.tokenize(ex) for split, ex in examples.items()}
    tail = len(encoder.tail_ids)
    for split, seqs in tokens.items():
        check_context(model.cfg, config.prompt_length, max(len(s) for s in seqs), tail, f"{split}")
    if config.placement == "suffix":
        check_cache(
            model.cfg,
            {split: (len(seqs), max(len(s) for s in seqs)) for split, seqs in tokens.items()},
            config.cache_limit_mb,
        )
    if config.backend == "plain":
        model.load_weights()  # a shared folder is refused here: the plain backend needs the weights
    word = model.token_embedding()
    encoded = {split: encoder.embed(examples[split], tokens[split], word) for split in tokens}
    if std_ref is None:
        std_ref = reference_std(config, word, encoded.get("train"))
    std = Projection.entry_std(config.alpha, std_ref, config.intrinsic_dim, config.sigma0)
    p0 = word[np.asarray(encoder.init_ids, dtype=np.int64)] if encoder.init_ids else None
    projection = Projection(config.prompt_length, model.hidden, config.intrinsic_dim, std, config.seed, p0)
    if oracle is None and config.backend == "secure":
        from data_owner.backends.secure_decoder import SecureDecoderOracle

        oracle = SecureDecoderOracle.connect(config, model, encoder.word_ids)
    elif oracle is None:
        from data_owner.backends.plain_decoder import PlainDecoderOracle

        oracle = PlainDecoderOracle(model, encoder.word_ids, config.placement)
    try:
        for split, data in encoded.items():
            oracle.upload(split, data, loss if split == "train" else None)  # type: ignore[arg-type]
    except BaseException:
        oracle.close()
        raise
    return Session(
        config, task, "next-token", loss, encoder, encoded, oracle, projection, std_ref, hashes, paths
    )


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
