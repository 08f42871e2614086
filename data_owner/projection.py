"""The random projection of Black-Box Tuning: prompt p = A z (+ p0) from a point z of the intrinsic space.

A is [L*H, d] with i.i.d. Normal(0, s^2) entries, s = alpha * std_ref / (sqrt(d) * sigma0) (BBT, Sun et al.
2022, later code), so that for z ~ N(0, sigma0^2 I) every prompt entry has standard deviation alpha * std_ref:
the prompt lives on the scale of the embeddings it is added to.  ``std_ref`` is the std of the public word
embeddings (BBT) or of the embedding-layer output the prompt is actually added to (after LayerNorm, about
9x larger for all-MiniLM-L6-v2).  A is drawn from its own seeded generator and rebuilt on resume, never
stored.
"""

from __future__ import annotations

import numpy as np


class Projection:
    """p(z) = (A z).reshape(L, H) + p0 for z in R^d."""

    def __init__(
        self,
        prompt_length: int,
        hidden: int,
        intrinsic_dim: int,
        std: float,
        seed: int,
        p0: np.ndarray | None = None,
    ) -> None:
        self.L, self.H, self.d = prompt_length, hidden, intrinsic_dim
        self.std = float(std)
        rng = np.random.default_rng([seed, 0xA])  # independent of the CMA-ES stream
        self.A = rng.normal(0.0, self.std, size=(prompt_length * hidden, intrinsic_dim))
        self.p0 = np.zeros((prompt_length, hidden)) if p0 is None else np.asarray(p0, dtype=np.float64)
        if self.p0.shape != (prompt_length, hidden):
            raise ValueError(f"p0 must be [{prompt_length}, {hidden}], got {self.p0.shape}")

    @staticmethod
    def entry_std(alpha: float, std_ref: float, intrinsic_dim: int, sigma0: float) -> float:
        """BBT's s = alpha * std_ref / (sqrt(d) * sigma0)."""
        return alpha * std_ref / (np.sqrt(intrinsic_dim) * sigma0)

    def __call__(self, z: np.ndarray) -> np.ndarray:
        """Prompts [k, L, H] for points z [k, d] (or one prompt [L, H] for z [d])."""
        z = np.asarray(z, dtype=np.float64)
        if z.ndim == 1:
            return (self.A @ z).reshape(self.L, self.H) + self.p0
        return (z @ self.A.T).reshape(len(z), self.L, self.H) + self.p0
