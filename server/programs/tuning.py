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
:func:`mpc_core.nn.candidate_logits` and the loss of :mod:`mpc_core.nn.loss` on the secure backend (the
same computation as :func:`mpc_core.nn.candidate_losses`).

A multi-part request (``TuningParams.parts``) names several parts of one split, ``<part>.x`` [n_i, T_i, H]
each padded to its own longest row: the servers run the encoder on each part in turn (one pass each, or
candidate groups of at most ``max_sequences`` sequences), join the logits along the examples and take
the loss once over all ``sum n_i`` rows.  The result is the one-request loss without the padding of every
row to the split's longest (padding changes no real row's value: attention masks the padded keys), at
one encoder's rounds per part and pass.

With the similarity head the anchors are *secret* here (they come from the secret encoder): at a job's
first batch the servers encode ``anchors.x`` with exact softmax attention, mean-pool and normalise them,
and keep the result in the job's state; later batches reuse it (upload the anchors once per job).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from proto.contracts import TuningParams, TuningPart, padding_mask
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
        """Check every input and parameter (one part, or every part of a multi-part request) before any
        share is touched: a refused request changes nothing on any server."""
        from mpc_core.nn.config import AttentionConfig

        cfg = self.encoder_config(model)
        parts = params.part_list()
        if params.parts is not None and (params.lengths or params.mask_positions is not None):
            raise PlanError("a multi-part request gives lengths and mask positions per part, not at the top")
        names = [part.name for part in parts]
        if len(set(names)) != len(names):
            raise PlanError(f"the parts of one request must have distinct names, got {names}")
        wanted = {f"{name}.x" for name in names} | {"prompts"}
        if params.output == "losses":
            wanted |= {f"{name}.y" for name in names}
        if params.head == "similarity":
            wanted.add("anchors.x")
        if set(inputs) != wanted:
            raise PlanError(
                f"prompt_tuning with these parameters takes inputs {sorted(wanted)}, got {sorted(inputs)}"
            )
        prompts = inputs["prompts"]
        if len(prompts) != 3:
            raise PlanError(f"prompts must be [P, L, H]; got {prompts}")
        p, length, h2 = prompts
        if p < 1 or h2 != cfg.hidden:
            raise PlanError(f"prompts must be [P >= 1, L, {cfg.hidden}]; got {prompts}")
        if params.head == "mlm":
            if not cfg.has_mlm_head:
                raise PlanError("the loaded model has no MLM head: use the similarity head")
            words = params.label_words or []
            if len(words) < 2 or not all(0 <= w < cfg.vocab for w in words):
                raise PlanError(f"the MLM head needs at least two label-word ids in [0, {cfg.vocab})")
            classes = len(words)
        else:
            anchors = inputs["anchors.x"]
            if len(anchors) != 3 or anchors[2] != cfg.hidden or anchors[1] > cfg.max_positions:
                raise PlanError(f"anchors.x must be [C, T', {cfg.hidden}], got {anchors}")
            classes = anchors[0]
            if classes < 2:
                raise PlanError("the similarity head needs at least two anchors")
            _padding(params.anchor_lengths, (anchors[0], anchors[1]), "anchor_lengths")
        rows = 0
        for part in parts:
            rows += self._plan_part(cfg, inputs, params, part, length, classes)
        if p * rows > MAX_SEQUENCES:
            raise PlanError(f"{p} candidates x {rows} examples exceeds {MAX_SEQUENCES} sequences per batch")
        try:
            AttentionConfig(mode=params.attention, features=params.features)
        except ValueError as exc:
            raise PlanError(f"invalid attention settings: {exc}") from None
        return {"losses": (p,)} if params.output == "losses" else {"logits": (p, rows, classes)}

    @staticmethod
    def _plan_part(cfg, inputs, params: TuningParams, part: TuningPart, length: int, classes: int) -> int:
        """Check one part's examples, padding, mask positions and labels; returns its row count."""
        name = part.name
        what = name if params.parts is None else f"part {name!r}:"
        x = inputs[f"{name}.x"]
        if len(x) != 3:
            raise PlanError(f"{name}.x must be [n, T, H]; got {x}")
        n, t, h = x
        if n < 1:
            raise PlanError(f"{what} {name}.x holds no examples (an empty part)")
        if h != cfg.hidden:
            raise PlanError(f"the model's hidden size is {cfg.hidden}; got {name}.x {x}")
        if length + 2 > t or t > cfg.max_positions:
            raise PlanError(
                f"{what} {length} prompt rows do not fit sequences of {t} tokens (max {cfg.max_positions})"
            )
        mask = _padding(part.lengths, (n, t), "lengths" if params.parts is None else f"{what} lengths")
        _pool_mask_without(params.pool_exclude, mask)
        if params.head == "mlm":
            positions = part.mask_positions or []
            if len(positions) != n or not all(0 <= q < t for q in positions):
                raise PlanError(f"the MLM head needs {n} mask positions in [0, {t})")
        if params.output == "losses" and tuple(inputs[f"{name}.y"]) != (n, classes):
            raise PlanError(f"{name}.y must be one-hot [{n}, {classes}], got {inputs[f'{name}.y']}")
        return n

    def run(self, ctx, inputs, params: TuningParams, model, state):
        """The candidates' logits part by part (each in passes of at most ``max_sequences`` sequences),
        joined along the examples; the loss, when asked for, once over all of them."""
        from mpc_core.nn import MLMHead, SecureBackend, candidate_logits
        from mpc_core.nn.adapted import attention_for, manifest_record
        from mpc_core.nn.loss import loss_fn

        cfg = state.get("config")
        if cfg is None:
            cfg = state["config"] = self.encoder_config(model.loaded)
        backend = state.get("backend")
        if backend is None:
            backend = state["backend"] = SecureBackend(ctx, model)
        attn = attention_for(params.attention, params.features, manifest_record(model.loaded.manifest))
        prompts = inputs["prompts"]
        if params.head == "mlm":
            head = MLMHead(label_word_ids=tuple(params.label_words))
        else:
            head = self._anchor_head(ctx, backend, cfg, inputs["anchors.x"], params, state)
        parts = params.part_list()
        candidates = prompts.shape[0]
        logits = []
        for part in parts:
            examples = inputs[f"{part.name}.x"]
            mask = padding_mask(part.lengths, examples.shape[1])
            positions = (
                None if part.mask_positions is None else np.asarray(part.mask_positions, dtype=np.int64)
            )
            pool = _pool_mask_without(params.pool_exclude, mask)
            group = candidates
            if params.max_sequences:
                group = max(1, params.max_sequences // examples.shape[0])
            pieces = [
                candidate_logits(
                    backend, cfg, attn, head, examples, prompts[g : g + group], mask, positions, pool
                )
                for g in range(0, candidates, group)
            ]
            logits.append(pieces[0] if len(pieces) == 1 else backend.concatenate(pieces, axis=0))
        joined = logits[0] if len(logits) == 1 else backend.concatenate(logits, axis=1)
        if params.output == "logits":
            return {"logits": joined}
        labels = [inputs[f"{part.name}.y"] for part in parts]
        onehot = labels[0] if len(labels) == 1 else backend.concatenate(labels, axis=0)
        return {"losses": loss_fn(params.loss)(backend, joined, onehot)}

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
