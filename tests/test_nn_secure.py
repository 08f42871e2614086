"""The secure forward on shares against the float64 plaintext run of the same computation, in both suites.

Weights go through the model owner's tool (``share_model``) and each participant loads only its own
party file; inputs are shared as by the data owner.  Only the final logits or losses are opened.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers_models import make_tiny_model, random_batch

from contract.embedding import PublicEmbeddings
from contract.manifest import load_party_shares
from model_owner.share import share_model
from mpc_core.nn.backend import PlainBackend, SecureBackend
from mpc_core.nn.batch import candidate_logits, candidate_losses
from mpc_core.nn.config import AttentionConfig
from mpc_core.nn.heads import MLMHead, SimilarityHead
from mpc_core.nn.weights import load_checkpoint
from mpc_core.runtime import run_parties

SUITES = ["2pc", "3pc"]
SPECIAL = {"bert": (2, 3), "roberta": (0, 2)}
MODES = [
    AttentionConfig(mode="softmax"),
    AttentionConfig(mode="rfa", features=64, seed=1),
    AttentionConfig(mode="favor", features=64, seed=2),
]
TOL = 1e-2


class Tiny:
    """A tiny checkpoint shared for one suite, plus a batch: 3 examples, 2 candidate prompts of 3 tokens."""

    def __init__(self, root, arch: str, suite: str) -> None:
        self.arch, self.suite = arch, suite
        ckpt = make_tiny_model(root / "ckpt", arch, mlm=True, seed=3)
        self.shared = root / "shared"
        share_model(ckpt, suite, self.shared)
        self.cfg, self.weights = load_checkpoint(ckpt)
        first, last = SPECIAL[arch]
        ids, self.mask = random_batch(
            np.random.default_rng(4), 3, 10, self.cfg.vocab, self.cfg.pad_token_id, first, last
        )
        self.examples = PublicEmbeddings.from_tensors(self.cfg, self.weights)(ids)
        self.prompts = np.random.default_rng(5).normal(scale=0.3, size=(2, 3, self.cfg.hidden))
        self.positions = np.array([5, 4, 6])

    def secure(self, fn, *inputs):
        """Run fn(backend, *shared_inputs) on every participant; party 0's opened result."""

        def program(ctx, *shared):
            backend = SecureBackend(ctx, load_party_shares(ctx, self.shared))
            return fn(backend, *shared).reveal()

        results = run_parties(self.suite, program, *inputs)
        if self.suite == "2pc":
            assert not np.any(results[2]), "the dealer must never receive an opened value"
        return results[0]


@pytest.fixture(scope="module", params=[(a, s) for a in ("bert", "roberta") for s in SUITES], ids=str)
def tiny(request, tmp_path_factory) -> Tiny:
    arch, suite = request.param
    return Tiny(tmp_path_factory.mktemp(f"{arch}-{suite}"), arch, suite)


@pytest.mark.parametrize("attn", MODES, ids=lambda a: a.mode)
def test_mlm_logits_match_plaintext(tiny: Tiny, attn: AttentionConfig):
    head = MLMHead([7, 9, 20])
    ref = candidate_logits(
        PlainBackend(tiny.weights),
        tiny.cfg,
        attn,
        head,
        tiny.examples,
        tiny.prompts,
        tiny.mask,
        tiny.positions,
    )
    out = tiny.secure(
        lambda B, E, P: candidate_logits(B, tiny.cfg, attn, head, E, P, tiny.mask, tiny.positions),
        tiny.examples,
        tiny.prompts,
    )
    assert out.shape == ref.shape == (2, 3, 3)
    assert np.abs(ref).max() > 0.1  # the comparison is not between near-zero values
    assert np.abs(out - ref).max() <= TOL


@pytest.mark.parametrize("loss", ["ce", "hinge"])
def test_losses_match_plaintext(tiny: Tiny, loss: str):
    head = MLMHead([7, 9])
    onehot = np.eye(2)[[0, 1, 1]]
    attn = AttentionConfig()
    ref = candidate_losses(
        PlainBackend(tiny.weights),
        tiny.cfg,
        attn,
        head,
        tiny.examples,
        tiny.prompts,
        onehot,
        tiny.mask,
        tiny.positions,
        loss=loss,
    )
    out = tiny.secure(
        lambda B, E, P, Y: candidate_losses(
            B, tiny.cfg, attn, head, E, P, Y, tiny.mask, tiny.positions, loss=loss
        ),
        tiny.examples,
        tiny.prompts,
        onehot,
    )
    assert out.shape == (2,)
    assert np.abs(out - ref).max() <= TOL


def test_similarity_head_matches_plaintext(tiny: Tiny):
    head = SimilarityHead(np.random.default_rng(6).normal(size=(2, tiny.cfg.hidden)), scale=20.0)
    attn = AttentionConfig(mode="favor", features=64)
    ref = candidate_logits(
        PlainBackend(tiny.weights), tiny.cfg, attn, head, tiny.examples, tiny.prompts, tiny.mask
    )
    out = tiny.secure(
        lambda B, E, P: candidate_logits(B, tiny.cfg, attn, head, E, P, tiny.mask),
        tiny.examples,
        tiny.prompts,
    )
    assert np.abs(out - ref).max() <= TOL


def test_share_folder_of_another_suite_is_refused(tiny: Tiny):
    other = "3pc" if tiny.suite == "2pc" else "2pc"

    def program(ctx, x):
        load_party_shares(ctx, tiny.shared)

    with pytest.raises(ValueError, match=f"shared for suite {tiny.suite}"):
        run_parties(other, program, np.zeros(2))
