"""``prompt_tuning``: the batched secure forward of the shared encoder for forward-only prompt tuning.

Inputs (secret-shared by the data owner, fixed point):

* ``<split>.x`` [n, T, H]: its examples' embedding-layer outputs (uploaded once per split);
* ``prompts`` [P, L, H]: the P candidate prompts of this generation (added to rows 1..L);
* ``<split>.y`` [n, C]: one-hot labels (only when the output is ``losses``);
* ``anchors.x`` [C, T', H]: embedding-layer outputs of the label descriptions (similarity head only).

Public parameters (:class:`proto.contracts.TuningParams`, built by the data owner, validated here):
split, output, loss, head, example lengths (the padding mask), pooled-out positions, mask positions and
label-word ids (MLM head), anchor lengths and scale (similarity head), attention mode and feature count.

Output: ``losses`` [P] (one loss per candidate) or ``logits`` [P, n, C], computed by
:func:`mpc_core.nn.candidate_losses` / :func:`~mpc_core.nn.candidate_logits` on the secure backend.

With the similarity head the anchors are *secret* here (they come from the secret encoder): at a job's
first batch the servers encode ``anchors.x`` with exact softmax attention, mean-pool and normalise them,
and keep the result in the job's state; later batches reuse it (upload the anchors once per job).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from proto.contracts import TuningParams, padding_mask
from server.programs.base import PlanError, Program, Shape

MAX_SEQUENCES = 1 << 16


@dataclass(frozen=True)
class SecretAnchorHead:
    """The similarity head with secret unit-norm anchors [C, H]: logits = scale * cos(pooled, anchor)."""

    anchors_t: Any  # SharedTensor [H, C], marked as a fixed operand
    classes: int
    scale: float
    kind: str = "similarity"

    def logits(self, B, cfg, hidden, mask, mask_positions):
        from mpc_core.nn.heads import l2_normalise, mean_pool

        unit = l2_normalise(B, mean_pool(hidden, mask))
        return (unit @ self.anchors_t) * self.scale


def _padding(lengths: list[int] | None, shape: tuple[int, int], what: str) -> np.ndarray:
    """The [n, t] padding mask of ``lengths`` (one per row, each in [1, t])."""
    n, t = shape
    lengths = lengths or []
    if len(lengths) != n or not all(1 <= k <= t for k in lengths):
        raise PlanError(f"{what} must give {n} lengths in [1, {t}]")
    return padding_mask(lengths, t)


def _pool_mask_without(exclude: list[int] | None, mask: np.ndarray) -> np.ndarray | None:
    """The similarity head's pooling mask: ``mask`` without the excluded positions (None: all of it)."""
    if not exclude:
        return None
    t = mask.shape[1]
    if len(set(exclude)) != len(exclude) or not all(0 <= r < t for r in exclude):
        raise PlanError(f"pool_exclude must list distinct positions in [0, {t})")
    pool = mask.copy()
    pool[:, exclude] = 0
    if not pool.any(axis=1).all():
        raise PlanError("pool_exclude leaves an example with no row to pool")
    return pool


class PromptTuning(Program):
    name = "prompt_tuning"
    Params = TuningParams
    uses_model = True

    @staticmethod
    def encoder_config(model):
        from mpc_core.nn.config import EncoderConfig

        try:
            return EncoderConfig.model_validate(model.manifest["config"])
        except (KeyError, ValueError) as exc:
            raise PlanError(f"the loaded model's manifest has no usable encoder config ({exc})") from None

    def plan(self, inputs: Mapping[str, Shape], params: TuningParams, model) -> dict[str, Shape]:
        from mpc_core.nn.config import AttentionConfig

        cfg = self.encoder_config(model)
        split = params.split
        wanted = {f"{split}.x", "prompts"}
        if params.output == "losses":
            wanted.add(f"{split}.y")
        if params.head == "similarity":
            wanted.add("anchors.x")
        if set(inputs) != wanted:
            raise PlanError(
                f"prompt_tuning with these parameters takes inputs {sorted(wanted)}, got {sorted(inputs)}"
            )
        x, prompts = inputs[f"{split}.x"], inputs["prompts"]
        if len(x) != 3 or len(prompts) != 3:
            raise PlanError(f"{split}.x must be [n, T, H] and prompts [P, L, H]; got {x} and {prompts}")
        n, t, h = x
        p, length, h2 = prompts
        if h != cfg.hidden or h2 != cfg.hidden:
            raise PlanError(
                f"the model's hidden size is {cfg.hidden}; got {split}.x {x} and prompts {prompts}"
            )
        if length + 2 > t or t > cfg.max_positions:
            raise PlanError(
                f"{length} prompt rows do not fit sequences of {t} tokens (max {cfg.max_positions})"
            )
        if p * n > MAX_SEQUENCES:
            raise PlanError(f"{p} candidates x {n} examples exceeds {MAX_SEQUENCES} sequences per batch")
        mask = _padding(params.lengths, (n, t), "lengths")
        _pool_mask_without(params.pool_exclude, mask)
        if params.head == "mlm":
            if not cfg.has_mlm_head:
                raise PlanError("the loaded model has no MLM head: use the similarity head")
            words = params.label_words or []
            positions = params.mask_positions or []
            if len(words) < 2 or not all(0 <= w < cfg.vocab for w in words):
                raise PlanError(f"the MLM head needs at least two label-word ids in [0, {cfg.vocab})")
            if len(positions) != n or not all(0 <= q < t for q in positions):
                raise PlanError(f"the MLM head needs {n} mask positions in [0, {t})")
            classes = len(words)
        else:
            anchors = inputs["anchors.x"]
            if len(anchors) != 3 or anchors[2] != cfg.hidden or anchors[1] > cfg.max_positions:
                raise PlanError(f"anchors.x must be [C, T', {cfg.hidden}], got {anchors}")
            classes = anchors[0]
            if classes < 2:
                raise PlanError("the similarity head needs at least two anchors")
            _padding(params.anchor_lengths, (anchors[0], anchors[1]), "anchor_lengths")
        if params.output == "losses" and tuple(inputs[f"{split}.y"]) != (n, classes):
            raise PlanError(f"{split}.y must be one-hot [{n}, {classes}], got {inputs[f'{split}.y']}")
        try:
            AttentionConfig(mode=params.attention, features=params.features)
        except ValueError as exc:
            raise PlanError(f"invalid attention settings: {exc}") from None
        return {"losses": (p,)} if params.output == "losses" else {"logits": (p, n, classes)}

    def run(self, ctx, inputs, params: TuningParams, model, state):
        from mpc_core.nn import MLMHead, SecureBackend, candidate_logits, candidate_losses
        from mpc_core.nn.adapted import attention_for, manifest_record

        cfg = state.get("config")
        if cfg is None:
            cfg = state["config"] = self.encoder_config(model.loaded)
        backend = state.get("backend")
        if backend is None:
            backend = state["backend"] = SecureBackend(ctx, model)
        attn = attention_for(params.attention, params.features, manifest_record(model.loaded.manifest))
        examples, prompts = inputs[f"{params.split}.x"], inputs["prompts"]
        mask = padding_mask(params.lengths, examples.shape[1])
        positions = (
            None if params.mask_positions is None else np.asarray(params.mask_positions, dtype=np.int64)
        )
        pool = _pool_mask_without(params.pool_exclude, mask)
        if params.head == "mlm":
            head = MLMHead(label_word_ids=tuple(params.label_words))
        else:
            head = self._anchor_head(ctx, backend, cfg, inputs["anchors.x"], params, state)
        if params.output == "logits":
            logits = candidate_logits(backend, cfg, attn, head, examples, prompts, mask, positions, pool)
            return {"logits": logits}
        onehot = inputs[f"{params.split}.y"]
        losses = candidate_losses(
            backend, cfg, attn, head, examples, prompts, onehot, mask, positions, params.loss, pool_mask=pool
        )
        return {"losses": losses}

    @staticmethod
    def _anchor_head(ctx, backend, cfg, anchors_x, params: TuningParams, state) -> SecretAnchorHead:
        """Encode the anchors once per job (exact softmax), keep them as a fixed operand."""
        from mpc_core.nn import AttentionConfig, encode
        from mpc_core.nn.heads import l2_normalise, mean_pool

        key = ("anchors", tuple(anchors_x.shape), tuple(params.anchor_lengths))
        cached = state.get("anchor_head_key")
        if cached != key:
            anchor_mask = padding_mask(params.anchor_lengths, anchors_x.shape[1])
            with ctx.op("anchors"):
                hidden = encode(backend, cfg, AttentionConfig(mode="softmax"), anchors_x, anchor_mask)
                unit = l2_normalise(backend, mean_pool(hidden, anchor_mask))  # [C, H]
            state["anchor_head_key"] = key
            state["anchors_t"] = unit.T.fixed(f"similarity.anchors.{len(state.get('anchor_keys', []))}")
            state.setdefault("anchor_keys", []).append(key)
        return SecretAnchorHead(anchors_t=state["anchors_t"], classes=anchors_x.shape[0], scale=params.scale)
