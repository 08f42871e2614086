"""A causal decoder (LLaMA family) at the data owner: its tokenizer, the task's decoder template, the checks.

The data owner turns each example into the tokens of the *example part* of the task's decoder template
(``"Review: {text}"``) and the tokens of the *answer template* (``"\\nSentiment:"``, the same for every
example), and embeds them with the public token embedding.  Where the tuned prompt goes is the run's
``placement``:

* ``prefix`` (BBT): after the first token of the example part: ``t_0, prompt, t_1 .. t_k, answer template``;
* ``suffix``: after the example text, before the answer template: ``t_0 .. t_k, prompt, answer template``.
  In a causal model the example's keys and values then do not depend on the prompt, so they are computed
  once per run (:mod:`mpc_core.nn.decoder_cache`) and every candidate runs only its own prompt and answer
  template tokens: the cheap placement.

Both placements read the same tokens, so their zero-shot points (z = 0: zero rows in the prompt's place)
differ only by where the zero rows sit.  With ``prompt_init = "template"`` the prompt's rows instead start
as the embeddings of the answer template's own tokens but its last (p = p0 + A z), which the prompt then
replaces: z = 0 is exactly the model's plain input, so tuning starts from the no-prompt zero-shot point.
The next-token logits of the verbalizer words after the last token are the class scores
(:class:`~mpc_core.nn.decoder_head.NextTokenHead`).

Everything a user can get wrong is checked here on token counts and the public config, before any weight
is read or any activation allocated: a verbalizer word that is not one token, a prompt plus example plus
template longer than the model's context, a suffix cache larger than the memory limit.  This module runs
at the data owner only; nothing here is sent anywhere.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from data_owner.data import Example
from data_owner.errors import DataOwnerError
from data_owner.task import SLOT_RE, TaskSpec
from mpc_core.nn.config import UnsupportedModelError
from mpc_core.nn.llama_config import DECODER_ARCHS, DecoderConfig
from mpc_core.nn.weights import CheckpointError, read_hf_config

Placement = Literal["prefix", "suffix"]
#: float64 in the plaintext backend; a ring element (Z_2^64) per entry on shares: 8 bytes either way
BYTES_PER_ENTRY = 8


def is_decoder_folder(folder: str | Path) -> bool:
    """True for a plaintext Hugging Face folder or a shared-model folder of a decoder architecture (read from
    config.json / manifest.json only: no weight is touched)."""
    folder = Path(folder)
    manifest = folder / "manifest.json"
    try:
        if manifest.is_file():
            return json.loads(manifest.read_text()).get("arch") in DECODER_ARCHS
        if (folder / "config.json").is_file():
            return read_hf_config(folder).get("model_type") in DECODER_ARCHS
    except (OSError, ValueError, CheckpointError):
        return False
    return False


def decoder_word_ids(tokenizer: Any, words: Sequence[str]) -> list[int]:
    """The vocabulary id of each verbalizer word, tokenized exactly as written (leading space included);
    a word that is not ONE token cannot be scored by one next-token logit, so it is refused."""
    out = []
    for w in words:
        ids = list(tokenizer(w, add_special_tokens=False)["input_ids"])
        if len(ids) != 1:
            pieces = tokenizer.convert_ids_to_tokens(ids)
            raise DataOwnerError(
                f"verbalizer word {w!r} is not a single token of this model's tokenizer ({len(ids)} tokens: "
                f"{pieces}); choose a word that is one token (mind the leading space)"
            )
        out.append(int(ids[0]))
    return out


def cache_bytes(cfg: DecoderConfig, rows: int, tokens: int) -> int:
    """Bytes of the suffix cache of ``rows`` examples padded to ``tokens`` (every layer's keys and values,
    :func:`mpc_core.nn.decoder_cache.cache_entries`), BYTES_PER_ENTRY each."""
    from mpc_core.nn.decoder_cache import cache_entries

    return BYTES_PER_ENTRY * cache_entries(cfg, rows, tokens)


@dataclass
class DecoderSplit:
    """One split ready for the decoder: the example parts and the answer template, embedded.

    ``embeds`` [n, T, H] the example parts' token embeddings, right-padded (``attention_mask`` [n, T], 1 =
    real token); ``tail`` [L_t, H] the answer template's embeddings (the same for every example); ``labels``
    [n] class indices.  The prompt (``prompt_length`` rows) is placed by the oracle.
    """

    embeds: np.ndarray
    attention_mask: np.ndarray
    tail: np.ndarray
    labels: np.ndarray
    num_classes: int
    prompt_length: int
    input_ids: np.ndarray = field(repr=False)
    tail_ids: list[int] = field(repr=False)

    @property
    def onehot(self) -> np.ndarray:
        return np.eye(self.num_classes)[self.labels]

    @property
    def lengths(self) -> np.ndarray:
        return self.attention_mask.sum(axis=1)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class DecoderModel:
    """What the data owner needs of a decoder checkpoint: the public config and tokenizer first (for the
    checks), the weights only once :meth:`load_weights` is called (the plain backend)."""

    folder: Path
    cfg: DecoderConfig
    tokenizer: Any
    weights: dict[str, np.ndarray] | None = None

    @property
    def hidden(self) -> int:
        return self.cfg.hidden

    #: a secret-shared folder (``secp-share-model`` output): only its public part is read here
    shared: bool = False

    @classmethod
    def open(cls, folder: Path) -> DecoderModel:
        """A plaintext Hugging Face folder, or a shared-model folder (its manifest's config and its public
        tokenizer and token embedding; the weights stay on the servers)."""
        from data_owner.encode import load_tokenizer

        folder = Path(folder)
        if (folder / "manifest.json").is_file():
            from contract.manifest import ShareManifest

            try:
                manifest = ShareManifest.read(folder)
            except (OSError, ValueError) as exc:
                raise DataOwnerError(f"cannot read the shared model in {folder}: {exc}") from exc
            if not isinstance(manifest.config, DecoderConfig):
                raise DataOwnerError(
                    f"{folder} is not a shared decoder (architecture {manifest.config.arch})"
                )
            return cls(folder, manifest.config, load_tokenizer(folder / manifest.public.folder), shared=True)
        try:
            cfg = DecoderConfig.from_hf(read_hf_config(folder))
        except (CheckpointError, UnsupportedModelError, ValueError) as exc:
            raise DataOwnerError(f"cannot load the model in {folder}: {exc}") from exc
        return cls(folder, cfg, load_tokenizer(folder))

    def load_weights(self) -> dict[str, np.ndarray]:
        from mpc_core.nn.llama_weights import load_llama_checkpoint

        if self.shared:
            raise DataOwnerError(
                f"{self.folder} is a secret-shared model; the plain backend needs a plaintext checkpoint"
            )
        if self.weights is None:
            try:
                _, self.weights = load_llama_checkpoint(self.folder)
            except (CheckpointError, UnsupportedModelError, FileNotFoundError, ValueError) as exc:
                raise DataOwnerError(f"cannot load the model in {self.folder}: {exc}") from exc
        return self.weights

    def token_embedding(self) -> np.ndarray:
        """The public token embedding [V, H]: the data owner embeds its own tokens with it (and, for a tied
        output embedding, takes the verbalizer rows from it)."""
        if not self.shared:
            return self.load_weights()["emb.word"]
        from safetensors.numpy import load_file

        from contract.manifest import ShareManifest

        public = ShareManifest.read(self.folder).public
        try:
            return np.asarray(load_file(str(self.folder / public.folder / public.embeddings))["emb.word"])
        except (OSError, KeyError) as exc:
            raise DataOwnerError(f"{self.folder} has no public token embedding: {exc}") from exc


class DecoderEncoder:
    """Token ids of a task's decoder template for a tokenizer; embeddings once the weights are there.

    ``max_length`` bounds the tokens of one example part plus the answer template (the prompt is not
    counted): longer texts are cut, the longest text slot first, so the template words always survive.
    """

    def __init__(
        self,
        tokenizer: Any,
        task: TaskSpec,
        prompt_length: int,
        max_length: int,
        prompt_init: Literal["zeros", "template"] = "zeros",
    ) -> None:
        if task.decoder is None:
            task.template_for("next-token")  # raises the task's own clear error
        assert task.decoder is not None
        self.tok = tokenizer
        self.task = task
        self.L = prompt_length
        self.max_length = max_length
        self.example_template, answer = task.decoder.split()
        self.tail_ids = list(tokenizer(answer, add_special_tokens=False)["input_ids"])
        #: token ids whose embeddings start the prompt's rows (p0); empty: zero rows
        self.init_ids: list[int] = []
        if prompt_init == "template":
            count = template_prompt_length(tokenizer, task)
            if prompt_length != count:
                raise DataOwnerError(
                    f"--prompt-init template makes the prompt the answer template's first {count} tokens "
                    f"({answer!r} but its last token): use --prompt-length {count}, or leave it unset"
                )
            self.init_ids, self.tail_ids = self.tail_ids[:-1], self.tail_ids[-1:]
        self.word_ids = decoder_word_ids(tokenizer, task.decoder.words)
        empty = self._fill({s: "" for s in task.slots})
        if len(empty) + self.answer_tokens + len(task.slots) > max_length:
            raise DataOwnerError(
                f"max_length {max_length} leaves no room for text after the decoder template"
            )

    @property
    def answer_tokens(self) -> int:
        """The answer template's tokens, those a template-initialised prompt stands in for included: an
        example is cut by the same count whatever the prompt's initialisation, so that z = 0 of such a
        prompt is exactly the plain input."""
        return len(self.init_ids) + len(self.tail_ids)

    def _fill(self, texts: dict[str, str]) -> list[int]:
        filled = SLOT_RE.sub(lambda m: texts[m.group(1)], self.example_template)
        return list(self.tok(filled, add_special_tokens=True)["input_ids"])

    def token_ids(self, example: Example) -> list[int]:
        """The example part's ids (the tokenizer's special tokens, e.g. a BOS, included), cut to fit."""
        texts = dict(example.texts)
        for _ in range(64):
            ids = self._fill(texts)
            over = len(ids) + self.answer_tokens - self.max_length
            if over <= 0:
                return ids
            longest = max(texts, key=lambda s: len(texts[s]))
            t_ids = list(self.tok(texts[longest], add_special_tokens=False)["input_ids"])
            texts[longest] = self.tok.decode(t_ids[: max(0, len(t_ids) - over)])
        raise DataOwnerError(f"cannot cut an example to max_length {self.max_length} tokens")

    def tokenize(self, examples: Sequence[Example]) -> list[list[int]]:
        return [self.token_ids(e) for e in examples]

    def embed(self, examples: Sequence[Example], seqs: list[list[int]], word: np.ndarray) -> DecoderSplit:
        """Right-padded embeddings of tokenized examples with the public token embedding ``word`` [V, H]."""
        from mpc_core.nn.decoder import embed_tokens

        T = max(len(s) for s in seqs)
        ids = np.zeros((len(seqs), T), dtype=np.int64)  # padding rows are masked: any valid id will do
        att = np.zeros((len(seqs), T), dtype=np.int64)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = s
            att[i, : len(s)] = 1
        return DecoderSplit(
            embeds=embed_tokens(word, ids),
            attention_mask=att,
            tail=embed_tokens(word, np.asarray(self.tail_ids, dtype=np.int64)),
            labels=np.array([e.label for e in examples], dtype=np.int64),
            num_classes=self.task.num_classes,
            prompt_length=self.L,
            input_ids=ids,
            tail_ids=list(self.tail_ids),
        )


def template_prompt_length(tokenizer: Any, task: TaskSpec) -> int:
    """Rows of a ``template``-initialised prompt: the answer template's tokens but its last (which stays a
    plain token, so the answer is read after a real token), at least one."""
    if task.decoder is None:
        task.template_for("next-token")  # raises the task's own clear error
    assert task.decoder is not None
    _, answer = task.decoder.split()
    count = len(tokenizer(answer, add_special_tokens=False)["input_ids"]) - 1
    if count < 1:
        raise DataOwnerError(
            f"the answer template {answer!r} is a single token: --prompt-init template needs at least two"
        )
    return count


def with_template_length(config: Any) -> Any:
    """``config`` (a RunConfig) with the prompt length its ``template``-initialised prompt has."""
    from data_owner.task import load_task

    if not is_decoder_folder(config.model):
        raise DataOwnerError(f"--prompt-init template is for decoders; {config.model} is not one")
    length = template_prompt_length(DecoderModel.open(Path(config.model)).tokenizer, load_task(config.task))
    return config.model_copy(update={"prompt_length": length})


def check_context(cfg: DecoderConfig, prompt_length: int, longest: int, tail: int, where: str) -> None:
    """Refuse a sequence (prompt + longest example part + answer template) beyond the model's positions."""
    total = prompt_length + longest + tail
    if total > cfg.max_positions:
        raise DataOwnerError(
            f"the prompt ({prompt_length} tokens) + the longest example of {where} ({longest} tokens) + the "
            f"answer template ({tail} tokens) = {total} tokens exceed the model's context of "
            f"{cfg.max_positions} positions (max_position_embeddings); use a shorter --prompt-length or "
            "--max-length"
        )


def check_cache(cfg: DecoderConfig, sizes: dict[str, tuple[int, int]], limit_mb: float) -> int:
    """Refuse suffix caches (one per split: rows, padded tokens) whose keys and values would exceed
    ``limit_mb`` MiB together; returns the estimate in bytes."""
    total = sum(cache_bytes(cfg, rows, tokens) for rows, tokens in sizes.values())
    if total > limit_mb * 2**20:
        parts = ", ".join(f"{name} {rows} rows x {tokens} tokens" for name, (rows, tokens) in sizes.items())
        raise DataOwnerError(
            f"the suffix cache would need {total / 2**20:.1f} MiB (> --cache-limit-mb {limit_mb:g}): "
            f"{cfg.layers} layers x ({parts}) x {cfg.kv_heads} kv heads x {cfg.head_dim} x 2 (keys, values) "
            f"x {BYTES_PER_ENTRY} bytes; raise the limit, use fewer examples or a smaller --max-length, or "
            "--placement prefix (no cache)"
        )
    return total
