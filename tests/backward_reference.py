"""torch float64 autograd of the computation :func:`mpc_core.nn.grad.loss_and_gradients` differentiates.

The encoder is Hugging Face's own (``model.encoder`` of the tiny checkpoint reloaded in float64, fed the
embedding layer's output with the prompt added after the first token); the similarity head and the
loss (cross-entropy, or the hinge loss with margin 2) are written out in torch.  Weight gradients come back
under the canonical names (``[in, out]`` linear weights) so they compare directly with ours.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from helpers_models import hf_model

from mpc_core.nn.weights import _canonical_name, _is_transposed


@dataclass
class Reference:
    loss: float
    prompt: np.ndarray | None
    weights: dict[str, np.ndarray]


def torch_loss(model, examples, prompt, mask, anchors, scale, labels, loss="ce", margin=2.0):
    x = torch.tensor(examples)
    if prompt is not None:
        length = prompt.shape[1]
        x = torch.cat([x[:, :1], x[:, 1 : 1 + length] + prompt[0][None], x[:, 1 + length :]], dim=1)
    m = torch.tensor(mask, dtype=torch.float64)
    additive = (1.0 - m)[:, None, None, :] * torch.finfo(torch.float64).min
    hidden = model.encoder(x, attention_mask=additive).last_hidden_state
    pooled = (hidden * m[..., None]).sum(1) / m.sum(1, keepdim=True)
    unit = pooled / pooled.norm(dim=-1, keepdim=True)
    logits = unit @ torch.tensor(scale * anchors.T)
    if loss == "hinge":  # mpc_core.nn.loss.hinge: mean of sum_c relu(x_c - x_y + margin) - margin
        true = logits.gather(1, torch.tensor(labels)[:, None])
        return (torch.relu(logits - true + margin).sum(-1) - margin).mean()
    return torch.nn.functional.cross_entropy(logits, torch.tensor(labels))


def reference_gradients(
    folder, examples, prompt, mask, head, labels, loss_name="ce", margin=2.0
) -> Reference:
    model = hf_model(folder, mlm=False)
    p = None if prompt is None else torch.tensor(prompt, requires_grad=True)
    loss = torch_loss(model, examples, p, mask, head.anchors, head.scale, labels, loss_name, margin)
    loss.backward()
    weights = {}
    for raw, param in model.named_parameters():
        name = _canonical_name(raw)
        if name is None or not name.startswith("layer."):
            continue
        g = param.grad.numpy()
        weights[name] = g.T if _is_transposed(name) else g
    return Reference(loss.item(), None if p is None else p.grad.numpy(), weights)


def relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    """max |got - ref| / max |ref| (the tensor's scale, so near-zero entries do not dominate)."""
    return float(np.abs(np.asarray(got) - ref).max() / max(np.abs(ref).max(), 1e-300))


def assert_gradient_close(got, ref, what: str, rtol: float = 1e-2, atol: float = 1e-5) -> None:
    """max |got - ref| <= rtol max |ref| + atol (atol: for tensors whose exact gradient is 0, key biases)."""
    err = float(np.abs(np.asarray(got) - ref).max())
    bound = rtol * float(np.abs(ref).max()) + atol
    assert err <= bound, f"{what}: error {err:.3g} above {bound:.3g} (max |ref| {np.abs(ref).max():.3g})"
