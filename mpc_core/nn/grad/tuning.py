"""The two gradient baselines of the paper's comparison, one step at a time, on either backend.

* :class:`PromptTuning` (secure gradient prompt tuning): the soft prompt [1, L, H] is the only trained
  tensor; it stays as shares (on the secure backend) and is updated by :class:`~mpc_core.nn.grad.adam.Adam`
  from dL/dprompt, which flows through the frozen encoder (no weight gradient is computed).
* :class:`FullFineTuning` (secure SFT): every encoder tensor is trained; the updated weights stay as
  shares, re-marked as fixed operands under a per-step key (a stale 2pc mask would silently give wrong
  products).

Both train on cross-entropy (``loss="ce"``, default) or the hinge loss (``loss="hinge"``, ``margin``).
Both return the step's loss as the backend's value (shares: only the data owner should open it).
Nothing here is part of the forward-only tuning path.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mpc_core.nn.backend import Backend, Value
from mpc_core.nn.config import AttentionConfig, EncoderConfig
from mpc_core.nn.grad.adam import Adam, AdamConfig
from mpc_core.nn.grad.model import encoder_weight, loss_and_gradients
from mpc_core.nn.grad.ops import grad_ops
from mpc_core.nn.heads import SimilarityHead

DEFAULT_LOSS_SCALE = 2.0**8


class PromptTuning:
    """Adam on a soft prompt through a frozen encoder."""

    def __init__(
        self,
        B: Backend,
        cfg: EncoderConfig,
        head: SimilarityHead,
        prompt: Value,
        adam: AdamConfig,
        loss_scale: float = DEFAULT_LOSS_SCALE,
        attn: AttentionConfig | None = None,
        loss: str = "ce",
        margin: float = 2.0,
    ) -> None:
        self.loss, self.margin = loss, margin
        if len(prompt.shape) != 3 or prompt.shape[0] != 1 or prompt.shape[2] != cfg.hidden:
            raise ValueError(f"the prompt must be [1, L, {cfg.hidden}], got {tuple(prompt.shape)}")
        self.B, self.cfg, self.head, self.attn = B, cfg, head, attn or AttentionConfig()
        self.prompt = prompt
        self.loss_scale = loss_scale
        self.adam = Adam(B, adam, loss_scale)

    def step(
        self, examples: Value, onehot: Value, mask: np.ndarray, pool_mask: np.ndarray | None = None
    ) -> Value:
        """One Adam step on the prompt from the batch; returns the batch's loss (before the update), [1]."""
        g = loss_and_gradients(
            self.B,
            self.cfg,
            self.head,
            examples,
            self.prompt,
            onehot,
            mask,
            attn=self.attn,
            loss=self.loss,
            margin=self.margin,
            loss_scale=self.loss_scale,
            pool_mask=pool_mask,
        )
        self.prompt = self.adam.step({"prompt": self.prompt}, {"prompt": g.prompts})["prompt"]
        return g.losses


class FullFineTuning:
    """Adam on every encoder tensor (secure SFT); the embedding layer stays public and frozen."""

    def __init__(
        self,
        B: Backend,
        cfg: EncoderConfig,
        head: SimilarityHead,
        adam: AdamConfig,
        loss_scale: float = DEFAULT_LOSS_SCALE,
        attn: AttentionConfig | None = None,
        loss: str = "ce",
        margin: float = 2.0,
    ) -> None:
        self.loss, self.margin = loss, margin
        self.ops = grad_ops(B)
        self.cfg, self.head, self.attn = cfg, head, attn or AttentionConfig()
        self.loss_scale = loss_scale
        self.adam = Adam(B, adam, loss_scale)
        self.steps = 0

    @property
    def weights(self) -> Mapping[str, Value]:
        return self.ops.B.weights

    def step(
        self,
        examples: Value,
        onehot: Value,
        mask: np.ndarray,
        prompts: Value | None = None,
        pool_mask: np.ndarray | None = None,
    ) -> Value:
        """One Adam step on every encoder tensor; returns the batch's loss (before the update), [1]."""
        g = loss_and_gradients(
            self.ops.B,
            self.cfg,
            self.head,
            examples,
            prompts,
            onehot,
            mask,
            attn=self.attn,
            loss=self.loss,
            margin=self.margin,
            loss_scale=self.loss_scale,
            prompt_grad=False,
            trainable=encoder_weight,
            pool_mask=pool_mask,
        )
        trained = {n: v for n, v in self.weights.items() if encoder_weight(n)}
        updated = self.adam.step(trained, g.weights)
        self.steps += 1
        weights = dict(self.weights)
        for name, value in updated.items():
            weights[name] = self.ops.mark_updated(name, value, self.steps)
        self.ops = self.ops.with_weights(weights)
        return g.losses
