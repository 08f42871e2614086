"""Public random projections for random-feature attention, drawn deterministically from a shared seed.

The projections are configuration, not secrets: every server (and the plaintext reference) draws the
same matrices from :class:`~mpc_core.nn.config.AttentionConfig` ``seed`` and the layer index, so numpy's
(non-cryptographic) generator is the right tool here.  Nothing secret is ever drawn in this module.
"""

from __future__ import annotations

import numpy as np

from mpc_core.nn.config import AttentionConfig


def _rng(cfg: AttentionConfig, layer: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, layer, 0x5EC9])


def gaussian_features(cfg: AttentionConfig, layer: int, head_dim: int) -> np.ndarray:
    """W in R^{d x m}, N(0, I) columns (the paper's RFA): E[cos(w.(x - y))] = exp(-|x - y|^2 / 2).

    Orthogonal within blocks of d when ``cfg.orthogonal`` (orthogonal random features, Yu et al. 2016):
    each column is still N(0, I), so the estimate stays unbiased, and its variance is lower.
    """
    rng = _rng(cfg, layer)
    if cfg.orthogonal:
        return orthogonal_directions(rng, cfg.features, head_dim).T
    return rng.standard_normal((head_dim, cfg.features))


def orthogonal_directions(rng: np.random.Generator, count: int, dim: int) -> np.ndarray:
    """``count`` Gaussian-marginal vectors in R^dim, orthogonal within blocks of ``dim`` (Performer's ORF).

    Each block is the Q of a QR decomposition of a Gaussian matrix (uniformly random orthonormal rows),
    each row rescaled by an independent chi(dim) norm so that its marginal is N(0, I) again.
    """
    blocks = []
    remaining = count
    while remaining > 0:
        q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
        blocks.append(q.T[: min(dim, remaining)])
        remaining -= dim
    rows = np.concatenate(blocks, axis=0)
    norms = np.linalg.norm(rng.standard_normal((count, dim)), axis=1)
    return rows * norms[:, None]


def favor_features(cfg: AttentionConfig, layer: int, head_dim: int) -> np.ndarray:
    """W in R^{d x m}: m/2 directions (orthogonal if ``cfg.orthogonal``) followed by their negatives.

    Antithetic pairs make the estimator of exp(x.y) = E[exp(w.x - |x|^2/2) exp(w.y - |y|^2/2)] exact on
    odd moments and keep max_w(w.x) >= 0, which the exponent shift relies on.
    """
    rng = _rng(cfg, layer)
    half = cfg.features // 2
    if cfg.orthogonal:
        base = orthogonal_directions(rng, half, head_dim)
    else:
        base = rng.standard_normal((half, head_dim))
    return np.concatenate([base, -base], axis=0).T
