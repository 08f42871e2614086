"""Gradients of the whole tuning computation against torch float64 autograd, plaintext and on shares.

The reference is Hugging Face's encoder of the same tiny checkpoint (tests/backward_reference.py).  Every
gradient tensor must be within 1e-2 of the reference relative to the tensor's largest entry (plus 1e-5
absolute for tensors whose exact gradient is 0: the key biases, which softmax ignores).  The plaintext
backend is exact (1e-9); on shares the measured errors are about 1e-3.
"""

from __future__ import annotations

import numpy as np
import pytest
from backward_reference import assert_gradient_close, reference_gradients, relative_error
from helpers_models import make_tiny_model, random_batch

from contract.embedding import PublicEmbeddings
from contract.manifest import load_party_shares
from model_owner.share import share_model
from mpc_core.nn.backend import PlainBackend, SecureBackend
from mpc_core.nn.batch import candidate_losses
from mpc_core.nn.config import AttentionConfig
from mpc_core.nn.encoder import encode
from mpc_core.nn.grad import encoder_weight, loss_and_gradients
from mpc_core.nn.grad.layers import block_forward
from mpc_core.nn.grad.ops import grad_ops
from mpc_core.nn.heads import SimilarityHead
from mpc_core.nn.weights import load_checkpoint
from mpc_core.runtime import run_parties

SPECIAL = {"bert": (2, 3), "roberta": (0, 2)}
LOSS_SCALE = 2.0**8


class Case:
    """A tiny encoder without MLM head, a batch of 3 examples, a 3-token prompt and a 2-class head."""

    def __init__(self, root, arch: str) -> None:
        self.arch = arch
        self.folder = make_tiny_model(root / "ckpt", arch, mlm=False, seed=3)
        self.cfg, self.weights = load_checkpoint(self.folder)
        first, last = SPECIAL[arch]
        ids, self.mask = random_batch(
            np.random.default_rng(4), 3, 10, self.cfg.vocab, self.cfg.pad_token_id, first, last
        )
        self.examples = PublicEmbeddings.from_tensors(self.cfg, self.weights)(ids)
        self.prompt = np.random.default_rng(5).normal(scale=0.3, size=(1, 3, self.cfg.hidden))
        self.head = SimilarityHead(np.random.default_rng(6).normal(size=(2, self.cfg.hidden)), scale=20.0)
        self.labels = np.array([0, 1, 1])
        self.onehot = np.eye(2)[self.labels]
        self.shared: dict[str, object] = {}

    def share(self, suite: str):
        folder = self.folder.parent / f"shared-{suite}"
        if suite not in self.shared:
            share_model(self.folder, suite, folder)
            self.shared[suite] = folder
        return folder

    def gradients(self, B, examples, prompt, onehot, sft: bool, loss: str = "ce", margin: float = 2.0):
        return loss_and_gradients(
            B,
            self.cfg,
            self.head,
            examples,
            prompt,
            onehot,
            self.mask,
            loss=loss,
            margin=margin,
            loss_scale=LOSS_SCALE,
            trainable=encoder_weight if sft else (lambda name: False),
        )

    def secure(self, suite: str, sft: bool, loss: str = "ce", margin: float = 2.0):
        """(loss, prompt gradient, weight gradients) opened, unscaled; checks the dealer learns nothing."""
        folder = self.share(suite)

        def program(ctx, e, p, y):
            g = self.gradients(SecureBackend(ctx, load_party_shares(ctx, folder)), e, p, y, sft, loss, margin)
            weights = {k: v.reveal() for k, v in g.weights.items()}
            return g.losses.reveal(), g.prompts.reveal(), weights

        results = run_parties(suite, program, self.examples, self.prompt, self.onehot)
        if suite == "2pc":
            assert not np.any(results[2][1]), "the dealer must never receive an opened value"
        loss, dp, dw = results[0]
        return loss, dp / LOSS_SCALE, {k: v / LOSS_SCALE for k, v in dw.items()}


@pytest.fixture(scope="module", params=["bert", "roberta"])
def case(request, tmp_path_factory) -> Case:
    return Case(tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Case:
    return Case(tmp_path_factory.mktemp("bert-secure"), "bert")


def test_tape_forward_equals_the_forward(case: Case):
    """The backward's forward computes what mpc_core.nn computes (the forward itself is untouched)."""
    B = PlainBackend(case.weights)
    ops = grad_ops(B)
    x = case.examples
    for layer in range(case.cfg.layers):
        x, _ = block_forward(ops, case.cfg, layer, x, case.mask)
    np.testing.assert_allclose(
        x, encode(B, case.cfg, AttentionConfig(), case.examples, case.mask), atol=1e-12
    )
    g = case.gradients(B, case.examples, case.prompt, case.onehot, sft=False)
    losses = candidate_losses(
        B, case.cfg, AttentionConfig(), case.head, case.examples, case.prompt, case.onehot, case.mask
    )
    np.testing.assert_allclose(g.losses, losses, atol=1e-12)


def test_plain_gradients_equal_torch_autograd(case: Case):
    ref = reference_gradients(case.folder, case.examples, case.prompt, case.mask, case.head, case.labels)
    g = case.gradients(PlainBackend(case.weights), case.examples, case.prompt, case.onehot, sft=True)
    assert g.losses[0] == pytest.approx(ref.loss, abs=1e-12)
    assert np.abs(ref.prompt).max() > 1e-3  # a gradient worth comparing
    assert relative_error(g.prompts / LOSS_SCALE, ref.prompt) <= 1e-9
    assert set(g.weights) == set(ref.weights) == {n for n in case.weights if n.startswith("layer.")}
    for name, value in ref.weights.items():
        assert_gradient_close(g.weights[name] / LOSS_SCALE, value, name, rtol=1e-9, atol=1e-15)


def test_prompt_tuning_computes_no_weight_gradient(case: Case):
    g = case.gradients(PlainBackend(case.weights), case.examples, case.prompt, case.onehot, sft=False)
    assert g.weights == {}
    assert g.prompts.shape == case.prompt.shape


@pytest.mark.parametrize("suite", ["2pc", "3pc"])
def test_secure_prompt_and_weight_gradients_match_torch(case: Case, suite: str):
    ref = reference_gradients(case.folder, case.examples, case.prompt, case.mask, case.head, case.labels)
    loss, dp, dw = case.secure(suite, sft=True)
    assert abs(loss[0] - ref.loss) <= 1e-2
    assert_gradient_close(dp, ref.prompt, "prompt")
    assert set(dw) == set(ref.weights)
    for name, value in ref.weights.items():
        assert_gradient_close(dw[name], value, name)


def test_unsupported_heads_modes_and_losses_are_refused(bert: Case):
    from mpc_core.nn.heads import MLMHead

    B = PlainBackend(bert.weights)
    args = (bert.cfg, bert.head, bert.examples, bert.prompt, bert.onehot, bert.mask)
    with pytest.raises(ValueError, match="similarity head"):
        loss_and_gradients(B, bert.cfg, MLMHead([5, 6]), *args[2:])
    with pytest.raises(ValueError, match="softmax attention"):
        loss_and_gradients(B, *args, attn=AttentionConfig(mode="rfa"))
    with pytest.raises(ValueError, match="supports the losses"):
        loss_and_gradients(B, *args, loss="mse")
    with pytest.raises(ValueError, match="margin"):
        loss_and_gradients(B, *args, loss="hinge", margin=0.0)
    with pytest.raises(ValueError, match="loss scale"):
        loss_and_gradients(B, *args, loss_scale=0.0)


# ---------------------------------------------------------------------------------------------- hinge loss
#: The hinge tests' margin: on these random tiny models the wrong class's logit is 0.55 below to 1.5 above
#: the true one, so the tasks' margin 2 (or 1) puts every class inside it; 0.3 gives both sides of the kink.
MARGIN = 0.3


def _hinge_margins(case: Case) -> np.ndarray:
    """z_c = x_c - x_y + MARGIN of the float64 forward (which classes the hinge counts), after checking
    that the tape's hinge loss is :func:`mpc_core.nn.loss.hinge` of the forward's logits."""
    from mpc_core.nn.batch import candidate_logits
    from mpc_core.nn.loss import hinge

    B = PlainBackend(case.weights)
    logits = candidate_logits(
        B, case.cfg, AttentionConfig(), case.head, case.examples, case.prompt, case.mask
    )
    g = case.gradients(B, case.examples, case.prompt, case.onehot, False, "hinge", MARGIN)
    np.testing.assert_allclose(g.losses, hinge(B, logits, case.onehot, MARGIN), atol=1e-12)
    logits = logits[0]
    return logits - (logits * case.onehot).sum(-1, keepdims=True) + MARGIN


def test_plain_hinge_gradients_equal_torch_autograd(case: Case):
    z = _hinge_margins(case)
    off = z[case.onehot == 0]
    assert np.any(off > 0) and np.any(off < 0)  # some wrong classes inside the margin, some outside
    ref = reference_gradients(
        case.folder, case.examples, case.prompt, case.mask, case.head, case.labels, "hinge", MARGIN
    )
    g = case.gradients(
        PlainBackend(case.weights), case.examples, case.prompt, case.onehot, True, "hinge", MARGIN
    )
    assert g.losses[0] == pytest.approx(ref.loss, abs=1e-12)
    assert np.abs(ref.prompt).max() > 1e-3
    assert relative_error(g.prompts / LOSS_SCALE, ref.prompt) <= 1e-9
    for name, value in ref.weights.items():
        assert_gradient_close(g.weights[name] / LOSS_SCALE, value, name, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("suite", ["2pc", "3pc"])
def test_secure_hinge_gradients_match_torch(bert: Case, suite: str):
    """Within 1e-2 of torch (as cross-entropy); every z_c is at least 0.05 from the hinge's kink, far
    beyond the logits' fixed-point error, so the secure comparison bits are the float64 ones."""
    z = _hinge_margins(bert)
    assert np.abs(z).min() >= 0.05
    ref = reference_gradients(
        bert.folder, bert.examples, bert.prompt, bert.mask, bert.head, bert.labels, "hinge", MARGIN
    )
    loss, dp, dw = bert.secure(suite, sft=True, loss="hinge", margin=MARGIN)
    assert abs(loss[0] - ref.loss) <= 1e-2
    assert_gradient_close(dp, ref.prompt, "prompt")
    for name, value in ref.weights.items():
        assert_gradient_close(dw[name], value, name)
