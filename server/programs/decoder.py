"""``decoder_tuning``: forward-only prompt tuning of a shared LLaMA-family decoder (issue 12).

Inputs (secret-shared by the data owner, fixed point; H is the model's hidden size):

* ``<split>.x`` [n, T, H]: the examples' token embeddings (the embedding table is public: the data owner
  looks the rows up), right-padded to T; for ``prefix`` each example already ends with the answer template;
* ``prompts`` [P, L, H]: this generation's candidate prompts;
* ``template.x`` [L_t, H] (``suffix`` only): the answer template's token embeddings;
* ``verbalizer.x`` [C, H] (tied output embedding only): the verbalizer words' rows of the public embedding;
  an untied checkpoint's secret ``head.weight`` columns of ``label_words`` are used instead;
* ``<split>.y`` [n, C]: one-hot labels (only when the output is ``losses``).

Output: ``losses`` [P] (cross-entropy or hinge over the verbalizer logits at the answer position, on
shares end to end) or ``logits`` [P, n, C].

``suffix`` placement (:mod:`mpc_core.nn.decoder_cache`): at the first batch of a split the servers run its
examples once and keep every layer's keys and values as shares in the job's state (never opened; freed
with the job).  Later batches run only each candidate's prompt and template tokens against them.  The
cache's size is known from the public shapes, so it is checked against the job's memory limit
(``limits.max_job_bytes``, together with the job's uploads) before the batch runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from proto.contracts import padding_mask
from proto.decoder_contract import DecoderTuningParams
from server.programs.base import PlanError, Program, Shape

MAX_SEQUENCES = 1 << 16


@dataclass(frozen=True)
class SecretVerbalizerHead:
    """The next-token head with the verbalizer rows as a shared fixed operand [H, C] (tied embeddings)."""

    rows_t: Any  # SharedTensor [H, C]
    classes: int

    def logits(self, B, cfg, hidden, answer_positions):
        from mpc_core.nn.decoder import final_norm

        n = hidden.shape[0]
        return final_norm(B, cfg, hidden[np.arange(n), np.asarray(answer_positions)]) @ self.rows_t


def decoder_config(model):
    from mpc_core.nn.llama_config import DecoderConfig

    config = dict(model.manifest.get("config") or {})
    if config.get("arch") != "llama":
        raise PlanError(
            f"decoder_tuning needs a LLaMA-family model; the loaded model is {config.get('arch')!r}"
        )
    try:
        return DecoderConfig.model_validate(config)
    except ValueError as exc:
        raise PlanError(f"the loaded model's manifest has no usable decoder config ({exc})") from None


def cache_bytes(cfg, n: int, t: int, slots: int) -> int:
    """Bytes of one participant's kept keys and values of n examples of T tokens (every layer)."""
    from mpc_core.nn.decoder_cache import cache_entries

    return 8 * slots * cache_entries(cfg, n, t)


class DecoderTuning(Program):
    name = "decoder_tuning"
    Params = DecoderTuningParams
    uses_model = True

    def plan(self, inputs: Mapping[str, Shape], params: DecoderTuningParams, model) -> dict[str, Shape]:
        cfg = decoder_config(model)
        split = params.split
        wanted = {f"{split}.x", "prompts"}
        if params.output == "losses":
            wanted.add(f"{split}.y")
        if params.placement == "suffix":
            wanted.add("template.x")
        if cfg.tie_word_embeddings:
            wanted.add("verbalizer.x")
        if set(inputs) != wanted:
            raise PlanError(
                f"decoder_tuning with these parameters takes inputs {sorted(wanted)}, got {sorted(inputs)}"
            )
        x, prompts = inputs[f"{split}.x"], inputs["prompts"]
        if len(x) != 3 or len(prompts) != 3 or x[2] != cfg.hidden or prompts[2] != cfg.hidden:
            raise PlanError(
                f"{split}.x must be [n, T, {cfg.hidden}] and prompts [P, L, {cfg.hidden}]; "
                f"got {x} and {prompts}"
            )
        n, t, _ = x
        p, length, _ = prompts
        if p * n > MAX_SEQUENCES:
            raise PlanError(f"{p} candidates x {n} examples exceeds {MAX_SEQUENCES} sequences per batch")
        lengths = params.lengths
        if len(lengths) != n or not all(1 <= k <= t for k in lengths):
            raise PlanError(f"lengths must give {n} lengths in [1, {t}]")
        extra = length + (inputs["template.x"][0] if params.placement == "suffix" else 0)
        if params.placement == "suffix":
            template = inputs["template.x"]
            if len(template) != 2 or template[1] != cfg.hidden or template[0] < 1:
                raise PlanError(f"template.x must be [L_t >= 1, {cfg.hidden}], got {template}")
        elif min(lengths) < 2:
            raise PlanError("prefix placement puts the prompt after the first token: every example needs two")
        if max(lengths) + extra > cfg.max_positions:
            raise PlanError(
                f"the longest example ({max(lengths)} tokens) with {extra} prompt and template tokens "
                f"exceeds the model's {cfg.max_positions} positions"
            )
        classes = len(params.label_words)
        if not all(0 <= w < cfg.vocab for w in params.label_words):
            raise PlanError(f"label_words must be token ids in [0, {cfg.vocab})")
        if cfg.tie_word_embeddings and tuple(inputs["verbalizer.x"]) != (classes, cfg.hidden):
            raise PlanError(f"verbalizer.x must be [{classes}, {cfg.hidden}], got {inputs['verbalizer.x']}")
        if params.output == "losses" and tuple(inputs[f"{split}.y"]) != (n, classes):
            raise PlanError(f"{split}.y must be one-hot [{n}, {classes}], got {inputs[f'{split}.y']}")
        return {"losses": (p,)} if params.output == "losses" else {"logits": (p, n, classes)}

    def state_bytes(self, inputs: Mapping[str, Shape], params: DecoderTuningParams, model) -> int:
        """The suffix cache the job keeps for this split while the batch runs (0 for ``prefix``)."""
        if params.placement != "suffix":
            return 0
        from mpc_core.suites import suite_class

        n, t, _ = inputs[f"{params.split}.x"]
        return cache_bytes(decoder_config(model), n, t, suite_class(model.suite).slots)

    def run(self, ctx, inputs, params: DecoderTuningParams, model, state):
        from mpc_core.nn import decoder_cache
        from mpc_core.nn.decoder import decode
        from mpc_core.nn.decoder_backend import SecureDecoderBackend
        from mpc_core.nn.loss import loss_fn

        cfg = state.get("config")
        if cfg is None:
            cfg = state["config"] = decoder_config(model.loaded)
        backend = state.get("backend")
        if backend is None:
            backend = state["backend"] = SecureDecoderBackend(ctx, model)
        examples, prompts = inputs[f"{params.split}.x"], inputs["prompts"]
        head = self._head(cfg, inputs, params, state)
        mask = padding_mask(params.lengths, examples.shape[1])
        if params.placement == "suffix":
            key = (params.split, tuple(examples.shape), tuple(params.lengths))
            if state.get("cache_key") != key:
                state.pop("cache", None)  # one split's cache at a time: the job's memory check counts one
                with ctx.op("decoder.prefill"):
                    state["cache"] = decoder_cache.prefill(backend, cfg, examples, mask)
                state["cache_key"] = key
            logits = decoder_cache.candidate_logits(
                backend, cfg, head, state["cache"], prompts, inputs["template.x"]
            )
        else:
            logits = self._prefix_logits(backend, cfg, head, examples, prompts, params.lengths, decode)
        if params.output == "logits":
            return {"logits": logits}
        return {"losses": loss_fn(params.loss)(backend, logits, inputs[f"{params.split}.y"])}

    @staticmethod
    def _head(cfg, inputs, params: DecoderTuningParams, state):
        from mpc_core.nn.decoder_head import NextTokenHead

        if not cfg.tie_word_embeddings:
            return NextTokenHead(list(params.label_words))
        key = ("verbalizer", tuple(params.label_words))
        if state.get("verbalizer_key") != key:
            rows = inputs["verbalizer.x"]
            state["verbalizer_t"] = rows.T.fixed(
                f"decoder.verbalizer.{len(state.get('verbalizer_keys', []))}"
            )
            state.setdefault("verbalizer_keys", []).append(key)
            state["verbalizer_key"] = key
        return SecretVerbalizerHead(state["verbalizer_t"], len(params.label_words))

    @staticmethod
    def _prefix_logits(B, cfg, head, examples, prompts, lengths, decode):
        """Every (candidate, example) sequence [first token, prompt, rest of the example], run in full."""
        n, t, h = examples.shape
        p, length, _ = prompts.shape
        first = B.broadcast_to(examples[None, :, :1], (p, n, 1, h))
        prompt_rows = B.broadcast_to(prompts[:, None], (p, n, length, h))
        rest = B.broadcast_to(examples[None, :, 1:], (p, n, t - 1, h))
        sequences = B.concatenate([first, prompt_rows, rest], axis=2).reshape(p * n, t + length, h)
        total = np.tile(np.asarray(lengths, dtype=np.int64) + length, p)
        hidden = decode(B, cfg, sequences, padding_mask(total, t + length))
        return head.logits(B, cfg, hidden, total - 1).reshape(p, n, head.classes)
