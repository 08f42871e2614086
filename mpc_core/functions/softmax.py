"""softmax(x) along an axis: near-max subtraction, exp, one reciprocal per row, one product.

Maths: softmax(x)_i = e^(x_i - m) / s for any shift m (the shift cancels).  m is a near-max: the pairwise
tree of :func:`~mpc_core.functions.compare.max` with comparisons windowed to the row spread domain (240)
and MAX_RESOLUTION = 2^-6, so m is an entry of the row with max - m <= ceil(log2 n) 2^-6 (0.11 for n = 128).
Then every x_i - m lies in [-240, 0.11] (inside exp's domain [-240, 4]) and s = sum_j e^(x_j - m) lies in
[1, n e^0.11] (the max term is at least e^0 = 1).

Domain: rows whose spread max - min is at most EXP_DOMAIN_LO = 240 (the exp domain).  Measured on
all-MiniLM-L6-v2 (SST-2 and AG News, with and without random prompts of up to 50 tokens): attention
score spreads per row up to 145 (84 without prompt), |scores| up to 86, denominators s in [1, 90].
Callers that mask entries by filling them with -c keep the spread within range if c + max|x| <= 240.

Error (exact truncation): each e_j = e^(x_j - m) is within 1.5e-5 e_j + 2 ulp of exact (exp), so the
row sum s (>= 1) is within 1.5e-5 s + 2 n ulp; 1/s has relative error <= 1.53e-4 (one-sided) + 1 ulp;
the final product adds 1 ulp.  Hence |p_i - softmax_i| <= (1.7e-4 + 2 n ulp) p_i + 3.5e-5 + 2 ulp, a
worst case (the truncation errors are unbiased, so the n-ulp term is typically sqrt(n) ulp; measured
max abs error 2e-4 on rows of 64).  With probabilistic truncation exp's error grows to 3e-3 near 0.

Cost per row of n: n - 1 windowed comparisons (14 carry bits instead of 63: about 4.5x fewer bit products
than an exact comparison) in ceil(log2 n) tree levels (7 rounds each in 2pc), the exp (16 rounds in 2pc,
24 in 3pc), the reciprocal on [2/3, n e^0.11] (one msb, 16 rounds in 2pc), one product.
"""

from __future__ import annotations

import math

import numpy as np

from mpc_core.functions.compare import max as tree_max
from mpc_core.functions.exp import EXP_SQUARINGS, exp, exp_domain_lo
from mpc_core.functions.inverse import reciprocal
from mpc_core.tensor import SharedTensor

#: The near-max may fall this far below the max per tree level (it only shifts exp's argument).
MAX_RESOLUTION = 2.0**-6


def softmax(
    x: SharedTensor, axis: int = -1, mask: np.ndarray | None = None, squarings: int = EXP_SQUARINGS
) -> SharedTensor:
    """softmax along ``axis`` for rows with spread <= 1.875 * 2^squarings (240 by default).

    ``mask`` (public, 0/1, broadcastable to x) excludes entries exactly: they get probability 0 and take
    no part in the max or the sum (locally: a masked entry is replaced by the row's first unmasked entry
    before the max, and its exponential is multiplied by 0 before the sum).  Every row needs at least one
    unmasked entry; only the unmasked entries count for the spread.
    """
    with x.ctx.op("softmax"):
        n = x.shape[axis]
        keep = None
        if mask is not None:
            flags = np.broadcast_to(np.asarray(mask) != 0, x.shape)
            if not np.all(flags.any(axis=axis)):
                raise ValueError("softmax: a row has every entry masked")
            keep = flags.astype(np.int64)
            first = np.expand_dims(np.argmax(flags, axis=axis), axis)
            positions = np.arange(n).reshape([n if i == axis % x.ndim else 1 for i in range(x.ndim)])
            reference = (x * (positions == first).astype(np.int64)).sum(axis=axis, keepdims=True)
            x = x * keep + reference * (1 - keep)
        spread = exp_domain_lo(squarings)
        levels = math.ceil(math.log2(n)) if n > 1 else 0
        shifted = x - tree_max(x, axis=axis, keepdims=True, spread=spread, resolution=MAX_RESOLUTION)
        e = exp(shifted, squarings=squarings)
        if keep is not None:
            e = e * keep
        s = e.sum(axis=axis, keepdims=True)
        # octaves [2/3, 4/3), [4/3, 8/3), ...: s = 1 (one dominant entry, common in attention) sits at the
        # centre of the first octave, where the reciprocal's initial guess is exact
        inv = reciprocal(s, lo=2.0 / 3.0, hi=max(2, n) * math.exp(levels * MAX_RESOLUTION))
        return e * inv
