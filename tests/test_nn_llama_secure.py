"""The LLaMA decoder on shares against the float64 plaintext run of the same code, in both suites; the
secure SiLU and RMSNorm against their stated bounds.

Weights go through the model owner's tool (``share_model``) and each participant loads only its own party
file; token embeddings are shared as by the data owner.  Only the final logits are opened.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers_llama import make_tiny_llama

from contract.manifest import load_party_shares
from model_owner.share import share_model
from mpc_core.functions.rmsnorm import RMSNORM_MS_DOMAIN, rms_norm
from mpc_core.functions.silu import (
    SILU_DOMAIN,
    SILU_SERIES_TARGET,
    silu,
    silu_fixed_point_bound,
    silu_harmonics,
    silu_reference,
    silu_series,
)
from mpc_core.nn.decoder import decode, embed_tokens, final_norm
from mpc_core.nn.decoder_backend import PlainDecoderBackend, SecureDecoderBackend
from mpc_core.nn.decoder_cache import candidate_losses, extend, prefill, suffix_tokens
from mpc_core.nn.decoder_head import NextTokenHead
from mpc_core.nn.llama_weights import load_llama_checkpoint
from mpc_core.ring import FixedPoint
from mpc_core.runtime import run_parties

TOL = 1e-2
WORDS = [5, 9, 30, 41]
ULP = 2.0 ** -FixedPoint().frac_bits


def enc(x: np.ndarray) -> np.ndarray:
    fp = FixedPoint()
    return fp.decode(fp.encode(x))


def reveal_secure(suite: str, fn, *inputs: np.ndarray) -> np.ndarray:
    results = run_parties(suite, lambda ctx, *xs: fn(*xs).reveal(), *inputs)
    np.testing.assert_array_equal(results[0], results[1])
    return results[0]


# ------------------------------------------------------------------------------------------------ SiLU
def test_silu_series_in_float64() -> None:
    """The float64 model is within its target on the whole domain, and the domain really ends there."""
    count = len(silu_harmonics())
    x = np.linspace(-SILU_DOMAIN, SILU_DOMAIN, 200001)
    assert np.max(np.abs(silu_series(x, count) - silu_reference(x))) <= SILU_SERIES_TARGET
    outside = np.array([70.0, -70.0])
    assert np.all(np.abs(silu_series(outside, count) - silu_reference(outside)) > 1.0)


def test_silu_bound_on_domain(suite: str) -> None:
    edges = [-SILU_DOMAIN, -33.7, -10.0, -ULP, 0.0, ULP, 1.0, 10.0, 32.0, 52.8, SILU_DOMAIN]
    x = np.concatenate([np.linspace(-SILU_DOMAIN, SILU_DOMAIN, 4001), edges])
    got = reveal_secure(suite, silu, x)
    xe = enc(x)
    count = len(silu_harmonics())
    bound = silu_fixed_point_bound(count)
    assert bound <= 1e-3
    assert np.max(np.abs(got - silu_series(xe, count))) <= bound  # the protocol against its model
    assert np.max(np.abs(got - silu_reference(xe))) <= SILU_SERIES_TARGET + bound  # and against SiLU


# --------------------------------------------------------------------------------------------- RMSNorm
def test_rms_norm_matches_float64(suite: str) -> None:
    rng = np.random.default_rng(0)
    # rows whose mean square spans the domain's inner part: 2^-8 .. 2^10
    scales = 2.0 ** np.linspace(-4, 5, 10)
    x = rng.normal(size=(10, 64)) * scales[:, None]
    w = 1 + 0.2 * rng.normal(size=64)
    eps = 1e-5
    got = reveal_secure(suite, lambda t: rms_norm(t, w, eps), x)
    ms = np.mean(x * x, axis=-1, keepdims=True)
    assert RMSNORM_MS_DOMAIN[0] <= ms.min() and ms.max() <= RMSNORM_MS_DOMAIN[1]
    ref = x / np.sqrt(ms + eps) * w
    # relative error of r: 1.6e-5 + 1.5 ulp sqrt(ms) + 0.6 ulp / ms; then a few ulp (1 + |w|)
    rel = 1.6e-5 + 1.5 * ULP * np.sqrt(ms) + 0.6 * ULP / ms
    assert np.all(np.abs(got - ref) <= rel * np.abs(ref) + 4 * ULP * (1 + np.abs(w)))


# ------------------------------------------------------------------------------------------ the decoder
class Tiny:
    """A tiny LLaMA shared for one suite, and a batch of 3 right-padded sequences of up to 9 tokens."""

    def __init__(self, root, suite: str, tie: bool) -> None:
        self.suite = suite
        ckpt = make_tiny_llama(root / "ckpt", seed=3, tie=tie)
        self.shared = root / "shared"
        share_model(ckpt, suite, self.shared)
        self.cfg, self.weights = load_llama_checkpoint(ckpt)
        rng = np.random.default_rng(4)
        ids = rng.integers(3, self.cfg.vocab, size=(3, 9))
        self.mask = np.ones((3, 9), dtype=np.int64)
        self.mask[1, 6:] = 0
        self.mask[2, 4:] = 0
        self.x = embed_tokens(self.weights["emb.word"], ids)
        self.answer = self.mask.sum(axis=1) - 1
        self.head = (
            NextTokenHead.from_embeddings(WORDS, self.weights["emb.word"]) if tie else NextTokenHead(WORDS)
        )

    def logits(self, B, x):
        return self.head.logits(B, self.cfg, decode(B, self.cfg, x, self.mask), self.answer)

    def secure(self, fn):
        def program(ctx, x):
            backend = SecureDecoderBackend(ctx, load_party_shares(ctx, self.shared))
            return fn(backend, x).reveal()

        results = run_parties(self.suite, program, self.x)
        if self.suite == "2pc":
            assert not np.any(results[2]), "the dealer must never receive an opened value"
        np.testing.assert_array_equal(results[0], results[1])
        return results[0]


@pytest.fixture(scope="module", params=[(s, t) for s in ("2pc", "3pc") for t in (True, False)], ids=str)
def tiny(request, tmp_path_factory) -> Tiny:
    suite, tie = request.param
    return Tiny(tmp_path_factory.mktemp(f"llama-{suite}-{tie}"), suite, tie)


def test_secure_logits_match_plaintext(tiny: Tiny):
    ref = tiny.logits(PlainDecoderBackend(tiny.weights), tiny.x)
    out = tiny.secure(tiny.logits)
    assert out.shape == ref.shape == (3, len(WORDS))
    assert np.abs(ref).max() > 0.5  # the comparison is not between near-zero values
    assert np.abs(out - ref).max() <= TOL


def test_secure_hidden_states_match_plaintext(tiny: Tiny):
    """Every real position of the last hidden state, not only the answer rows."""

    def hidden(B, x):
        return final_norm(B, tiny.cfg, decode(B, tiny.cfg, x, tiny.mask))

    ref = hidden(PlainDecoderBackend(tiny.weights), tiny.x)
    out = tiny.secure(hidden)
    real = tiny.mask.astype(bool)
    assert np.abs(out - ref)[real].max() <= TOL


def test_secure_suffix_cache_matches_plaintext(tiny: Tiny):
    """Examples' keys and values kept as shares (prefill once), two candidates' prompt + template tokens
    run against them (extend): the verbalizer logits match the float64 run of the same code."""
    prompts = np.random.default_rng(6).normal(scale=0.3, size=(2, 3, tiny.cfg.hidden))
    template = embed_tokens(tiny.weights["emb.word"], np.array([7, 8]))
    rows = 2 * len(tiny.x)

    def cached(B, x, p):
        cache = prefill(B, tiny.cfg, x, tiny.mask)
        out = extend(B, tiny.cfg, cache, suffix_tokens(B, p, template))
        return tiny.head.logits(B, tiny.cfg, out, np.full(rows, out.shape[1] - 1))

    ref = cached(PlainDecoderBackend(tiny.weights), tiny.x, prompts)

    def program(ctx, x, p):
        return cached(SecureDecoderBackend(ctx, load_party_shares(ctx, tiny.shared)), x, p).reveal()

    results = run_parties(tiny.suite, program, tiny.x, prompts)
    np.testing.assert_array_equal(results[0], results[1])
    assert results[0].shape == ref.shape == (rows, len(WORDS))
    assert np.abs(ref).max() > 0.3
    assert np.abs(results[0] - ref).max() <= TOL


@pytest.mark.parametrize("loss", ["ce", "hinge"])
def test_secure_suffix_losses_match_plaintext(tiny: Tiny, loss: str):
    """One loss per candidate from the cached examples, labels shared too: only the losses are opened."""
    prompts = np.random.default_rng(7).normal(scale=0.3, size=(2, 3, tiny.cfg.hidden))
    template = embed_tokens(tiny.weights["emb.word"], np.array([7, 8]))
    onehot = np.eye(len(WORDS))[[0, 3, 1]]

    def losses(B, x, p, y):
        cache = prefill(B, tiny.cfg, x, tiny.mask)
        return candidate_losses(B, tiny.cfg, tiny.head, cache, p, template, y, loss=loss)

    ref = losses(PlainDecoderBackend(tiny.weights), tiny.x, prompts, onehot)

    def program(ctx, x, p, y):
        return losses(SecureDecoderBackend(ctx, load_party_shares(ctx, tiny.shared)), x, p, y).reveal()

    results = run_parties(tiny.suite, program, tiny.x, prompts, onehot)
    assert results[0].shape == ref.shape == (2,)
    assert np.abs(results[0] - ref).max() <= TOL
