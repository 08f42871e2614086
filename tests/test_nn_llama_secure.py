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
from mpc_core.functions.rmsnorm import (
    DIRECT_MS_DOMAIN,
    RMSNORM_MS_DOMAIN,
    rms_norm,
    rms_norm_domain_error,
    rms_norm_reference,
)
from mpc_core.functions.silu import (
    SILU_CORE_DOMAIN,
    SILU_CORE_TARGET,
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
    core = np.linspace(-SILU_CORE_DOMAIN, SILU_CORE_DOMAIN, 40001)
    assert np.max(np.abs(silu_series(core, count) - silu_reference(core))) <= SILU_CORE_TARGET
    fewer = silu_series(core, count - 1) - silu_reference(core)  # the count is the smallest that does
    assert np.max(np.abs(fewer)) > SILU_CORE_TARGET
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
def rms_rows(width: int) -> np.ndarray:
    """Rows whose mean squares span the default domain and beyond its floor: a row of zeros (padding), a
    row below the floor, tiny and ordinary rows, and LLaMA's massive activations (entries of 2e4-2.7e4, as
    SmolLM2's first token carries)."""
    rng = np.random.default_rng(0)
    x = (
        rng.normal(size=(14, width))
        * (2.0 ** np.concatenate([[-8.0], np.linspace(-6.8, 4, 12), [0]]))[:, None]
    )
    x[3, 7], x[3, 100] = 27202.0, -3000.0
    x[5, 9] = -22160.0
    x[8, 0] = 9000.0
    x[-1] = 0.0
    return x


def rms_bound(x: np.ndarray, w: np.ndarray, eps: float, s_x: int) -> tuple[np.ndarray, np.ndarray]:
    """The floored float64 RMSNorm and the normalised algorithm's stated bound (rmsnorm's docstring)."""
    ref = rms_norm_reference(x, w, eps, RMSNORM_MS_DOMAIN)
    ms = np.maximum(np.mean(x * x, axis=-1, keepdims=True) + eps, RMSNORM_MS_DOMAIN[0])
    rel = 1.6e-5 + 2.0**-20 + 2.0**-s_x / np.sqrt(ms)
    return ref, rel * np.abs(ref) + 2 * ULP * (1 + np.abs(w))


def test_rms_norm_massive_tiny_and_floored_rows(suite: str) -> None:
    """The default (normalised) RMSNorm within its bound from mean squares below the floor up to 1.3e6."""
    width = 576  # SmolLM2's hidden size: s_x = 14
    x = rms_rows(width)
    w = 1 + 0.2 * np.random.default_rng(1).normal(size=width)
    eps = 1e-5
    ms = np.mean(x * x, axis=-1)
    assert ms[0] + eps < RMSNORM_MS_DOMAIN[0] < ms[1] and 1e6 < ms.max() <= RMSNORM_MS_DOMAIN[1]
    got = reveal_secure(suite, lambda t: rms_norm(t, w, eps), x)
    ref, bound = rms_bound(enc(x), w, eps, s_x=14)
    assert np.all(np.abs(got - ref) <= bound)
    assert np.max(np.abs(got - ref)) <= 1e-3
    assert np.all(got[-1] == 0.0)
    # the floor is a real change from the unfloored function on the row below it (and nowhere else)
    xe = enc(x)
    plain = xe / np.sqrt(np.mean(xe * xe, axis=-1, keepdims=True) + eps) * w
    moved = np.max(np.abs(ref - plain), axis=-1) > 1e-3
    assert moved[0] and not moved[1:].any()


def test_rms_norm_direct_with_probabilistic_truncation(suite: str) -> None:
    """Probabilistic truncation runs the direct algorithm on its narrow domain and refuses a wider one."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 64)) * (2.0 ** np.linspace(-4, 5, 10))[:, None]
    w = 1 + 0.2 * rng.normal(size=64)
    eps = 1e-5
    fp = FixedPoint(truncation="probabilistic")
    results = run_parties(
        suite, lambda ctx, t: rms_norm(t, w, eps, ms_domain=DIRECT_MS_DOMAIN).reveal(), x, fp=fp
    )
    ms = np.mean(x * x, axis=-1, keepdims=True)
    ref = x / np.sqrt(ms + eps) * w
    # r: 1.6e-5 (Newton) + 1.5 ulp sqrt(ms) + 0.6 ulp / ms, a few ulp per probabilistic truncation
    rel = 1.6e-5 + 1.5 * ULP * np.sqrt(ms) + 0.6 * ULP / ms
    assert np.all(np.abs(results[0] - ref) <= 2 * rel * np.abs(ref) + 16 * ULP * (1 + np.abs(w)))
    with pytest.raises(ValueError, match="needs exact truncation"):
        run_parties(suite, lambda ctx, t: rms_norm(t, w, eps).reveal(), x, fp=fp)


def test_rms_norm_domain_checks() -> None:
    """Domain ends must be powers of two; rows above the domain are refused in plaintext, by count only."""
    x = np.ones((2, 8))
    with pytest.raises(ValueError, match="powers of two"):
        rms_norm_domain_error(x, 0.0, (0.001, 2.0**10))
    assert rms_norm_domain_error(x * 1e-6, 0.0, RMSNORM_MS_DOMAIN) is None  # below: floored, not refused
    x[1] *= 1e5
    message = rms_norm_domain_error(x, 0.0, RMSNORM_MS_DOMAIN)
    assert message is not None and message.startswith("1 RMSNorm row") and "1e+05" not in message
    with pytest.raises(ValueError, match="above the secure domain"):
        rms_norm_reference(x, None, 0.0, RMSNORM_MS_DOMAIN)


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


@pytest.mark.slow
def test_smollm2_secure_logits_match_plaintext(tmp_path):
    """The real SmolLM2-135M, all 30 layers on 2pc shares (massive activations included), within 1e-2 of
    the float64 run of the same code: the bench's own check (bench/llama_secure_fidelity.py), 2 texts."""
    import json

    from bench.llama_secure_fidelity import main
    from mpc_core.nn.llama_weights import smollm2_gguf

    try:
        smollm2_gguf()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    out = tmp_path / "fidelity.json"
    assert main(["--suite", "2pc", "--texts", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["layers"] == 30 and result["ranges"]["rmsnorm_max_abs_x"][1] > 1e4
    assert result["max_abs_error_secure_vs_float64"] <= TOL
