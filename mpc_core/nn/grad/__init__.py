"""Backward pass and Adam for the comparison baselines (secure SFT, secure gradient prompt tuning).

Written once over :class:`~mpc_core.nn.backend.Backend` like the forward: ``ops`` (the few primitives
the backward adds to a backend), ``layers`` (tape forward and backward of linear, LayerNorm, GELU, softmax
attention, the encoder block), ``model`` (similarity head, cross-entropy, the whole model),
``adam`` (Adam with shared moments), ``tuning`` (one gradient prompt-tuning or full fine-tuning step).
The forward-only path (:mod:`mpc_core.nn.batch`) does not use anything here.
"""

from mpc_core.nn.grad.model import Gradients, encoder_weight, loss_and_gradients

__all__ = ["Gradients", "encoder_weight", "loss_and_gradients"]
