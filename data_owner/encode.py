"""Turning examples into embedding-layer outputs with the PUBLIC embedding layer (DESIGN.md §1-2).

Input ids follow BBT: ``[CLS] <L placeholder tokens> <template with the text filled in> [SEP]``; the tuned
prompt is later ADDED to rows ``1..L``.  With the placeholder ``none`` (NO_PLACEHOLDER) there are no
placeholder rows: the prompt is added to the first L rows of the filled template itself, so the zero prompt
(z = 0) is exactly the model's own zero-shot input.  Only the text slots are truncated to fit
``max_length``, so the template words and ``<mask>`` always survive.  The embedding layer (word + position
+ token-type embeddings, then LayerNorm; ``contract.embedding``) is public, so the data owner computes it
in float64 itself and shares only its output.  Everything here runs at the data owner; nothing here is
sent anywhere.  By default (``pool`` "text") the placeholder rows are left out of the similarity head's
mean pooling (``EncodedSplit.pool_mask``): they are attended to but not averaged into the sentence
embedding, which keeps the zero prompt close to the model's own zero-shot input (docs/accuracy.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from contract.embedding import PublicEmbeddings
from contract.manifest import MANIFEST_NAME, ShareManifest
from data_owner.data import Example
from data_owner.errors import DataOwnerError
from data_owner.task import MASK_MARK, SLOT_RE, Head, TaskSpec, strip_prompt_mark
from mpc_core.nn.config import EncoderConfig, UnsupportedModelError
from mpc_core.nn.weights import CheckpointError, load_checkpoint


@dataclass
class EncodedSplit:
    """One split ready for the model: embedding-layer outputs and what the heads need.

    ``embeds`` [n, T, H] float64, ``attention_mask`` [n, T] (1 = real token), ``mask_pos`` [n] (the
    ``<mask>`` row, -1 when the template has none), ``labels`` [n] class indices, ``onehot`` [n, C],
    ``pool_exclude`` the positions the similarity head leaves out of its mean (the placeholder rows under
    ``--pool text``), and :attr:`pool_mask` [n, T] the rows it pools (None: all real tokens).
    """

    embeds: np.ndarray
    attention_mask: np.ndarray
    mask_pos: np.ndarray
    labels: np.ndarray
    num_classes: int
    prompt_length: int
    input_ids: np.ndarray = field(repr=False)
    pool_exclude: tuple[int, ...] = ()

    @property
    def pool_mask(self) -> np.ndarray | None:
        if not self.pool_exclude:
            return None
        mask = self.attention_mask.copy()
        mask[:, list(self.pool_exclude)] = 0
        return mask

    @property
    def onehot(self) -> np.ndarray:
        return np.eye(self.num_classes)[self.labels]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class PublicModel:
    """What the data owner holds of a model: its public architecture, embedding layer and tokenizer.

    From a ``secp-share-model`` folder (``manifest.json`` + ``public/``) only these; from a plaintext Hugging
    Face folder (the plain backend, NOT PRIVATE) also ``weights``, every tensor in canonical names.
    """

    folder: Path
    cfg: EncoderConfig
    embedding: PublicEmbeddings
    tokenizer: Any
    weights: dict[str, np.ndarray] | None

    @property
    def hidden(self) -> int:
        return self.cfg.hidden

    @classmethod
    def load(cls, folder: Path, need_weights: bool) -> PublicModel:
        folder = Path(folder)
        if not folder.is_dir():
            raise DataOwnerError(f"model folder not found: {folder}")
        try:
            if (folder / MANIFEST_NAME).is_file():
                if need_weights:
                    raise DataOwnerError(
                        f"{folder} is a secret-shared model; the plain backend needs a plaintext checkpoint"
                    )
                manifest = ShareManifest.read(folder)
                embedding = PublicEmbeddings.load(folder)
                return cls(
                    folder, manifest.config, embedding, load_tokenizer(folder / manifest.public.folder), None
                )
            cfg, weights = load_checkpoint(folder)
        except (CheckpointError, UnsupportedModelError, FileNotFoundError, ValueError) as exc:
            raise DataOwnerError(f"cannot load the model in {folder}: {exc}") from exc
        embedding = PublicEmbeddings.from_tensors(cfg, weights)
        return cls(folder, cfg, embedding, load_tokenizer(folder), weights if need_weights else None)


def load_tokenizer(model_dir: Path):
    """The checkpoint's tokenizer, from local files only."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise DataOwnerError(f"cannot load the tokenizer from {model_dir}: {exc}") from exc


#: ``--placeholder none``: no placeholder rows, the prompt is added to the template's first L rows.
NO_PLACEHOLDER = "none"


class Encoder:
    """Builds input ids for a task and head, and embeds them with the public embedding layer."""

    def __init__(
        self,
        tokenizer,
        embedding: PublicEmbeddings,
        task: TaskSpec,
        head: Head,
        prompt_length: int,
        placeholder: str | None,
        max_length: int,
        pool: str = "text",
    ) -> None:
        self.tok = tokenizer
        self.embedding = embedding
        self.task = task
        self.head = head
        self.L = prompt_length
        self.max_length = max_length
        if pool not in ("all", "text"):
            raise DataOwnerError(f"pool must be 'all' or 'text', got {pool!r}")
        self.pool = pool
        self.placeholder_id, self.placeholders = self._placeholder(tokenizer, placeholder)
        self.pieces = _split_template(strip_prompt_mark(task.template_for(head)))
        fixed = 2 + self.placeholders + sum(len(self._literal(p)) for kind, p in self.pieces if kind == "lit")
        if fixed + len(task.slots) > max_length:
            raise DataOwnerError(
                f"max_length {max_length} leaves no room for text after the template and prompt"
            )

    def _placeholder(self, tokenizer, placeholder: str | None) -> tuple[int, int]:
        """(token id, number of rows) of the rows that carry the prompt; (-1, 0) for NO_PLACEHOLDER."""
        if placeholder == NO_PLACEHOLDER:
            return -1, 0
        placeholder = placeholder or tokenizer.unk_token  # default: the unknown token, in every vocabulary
        ids = tokenizer.convert_tokens_to_ids([placeholder])
        if (
            not ids
            or ids[0] is None
            or (ids[0] == tokenizer.unk_token_id and placeholder != tokenizer.unk_token)
        ):
            raise DataOwnerError(f"placeholder token {placeholder!r} is not in the tokenizer's vocabulary")
        return int(ids[0]), self.L

    def _literal(self, text: str) -> list[int]:
        text = text.replace(MASK_MARK, f" {self.tok.mask_token} " if self.tok.mask_token else " ")
        return list(self.tok(text, add_special_tokens=False)["input_ids"]) if text.strip() else []

    def token_ids(self, example: Example) -> list[int]:
        lits = [(k, self._literal(p) if k == "lit" else p) for k, p in self.pieces]
        texts = {
            s: list(self.tok(example.texts[s], add_special_tokens=False)["input_ids"])
            for s in self.task.slots
        }
        budget = self.max_length - 2 - self.placeholders - sum(len(v) for k, v in lits if k == "lit")
        while sum(len(t) for t in texts.values()) > budget:  # trim the longest text slot first
            longest = max(texts, key=lambda s: len(texts[s]))
            texts[longest] = texts[longest][:-1]
        ids = [self.tok.cls_token_id] + [self.placeholder_id] * self.placeholders
        for kind, value in lits:
            ids.extend(value if kind == "lit" else texts[value])
        ids.append(self.tok.sep_token_id)
        return ids

    def encode(self, examples: list[Example]) -> EncodedSplit:
        seqs = [self.token_ids(e) for e in examples]
        # rows 1..L carry the prompt; without placeholder rows an example shorter than L tokens also has it
        # on its [SEP] and padding rows (padding is masked, so there it has no effect)
        T = max(max(len(s) for s in seqs), self.L + 1)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        ids = np.full((len(seqs), T), pad, dtype=np.int64)
        att = np.zeros((len(seqs), T), dtype=np.int64)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = s
            att[i, : len(s)] = 1
        mask_id = self.tok.mask_token_id
        mask_pos = np.full(len(seqs), -1, dtype=np.int64)
        if mask_id is not None:
            for i, s in enumerate(seqs):
                if mask_id in s:
                    mask_pos[i] = s.index(mask_id)
        if self.head == "mlm" and (mask_pos < 0).any():
            raise DataOwnerError(
                "the MLM head needs a <mask> in every example; the tokenizer has no mask token"
            )
        # the placeholder rows: attended, not pooled
        pool_exclude = tuple(range(1, 1 + self.placeholders)) if self.pool == "text" else ()
        return EncodedSplit(
            embeds=self.embedding(ids),
            attention_mask=att,
            pool_exclude=pool_exclude,
            mask_pos=mask_pos,
            labels=np.array([e.label for e in examples], dtype=np.int64),
            num_classes=self.task.num_classes,
            prompt_length=self.L,
            input_ids=ids,
        )


def _split_template(template: str) -> list[tuple[str, str]]:
    """``"{text} . It was <mask> ."`` -> [("slot", "text"), ("lit", " . It was <mask> .")]."""
    out: list[tuple[str, str]] = []
    pos = 0
    for m in SLOT_RE.finditer(template):
        if m.start() > pos:
            out.append(("lit", template[pos : m.start()]))
        out.append(("slot", m.group(1)))
        pos = m.end()
    if pos < len(template):
        out.append(("lit", template[pos:]))
    return out


def encode_plain_texts(
    tokenizer, embedding: PublicEmbeddings, texts: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """``[CLS] text [SEP]`` without prompt rows -> (embedding-layer outputs [m, T, H], mask [m, T])."""
    seqs = [list(tokenizer(t, add_special_tokens=True)["input_ids"]) for t in texts]
    T = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = np.full((len(seqs), T), pad, dtype=np.int64)
    att = np.zeros((len(seqs), T), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        att[i, : len(s)] = 1
    return embedding(ids), att


def verbalizer_ids(tokenizer, words: list[str]) -> list[int]:
    """The vocabulary id of each label word (as it follows a space); each must be one token."""
    out = []
    for w in words:
        ids = list(tokenizer(" " + w, add_special_tokens=False)["input_ids"])
        if len(ids) != 1:
            pieces = tokenizer.convert_ids_to_tokens(ids)
            raise DataOwnerError(f"verbalizer word {w!r} is not a single token for this tokenizer: {pieces}")
        out.append(int(ids[0]))
    return out
