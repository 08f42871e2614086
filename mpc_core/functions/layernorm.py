"""LayerNorm over the last axis: (x - mean) rsqrt(var + eps) * weight + bias.

Maths: mu = sum(x)/H, d = x - mu, var = sum(d^2)/H (biased, as torch), y = d rsqrt(var + eps) w + b.
weight and bias may be public float arrays or SharedTensors (shape (H,), broadcast over rows).

Domain: var + eps in LAYERNORM_VAR_DOMAIN = [2^-5, 2^10] (rsqrt's octave domain; 15 comparisons per row).
Measured on all-MiniLM-L6-v2 (SST-2 and AG News, with and without random prompts, both LayerNorms of all
six blocks): per-row variances in [0.11, 131], so the domain has margins of 3.5x below and 7.8x above.
|x| must stay below about 2^15 / sqrt(H) so that d^2 fits comfortably (truncation failure probability
|d^2| 2^32 / 2^63 per element).

Error: rsqrt contributes 1.6e-5 relative + a few ulp of 1/sqrt(var); the products add one ulp each; so
|y - exact| <= |d w| (2e-5 + 3 ulp sqrt(var)... relative) + 3 ulp: measured in docs/functions.md.

Cost: d^2 and d * r (and * weight when it is shared): 2-3 products of the row size; per row: one rsqrt
(15 comparisons in one msb, 7 products).  Rounds in 2pc: 1 + 15 + 1 (+1); in 3pc about twice.
"""

from __future__ import annotations

import numpy as np

from mpc_core.functions._common import mean_last
from mpc_core.functions.inverse import rsqrt
from mpc_core.tensor import SharedTensor

LAYERNORM_VAR_DOMAIN = (2.0**-5, 2.0**10)

Param = SharedTensor | np.ndarray | float


def layer_norm(
    x: SharedTensor,
    weight: Param | None = None,
    bias: Param | None = None,
    eps: float = 1e-12,
    var_domain: tuple[float, float] = LAYERNORM_VAR_DOMAIN,
) -> SharedTensor:
    """LayerNorm over the last axis for rows with var + eps in ``var_domain`` (module docstring)."""
    with x.ctx.op("layernorm"):
        d = x - mean_last(x)
        var = mean_last(d.square())
        r = rsqrt(var + float(eps), lo=var_domain[0], hi=var_domain[1])
        y = d * r
        if weight is not None:
            y = y * (weight if isinstance(weight, SharedTensor) else np.asarray(weight, dtype=np.float64))
        if bias is not None:
            y = y + (bias if isinstance(bias, SharedTensor) else np.asarray(bias, dtype=np.float64))
        return y
