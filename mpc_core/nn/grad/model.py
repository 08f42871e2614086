"""The whole tuning computation with a tape, and its backward: prompts -> encoder -> head -> loss.

:func:`loss_and_gradients` is the gradient counterpart of :func:`mpc_core.nn.batch.candidate_losses` for
the similarity head (all-MiniLM-L6-v2), cross-entropy or the hinge loss, softmax attention: the same prompt
insertion (:func:`mpc_core.nn.batch.insert_prompts`), the same blocks and head, the same loss, plus
dL/dprompts and (for full fine-tuning) dL/dW of every encoder tensor.  It works on either backend; on
shares nothing is opened (the losses and gradients come back as shares).

Loss scale: the backward starts from S dL/dlogits (S a public power of two, ``loss_scale``) instead of
dL/dlogits, so every gradient is S times larger in fixed point and keeps log2 S more significant bits
(gradients of a mean loss over a batch are small: 1e-3 is 65 units of 2^-16).  Adam is invariant under this
scale when its epsilon is scaled too (:mod:`mpc_core.nn.grad.adam`), so the scaled gradients are used as
they are; divide by S only to read them.  Magnitudes stay far inside the ring (S |grad| < 2^30).

Head backward (similarity): logits = s u A^T, u = p r, r = rsqrt(|p|^2), p = masked mean of h:
du = dlogits (s A), dp = r (du - u sum(du u)), dh_t = mask_t dp / len.  Cross-entropy backward:
dlogits = S (softmax(logits) - y) / n with softmax = e / sum(e) reusing the forward's e = exp(x - max x)
(one reciprocal on [2/3, C]: relative error 1.53e-4).  Hinge backward (MRPC and RTE's loss):
dlogits = S ([z >= 0] - y sum_c [z_c >= 0]) / n with z = logits - logit_y + margin, from the forward's own
relu comparison bits (exact up to the product by S / n).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mpc_core.nn.backend import Backend, Value
from mpc_core.nn.batch import _pool_mask, insert_prompts
from mpc_core.nn.config import AttentionConfig, EncoderConfig
from mpc_core.nn.grad.layers import BlockTape, Grads, Trainable, block_backward, block_forward, frozen
from mpc_core.nn.grad.ops import GradOps, grad_ops
from mpc_core.nn.heads import SimilarityHead, mean_pool


def encoder_weight(name: str) -> bool:
    """Every encoder tensor is trained (secure full fine-tuning); the public embedding layer is not."""
    return name.startswith("layer.")


# ---------------------------------------------------------------------------------------------- head, loss
@dataclass
class HeadTape:
    unit: Value
    r: Value
    pool: np.ndarray
    hidden_shape: tuple[int, ...]


def similarity_forward(ops: GradOps, head: SimilarityHead, hidden: Value, pool: np.ndarray):
    """:meth:`SimilarityHead.logits` keeping u and r."""
    B = ops.B
    p = mean_pool(hidden, pool)
    r = B.rsqrt(B.square(p).sum(axis=-1, keepdims=True))
    unit = p * r
    return unit @ (head.scale * head.anchors.T), HeadTape(unit, r, np.asarray(pool), tuple(hidden.shape))


def similarity_backward(ops: GradOps, head: SimilarityHead, dlogits: Value, tape: HeadTape) -> Value:
    with ops.op("head_grad"):
        du = dlogits @ (head.scale * head.anchors)
        dp = (du - tape.unit * (du * tape.unit).sum(axis=-1, keepdims=True)) * tape.r
        lengths = np.maximum(tape.pool.sum(axis=-1), 1).astype(np.float64)
        weights = (tape.pool / lengths[:, None])[..., None]  # [N, T, 1] public
        n, _, h = tape.hidden_shape
        return dp.reshape(n, 1, h) * weights


@dataclass
class LossTape:
    e: Value
    s: Value


def cross_entropy_forward(B: Backend, logits: Value, onehot: Value) -> tuple[Value, LossTape]:
    """:func:`mpc_core.nn.loss.cross_entropy` keeping e = exp(x - max x) and s = sum e."""
    m = B.max(logits, axis=-1)
    classes = logits.shape[-1]
    e = B.exp(logits - m)
    s = e.sum(axis=-1)
    lse = B.log(s, lo=1.0, hi=float(max(2, classes))) + m[..., 0]
    true = (logits * onehot).sum(axis=-1)
    return (lse - true).mean(axis=-1), LossTape(e, s)


@dataclass
class HingeTape:
    active: Value  # [z_c >= 0], z_c = x_c - x_y + margin: ring integers on shares


def hinge_forward(ops: GradOps, logits: Value, onehot: Value, margin: float) -> tuple[Value, HingeTape]:
    """:func:`mpc_core.nn.loss.hinge` keeping the relu's comparison bits (the same msb and exact product
    as ``B.relu``: relu(z) = z [z >= 0])."""
    if margin <= 0:
        raise ValueError("the hinge margin must be positive")
    true = (logits * onehot).sum(axis=-1, keepdims=True)
    z = logits - true + margin
    with ops.op("relu"):
        active = ops.indicator(z)
        relu = z * active
    return (relu.sum(axis=-1) - margin).mean(axis=-1), HingeTape(active)


def hinge_backward(ops: GradOps, onehot: Value, tape: HingeTape, loss_scale: float) -> Value:
    """S dL/dlogits of L = mean_n (sum_c relu(x_c - x_y + m) - m), summed over candidates:
    dL/dx_c = ([z_c >= 0] - y_c sum_k [z_k >= 0]) / n (the true class's own term has z_y = m > 0).
    Exact apart from the final product by S / n (no function is approximated; a z_c within the
    logits' fixed-point error of 0 may take the other side, as in the forward)."""
    with ops.op("loss_grad"):
        n = tape.active.shape[-2]
        count = tape.active.sum(axis=-1, keepdims=True)  # ring integers
        d = ops.as_fixed(tape.active) - onehot * count
        return ops.scale(d, loss_scale / n)


def cross_entropy_backward(ops: GradOps, onehot: Value, tape: LossTape, loss_scale: float) -> Value:
    """S dL/dlogits for L = sum over candidates of each candidate's mean loss."""
    B = ops.B
    with ops.op("loss_grad"):
        classes, n = tape.e.shape[-1], tape.e.shape[-2]
        inv = B.reciprocal(tape.s.reshape(*tape.s.shape, 1), lo=2.0 / 3.0, hi=float(max(2, classes)))
        return ops.scale(tape.e * inv - onehot, loss_scale / n)


# ---------------------------------------------------------------------------------------------- whole model
#: Losses with a backward: cross-entropy and the hinge loss of :mod:`mpc_core.nn.loss`.
LOSSES = ("ce", "hinge")


@dataclass
class Tape:
    blocks: list[BlockTape] = field(default_factory=list)
    head: HeadTape | None = None
    loss: LossTape | HingeTape | None = None


@dataclass
class Gradients:
    """Losses [P] and S-scaled gradients (shares on the secure backend)."""

    losses: Value
    prompts: Value | None
    weights: Grads
    loss_scale: float


def _check(head, attn: AttentionConfig, loss: str) -> None:
    if not isinstance(head, SimilarityHead):
        raise ValueError("the backward pass supports the similarity head only (MLM head: not yet)")
    if attn.mode != "softmax":
        raise ValueError(f"the backward pass supports softmax attention only, not {attn.mode!r}")
    if loss not in LOSSES:
        raise ValueError(f"the backward pass supports the losses {LOSSES} only, not {loss!r}")


def loss_and_gradients(
    B: Backend,
    cfg: EncoderConfig,
    head: SimilarityHead,
    examples: Value,
    prompts: Value | None,
    onehot: Value,
    mask: np.ndarray,
    *,
    attn: AttentionConfig | None = None,
    loss: str = "ce",
    loss_scale: float = 2.0**8,
    margin: float = 2.0,
    prompt_grad: bool = True,
    trainable: Trainable = frozen,
    pool_mask: np.ndarray | None = None,
) -> Gradients:
    """Per-candidate losses [P] and S-scaled gradients of their sum.

    ``loss`` is ``"ce"`` or ``"hinge"`` (with ``margin``, as :func:`mpc_core.nn.loss.hinge`);
    ``prompts`` [P, L, H] are added after the first token as in the forward (None: no prompt, P = 1);
    ``prompt_grad`` asks for dL/dprompts, ``trainable`` picks the weights that get dL/dW
    (:func:`encoder_weight` for full fine-tuning).
    """
    attn = attn or AttentionConfig()
    _check(head, attn, loss)
    if not loss_scale > 0:
        raise ValueError("the loss scale must be positive")
    ops = grad_ops(B)
    mask = np.asarray(mask)
    n = examples.shape[0]
    if mask.shape != tuple(examples.shape[:2]):
        raise ValueError(f"mask has shape {mask.shape}, expected {tuple(examples.shape[:2])}")
    p = 1 if prompts is None else prompts.shape[0]
    x = examples if prompts is None else insert_prompts(B, examples, prompts)
    big_mask = np.tile(mask, (p, 1))
    pool = big_mask if pool_mask is None else np.tile(_pool_mask(pool_mask, mask), (p, 1))
    tape = Tape()
    for layer in range(cfg.layers):
        x, block = block_forward(ops, cfg, layer, x, big_mask)
        tape.blocks.append(block)
    logits, tape.head = similarity_forward(ops, head, x, pool)
    logits = logits.reshape(p, n, head.classes)
    if loss == "ce":
        losses, tape.loss = cross_entropy_forward(B, logits, onehot)
        dlogits = cross_entropy_backward(ops, onehot, tape.loss, loss_scale)
    else:
        losses, tape.loss = hinge_forward(ops, logits, onehot, margin)
        dlogits = hinge_backward(ops, onehot, tape.loss, loss_scale)

    grads: Grads = {}
    dlogits = dlogits.reshape(p * n, head.classes)
    dx = similarity_backward(ops, head, dlogits, tape.head)
    need_input = prompts is not None and prompt_grad
    for layer in reversed(range(cfg.layers)):
        need_dx = layer > 0 or need_input
        dx = block_backward(ops, cfg, layer, dx, tape.blocks[layer], grads, trainable, need_dx)
    dprompts = None
    if need_input:
        length = prompts.shape[1]
        dprompts = dx.reshape(p, n, *dx.shape[1:])[:, :, 1 : 1 + length].sum(axis=1)
    return Gradients(losses, dprompts, grads, loss_scale)
