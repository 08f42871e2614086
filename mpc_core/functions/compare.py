"""Comparisons and everything built on them: less_than, sign, relu, where, maximum, max, argmax.

All of them reduce to the suite's sign-bit kernel ``x.msb()`` (ring-integer shares of [x < 0]; 8 rounds
in 2pc, 9 in 3pc; about 500 bytes per element in all) and to products by a bit, which are exact: a bit
is a ring integer (scale 0), so bit * x needs no truncation (one round in both suites).

Exactness and domain: the results are exact functions of the *encoded* inputs (round(x 2^16) / 2^16) as
long as differences do not wrap the ring, i.e. |x|, |y| < 2^46 (2^30 for argmax, which pads with -2^30).
No approximation is involved, so there is no error bound beyond the encoding of the inputs.

Ties: ``maximum``/``max`` return the common value; ``argmax`` returns the one-hot of the *first* maximal
position (lowest index along the axis), like numpy, with ties judged on the encoded values.
"""

from __future__ import annotations

import numpy as np

from mpc_core.functions._common import reinterpret
from mpc_core.tensor import SharedTensor

#: argmax pads rows to a power of two with this public value; inputs must stay above it.
ARGMAX_PAD = -(2.0**30)

Operand = SharedTensor | float | int | np.ndarray


def less_than(x: SharedTensor, y: Operand) -> SharedTensor:
    """Ring-integer bits [x < y] (exact on encoded values, |x|, |y| < 2^46)."""
    with x.ctx.op("compare"):
        return (x - y).msb()


def greater_equal(x: SharedTensor, y: Operand) -> SharedTensor:
    """Ring-integer bits [x >= y] = 1 - [x < y]."""
    with x.ctx.op("compare"):
        return 1 - (x - y).msb()


def sign(x: SharedTensor) -> SharedTensor:
    """Ring integers +1 for x >= 0 and -1 for x < 0 (sign(0) = +1, not 0)."""
    with x.ctx.op("compare"):
        return 1 - 2 * x.msb()


def where(bit: SharedTensor, a: Operand, b: Operand) -> SharedTensor:
    """a where bit = 1, b where bit = 0: b + bit (a - b), exact (a bit times a value is not truncated).

    ``bit`` must be ring-integer 0/1 shares (from a comparison); a and b shared or public (floats are
    fixed point).  Public a and b make it local; otherwise one product round.
    """
    with bit.ctx.op("where"):
        if bit.scale != 0:
            raise ValueError("where() needs ring-integer bits (scale 0), e.g. from less_than()")
        if isinstance(a, SharedTensor) or isinstance(b, SharedTensor):
            delta = a - b if isinstance(a, SharedTensor) else -(b - a)
            return bit * delta + b
        return bit * (np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) + b


def relu(x: SharedTensor) -> SharedTensor:
    """max(x, 0) = x [x >= 0]: exact, one msb plus one product."""
    with x.ctx.op("relu"):
        return x * (1 - x.msb())


def maximum(x: SharedTensor, y: Operand) -> SharedTensor:
    """Elementwise max(x, y) = y + (x - y) [x >= y]: exact."""
    with x.ctx.op("max"):
        d = x - y
        return d * (1 - d.msb()) + y


def _pairwise_max(x: SharedTensor, spread: float | None, resolution: float | None) -> SharedTensor:
    """One tree level along the last axis: max of (x[2i], x[2i+1]); an odd last element passes through."""
    n = x.shape[-1]
    left, right = x[..., 0 : n - 1 : 2], x[..., 1:n:2]
    d = left - right
    best = d * (1 - d.msb(spread, resolution)) + right
    if n % 2:
        best = SharedTensor.concatenate([best, x[..., n - 1 :]], axis=-1)
    return best


def max(
    x: SharedTensor,
    axis: int = -1,
    keepdims: bool = False,
    spread: float | None = None,
    resolution: float | None = None,
) -> SharedTensor:
    """Maximum along ``axis`` by a pairwise tree: ceil(log2 n) levels, each one msb and one product
    (9 rounds per level in 2pc, 10 in 3pc), n - 1 comparisons in all.  Exact by default.

    Near-max for bounded rows: when every row's max - min is below ``spread`` the comparisons need only
    the bits between ``resolution`` and ``spread`` (:meth:`SharedTensor.msb`); a level may then keep the
    smaller of two entries that differ by less than ``resolution``, so the result is an entry of the row
    within ceil(log2 n) * resolution of its max.  Rows wider than ``spread`` give garbage.
    """
    with x.ctx.op("max"):
        moved = x.swapaxes(axis, -1)
        while moved.shape[-1] > 1:
            moved = _pairwise_max(moved, spread, resolution)
        out = moved.swapaxes(axis, -1)
        kept = tuple(s for i, s in enumerate(out.shape) if i != axis % x.ndim)
        return out if keepdims else out.reshape(kept)


def argmax(x: SharedTensor, axis: int = -1) -> SharedTensor:
    """One-hot ring-integer bits of the first maximal position along ``axis`` (same shape as x).

    A tournament tree: the row is padded to a power of two with ARGMAX_PAD (public), then each level
    compares neighbours, c = [left >= right] (ties keep the left, i.e. the lower index), and carries each
    winner's one-hot over its subtree: new one-hot = [c h_left, h_right - c h_right].  The value selection
    c (left - right) and the one-hot products of a level are one product (one round): 9 rounds per level
    in 2pc, 10 in 3pc; n - 1 comparisons plus about n log2(n) bit products per row.
    """
    with x.ctx.op("argmax"):
        moved = x.swapaxes(axis, -1)
        n = moved.shape[-1]
        width = 1 << (n - 1).bit_length()
        if width > n:
            pad = np.full((*moved.shape[:-1], width - n), ARGMAX_PAD)
            moved = SharedTensor.concatenate([moved, moved[..., :1] * 0 + pad], axis=-1)
        f = x.ctx.fp.frac_bits
        values, onehot = moved, None  # onehot: (..., nodes, subtree size), ring-integer bits
        while values.shape[-1] > 1:
            left, right = values[..., 0::2], values[..., 1::2]
            d = left - right
            c = 1 - d.msb()
            if onehot is None:  # leaves: the pair winner's one-hot is (c, 1 - c)
                values = d * c + right
                onehot = SharedTensor.stack([c, 1 - c], axis=-1)
                continue
            size = onehot.shape[-1]
            # one product: [d | h_left | h_right] * c, with d read as a ring integer (exact, no truncation)
            joined = SharedTensor.concatenate(
                [reinterpret(d, 0).expand_dims(-1), onehot[..., 0::2, :], onehot[..., 1::2, :]], axis=-1
            )
            prod = joined * c.expand_dims(-1)
            values = reinterpret(prod[..., 0], f) + right
            c_left, c_right = prod[..., 1 : size + 1], prod[..., size + 1 :]
            onehot = SharedTensor.concatenate([c_left, onehot[..., 1::2, :] - c_right], axis=-1)
        if onehot is None:  # a single element is its own argmax
            return reinterpret(x * 0, 0) + 1
        result = onehot.reshape((*onehot.shape[:-2], width))[..., :n]
        return result.swapaxes(axis, -1)
