"""The plaintext loss oracle for causal decoders (LLaMA family).  NOT PRIVATE.

It runs the decoder code the servers run on shares (:mod:`mpc_core.nn.decoder`,
:mod:`mpc_core.nn.decoder_cache`, :class:`~mpc_core.nn.decoder_head.NextTokenHead`, :mod:`mpc_core.nn.loss`)
on the float64 :class:`~mpc_core.nn.decoder_backend.PlainDecoderBackend`, in this process:

* ``suffix`` placement: each uploaded split's examples are prefilled ONCE (their keys and values kept, in
  chunks of similar length), and every candidate extends them by its prompt and the answer template
  (:func:`~mpc_core.nn.decoder_cache.candidate_logits`), so a candidate costs L + L_template tokens per
  example instead of the whole sequence;
* ``prefix`` placement: the prompt sits after the first token, so every candidate runs the full sequences
  (:func:`~mpc_core.nn.decoder.decode`), batched by a token budget.

Every output of a run on this backend carries :data:`~data_owner.oracle.NOT_PRIVATE`; the oracle reports
zero bytes because nothing is sent.
"""

from __future__ import annotations

import time

import numpy as np

from data_owner.decoder import DecoderModel, DecoderSplit, Placement
from data_owner.errors import DataOwnerError
from data_owner.oracle import LossOracle, check_prompts
from mpc_core.nn.decoder import decode
from mpc_core.nn.decoder_backend import PlainDecoderBackend
from mpc_core.nn.decoder_cache import DecoderCache, candidate_logits, prefill
from mpc_core.nn.decoder_head import NextTokenHead
from mpc_core.nn.loss import loss_fn


class PlainDecoderOracle(LossOracle):
    """Verbalizer next-token logits and losses of candidate prompts on a decoder, in float64 plaintext."""

    private = False
    label = "plain (NOT PRIVATE)"

    def __init__(
        self,
        model: DecoderModel,
        word_ids: list[int],
        placement: Placement,
        *,
        chunk_examples: int = 32,
        token_budget: int = 16384,
    ) -> None:
        super().__init__()
        if model.weights is None:
            raise DataOwnerError(f"{model.folder}: the plain backend needs the plaintext weights")
        self.cfg = model.cfg
        self.B = PlainDecoderBackend(model.weights)
        if self.cfg.tie_word_embeddings:
            self.head = NextTokenHead.from_embeddings(word_ids, model.weights["emb.word"])
        else:
            self.head = NextTokenHead(list(word_ids))
        self.placement = placement
        self.chunk_examples = chunk_examples
        self.token_budget = token_budget
        self.splits: dict[str, tuple[DecoderSplit, str | None]] = {}
        self.caches: dict[str, list[tuple[np.ndarray, DecoderCache]]] = {}

    def _chunks(self, data: DecoderSplit) -> list[np.ndarray]:
        """Example indices in chunks of similar length (each chunk is cut to its own longest row)."""
        order = np.argsort(data.lengths, kind="stable")
        return [order[s : s + self.chunk_examples] for s in range(0, len(order), self.chunk_examples)]

    def upload(self, name: str, split: DecoderSplit, loss: str | None = None) -> None:
        t0 = time.perf_counter()
        self.splits[name] = (split, loss)
        if self.placement == "suffix":
            caches = []
            for idx in self._chunks(split):
                T = int(split.lengths[idx].max())
                caches.append(
                    (idx, prefill(self.B, self.cfg, split.embeds[idx, :T], split.attention_mask[idx, :T]))
                )
            self.caches[name] = caches
        self.cost.seconds += time.perf_counter() - t0

    def logits(self, prompts: np.ndarray, split: str) -> np.ndarray:
        data, _ = self._split(split)
        prompts = check_prompts(prompts, data.prompt_length, self.cfg.hidden)
        t0 = time.perf_counter()
        out = np.empty((len(prompts), len(data), self.head.classes))
        if self.placement == "suffix":
            new = data.prompt_length + data.tail.shape[0]
            for idx, cache in self.caches[split]:
                tokens = len(idx) * (new + cache.mask.shape[1])
                for g in self._groups(len(prompts), tokens):
                    out[g, idx] = candidate_logits(self.B, self.cfg, self.head, cache, prompts[g], data.tail)
        else:
            for idx in self._chunks(data):
                tokens = len(idx) * (int(data.lengths[idx].max()) + data.prompt_length + data.tail.shape[0])
                for g in self._groups(len(prompts), tokens):
                    out[g, idx] = self._prefix_logits(data, prompts[g], idx)
        self.cost.seconds += time.perf_counter() - t0
        return out

    def _groups(self, candidates: int, tokens_per_candidate: int) -> list[slice]:
        size = max(1, self.token_budget // max(1, tokens_per_candidate))
        return [slice(s, min(s + size, candidates)) for s in range(0, candidates, size)]

    def _prefix_logits(self, data: DecoderSplit, prompts: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """[P, n, C] for ``t_0, prompt, t_1 .. t_k, answer template`` of the examples ``idx`` (right-padded;
        the answer position is each sequence's last real token)."""
        p, length, hidden = prompts.shape
        lengths = data.lengths[idx]
        tail = data.tail.shape[0]
        total = lengths + length + tail
        T = int(total.max())
        x = np.zeros((p, len(idx), T, hidden))
        mask = np.zeros((p, len(idx), T), dtype=np.int64)
        for j, (i, k) in enumerate(zip(idx, lengths, strict=True)):
            x[:, j, 0] = data.embeds[i, 0]
            x[:, j, 1 : 1 + length] = prompts
            x[:, j, 1 + length : length + k] = data.embeds[i, 1:k]
            x[:, j, length + k : length + k + tail] = data.tail
            mask[:, j, : total[j]] = 1
        rows = p * len(idx)
        hidden_states = decode(self.B, self.cfg, x.reshape(rows, T, hidden), mask.reshape(rows, T))
        logits = self.head.logits(self.B, self.cfg, hidden_states, np.tile(total - 1, p))
        return np.asarray(logits).reshape(p, len(idx), self.head.classes)

    def losses(self, prompts: np.ndarray, split: str = "train") -> np.ndarray:
        data, loss = self._split(split)
        logits = self.logits(prompts, split)
        return np.asarray(loss_fn(loss or "ce")(self.B, logits, data.onehot), dtype=np.float64)

    def _split(self, name: str) -> tuple[DecoderSplit, str | None]:
        if name not in self.splits:
            raise KeyError(f"split {name!r} was not uploaded")
        return self.splits[name]
