"""Random-feature attention: the well-posed form's estimate and error bound, and the domain guards.

Plaintext (float64) properties of :mod:`mpc_core.nn.attention`; the secure-vs-plaintext comparisons are
in tests/test_attention_secure.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from mpc_core.nn.attention import (
    NORM_DOMAIN,
    favor_attention,
    normalized_query_key,
    rfa_attention,
    softmax_attention,
)
from mpc_core.nn.backend import PlainBackend
from mpc_core.nn.config import AttentionConfig
from mpc_core.nn.features import favor_features, gaussian_features


def _qkv(rng, n=2, heads=2, t=12, d=8, scale=1.0):
    q, k, v = (rng.normal(scale=scale, size=(n, heads, t, d)) for _ in range(3))
    mask = np.ones((n, t), dtype=np.int64)
    mask[1, 7:] = 0
    return q, k, v, mask


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _centred(k, mask):
    keep = mask[:, None, :, None]
    return k - (k * keep).sum(-2, keepdims=True) / keep.sum(-2, keepdims=True)


def test_normalized_query_key_is_s_times_the_unit_vectors():
    rng = np.random.default_rng(1)
    q, k, _, mask = _qkv(rng)
    B = PlainBackend({"layer.0.attn.scale": np.array([0.7, 1.9])})
    x, y = normalized_query_key(B, AttentionConfig(normalize=True), 0, q, k, mask)
    s = np.array([0.7, 1.9])[None, :, None, None]
    np.testing.assert_allclose(x, s * _unit(q), atol=1e-12)
    np.testing.assert_allclose(y, s * _unit(_centred(k, mask)), atol=1e-12)
    # without the tensor: the public scale
    x2, _ = normalized_query_key(PlainBackend({}), AttentionConfig(normalize=True, scale=1.5), 0, q, k, mask)
    np.testing.assert_allclose(x2, 1.5 * _unit(q), atol=1e-12)


def test_normalization_clamps_the_squared_norm_to_its_domain_in_plaintext_too():
    """A (near) zero query is normalised as if |q|^2 / d were the domain's lower edge: the same guard."""
    rng = np.random.default_rng(2)
    q, k, _, mask = _qkv(rng)
    q[0, 0, 0] = 0.0
    x, _ = normalized_query_key(PlainBackend({}), AttentionConfig(normalize=True, scale=1.0), 0, q, k, mask)
    assert np.all(np.isfinite(x))
    assert np.all(x[0, 0, 0] == 0.0)
    lo, _ = NORM_DOMAIN
    tiny = q.copy()
    tiny[0, 0, 1] = 1e-6
    cfg = AttentionConfig(normalize=True, scale=1.0)
    x, _ = normalized_query_key(PlainBackend({}), cfg, 0, tiny, k, mask)
    expected = tiny[0, 0, 1] / math.sqrt(lo) / math.sqrt(tiny.shape[-1])
    np.testing.assert_allclose(x[0, 0, 1], expected, rtol=1e-12)


@pytest.mark.parametrize("mode", ["rfa", "favor"])
def test_well_posed_form_is_the_textbook_estimator_of_the_normalised_kernel(mode):
    """Ours equals phi(x).phi(y) attention with x = s q/|q|, y = s k_c/|k_c|, exactly (no guard active)."""
    rng = np.random.default_rng(3)
    q, k, v, mask = _qkv(rng)
    s, m = 1.2, 32
    cfg = AttentionConfig(
        mode=mode, features=m, seed=4, normalize=True, scale=s, relative_floor=1e-300, denominator_floor=1e-99
    )
    d = q.shape[-1]
    fn = rfa_attention if mode == "rfa" else favor_attention
    ours = fn(PlainBackend({}), cfg, 0, q, k, v, mask)
    w = gaussian_features(cfg, 0, d) if mode == "rfa" else favor_features(cfg, 0, d)

    def phi(x):
        u = x @ w
        if mode == "rfa":
            return np.concatenate([np.cos(u), np.sin(u)], -1) / math.sqrt(m)
        return np.exp(u - s * s / 2) / math.sqrt(m)

    x, y = s * _unit(q), s * _unit(_centred(k, mask))
    for i in range(2):
        real = mask[i] == 1
        pk = phi(y[i][:, real])
        num = phi(x[i]) @ (pk.swapaxes(-1, -2) @ v[i][:, real])
        den = phi(x[i]) @ pk.sum(-2)[..., None]
        np.testing.assert_allclose(ours[i], num / den, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("mode", ["rfa", "favor"])
def test_well_posed_form_approaches_softmax_of_the_scaled_cosines(mode):
    """With many features the estimate tends to softmax(s^2 cos(q, k_c)) v (unbiased kernel estimate)."""
    rng = np.random.default_rng(5)
    q, k, v, mask = _qkv(rng)
    s = 1.0
    exact = softmax_attention(
        PlainBackend({}), _unit(q) * s, _unit(_centred(k, mask)) * s * math.sqrt(q.shape[-1]), v, mask
    )
    errors = []
    for m in (16, 4096):
        cfg = AttentionConfig(mode=mode, features=m, seed=6, normalize=True, scale=s, relative_floor=1e-6)
        fn = rfa_attention if mode == "rfa" else favor_attention
        errors.append(np.abs(fn(PlainBackend({}), cfg, 0, q, k, v, mask) - exact).max())
    assert errors[1] < 0.05
    assert errors[1] < errors[0]


def test_hoeffding_bound_on_the_mean_kernel_estimate_holds():
    """|D_hat / n - D / n| <= sqrt(2 ln(2/delta) / m) for at least 1 - delta of the rows (stated bound)."""
    rng = np.random.default_rng(7)
    n_keys, d, s, delta = 16, 16, 1.0, 0.05
    for m in (16, 64):
        bound = math.sqrt(2 * math.log(2 / delta) / m)
        misses = total = 0
        for seed in range(40):
            cfg = AttentionConfig(mode="rfa", features=m, seed=seed, orthogonal=False)
            w = gaussian_features(cfg, 0, d)
            x = s * _unit(rng.normal(size=(8, d)))
            y = s * _unit(rng.normal(size=(n_keys, d)))
            est = np.cos((x @ w)[:, None, :] - (y @ w)[None, :, :]).mean(-1).mean(-1)
            exact = np.exp(-((x[:, None] - y[None]) ** 2).sum(-1) / 2).mean(-1)
            misses += int(np.sum(np.abs(est - exact) > bound))
            total += len(x)
        assert misses <= delta * total


def test_well_posed_denominators_stay_positive_where_the_bound_says_so():
    """e^(-2 s^2) > sqrt(2 ln(2/delta)/m): no denominator reaches the guard, over many draws."""
    rng = np.random.default_rng(8)
    m = 256
    s = math.sqrt(-0.5 * math.log(math.sqrt(2 * math.log(2 / 1e-3) / m))) * 0.95
    floored = 0
    for seed in range(10):
        q, k, v, mask = _qkv(rng, t=16, d=16)
        cfg = AttentionConfig(mode="rfa", features=m, seed=seed, normalize=True, scale=s, relative_floor=1e-9)

        class Count(PlainBackend):
            def floor_at(self, x, floor):
                nonlocal floored
                floored += int(np.sum(x <= 0))
                return super().floor_at(x, floor)

        rfa_attention(Count({}), cfg, 0, q, k, v, mask)
    assert floored == 0


@pytest.mark.parametrize("normalize", [False, True])
def test_rfa_guard_bounds_every_output_by_max_v_over_the_floor(normalize):
    """Whatever the estimate (here the paper's raw form on large q, k: pure noise), |out| <= max|v| / r."""
    rng = np.random.default_rng(9)
    q, k, v, mask = _qkv(rng, scale=3.0)
    r = 2.0**-5
    cfg = AttentionConfig(mode="rfa", features=16, seed=1, relative_floor=r, normalize=normalize, scale=3.0)
    out = rfa_attention(PlainBackend({}), cfg, 0, q, k, v, mask)
    for i in range(2):
        vmax = np.abs(v[i][:, mask[i] == 1]).max()
        assert np.abs(out[i]).max() <= vmax / r * (1 + 1e-12)


@pytest.mark.parametrize("normalize", [False, True])
def test_favor_output_is_a_convex_combination_of_the_values(normalize):
    rng = np.random.default_rng(10)
    q, k, v, mask = _qkv(rng, scale=3.0)
    cfg = AttentionConfig(mode="favor", features=16, seed=2, normalize=normalize, scale=2.5)
    out = favor_attention(PlainBackend({}), cfg, 0, q, k, v, mask)
    for i in range(2):
        real = v[i][:, mask[i] == 1]
        assert np.all(out[i] <= real.max(axis=-2, keepdims=True) + 1e-9)
        assert np.all(out[i] >= real.min(axis=-2, keepdims=True) - 1e-9)


def test_clamp_is_the_same_function_in_both_backends():
    from mpc_core.nn.backend import SecureBackend
    from mpc_core.runtime import run_parties
    from mpc_core.tensor import SharedTensor

    x = np.array([-5.0, 0.001, 0.5, 3.0, 700.0])
    plain = PlainBackend({}).clamp(x, 0.01, 100.0)
    np.testing.assert_allclose(plain, [0.01, 0.01, 0.5, 3.0, 100.0])

    def program(ctx, xs):
        return SecureBackend(ctx, {}).clamp(xs, 0.01, 100.0).reveal()

    for suite in ("2pc", "3pc"):
        got = run_parties(suite, program, x)[0]
        np.testing.assert_allclose(got, plain, atol=2e-4)
    assert SharedTensor  # imported for the type of the shared input


def test_precise_reciprocal_keeps_small_results_accurate():
    """num / x for large x (a long row's denominator): the precise reciprocal keeps the quotient's relative
    error near the iteration's 1.5e-4, where 1/x rounded to 2^-16 would be off by up to 2^-16 x."""
    from mpc_core import functions
    from mpc_core.runtime import run_parties

    x = np.array([0.3, 7.0, 900.0, 4000.0])

    def program(ctx, xs, precise):
        y = functions.reciprocal(xs, lo=2.0**-4, hi=2.0**12, precise=precise)
        return ((xs * 2.5) * y).reveal()  # 2.5 x / x: the next product brings y back to f bits

    for suite in ("2pc", "3pc"):
        coarse = run_parties(suite, lambda c, xs: program(c, xs, False), x)[0]
        fine = run_parties(suite, lambda c, xs: program(c, xs, True), x)[0]
        assert np.abs(fine / 2.5 - 1).max() < 5e-4
        assert np.abs(coarse / 2.5 - 1)[-1] > 5 * np.abs(fine / 2.5 - 1)[-1]


def test_the_rfa_speed_target_counts_only_where_its_fidelity_holds():
    from bench.targets import _rfa_saving

    attention = [
        {"attention": "softmax", "seq_len": 512, "seconds": 10.0, "bytes": 1000},
        {"attention": "rfa", "seq_len": 512, "seconds": 1.0, "bytes": 100},
    ]
    fast = {"attention": attention}
    assert _rfa_saving(fast)[1] is False  # fast, but fidelity never measured
    forward_bad = [{"attention": "rfa", "max_abs_err": 3e9}]
    forward_ok = [{"attention": "rfa", "max_abs_err": 2e-3}]
    holds = [{"mode": "rfa", "holds": True}]
    assert _rfa_saving({**fast, "forward": forward_bad, "adaptation": holds})[1] is False
    assert _rfa_saving({**fast, "forward": forward_ok})[1] is False
    poor = [{"mode": "rfa", "holds": False}]
    assert _rfa_saving({**fast, "forward": forward_ok, "adaptation": poor})[1] is False
    text, met = _rfa_saving({**fast, "forward": forward_ok, "adaptation": holds})
    assert met is True and "10.0x fewer bytes" in text
