"""SharedTensor: a secret-shared array with numpy-like operators, so layer code reads like numpy.

A SharedTensor holds this participant's share (``data``, with the suite's leading slot axis) and the
number of fractional bits of the secret (``scale``): ``ctx.fp.frac_bits`` for fixed-point values, 0 for
ring integers such as comparison bits.  Products of two fixed-point values are truncated back to f
fractional bits automatically; products with a ring integer (a bit, a Python ``int``) are exact.

Public operands: a float (or float array) is encoded in fixed point; a Python ``int`` or an integer
array is an exact ring integer.  Nothing here ever decodes a share: :meth:`reveal` is the only way out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from mpc_core.ring import RING_DTYPE, as_ring, ring_matmul

if TYPE_CHECKING:
    from mpc_core.context import Context

Public = float | int | np.ndarray


def _is_integer(value: Public) -> bool:
    return isinstance(value, int | np.integer) or (isinstance(value, np.ndarray) and value.dtype.kind in "iu")


class SharedTensor:
    """This participant's share of a secret array (see module docstring)."""

    __array_priority__ = 1000  # make numpy defer to our reflected operators

    __slots__ = ("ctx", "data", "fixed_key", "scale")

    def __init__(self, ctx: Context, data: np.ndarray, scale: int, fixed_key: str | None = None) -> None:
        self.ctx = ctx
        self.data = data
        self.scale = scale
        self.fixed_key = fixed_key

    # ------------------------------------------------------------------ construction and output
    @classmethod
    def from_share(
        cls,
        ctx: Context,
        share: np.ndarray | None,
        shape: Sequence[int] | None = None,
        scale: int | None = None,
    ) -> SharedTensor:
        """Wrap a share received from a data or model owner (the dealer passes None and the shape)."""
        scale = ctx.fp.frac_bits if scale is None else scale
        if ctx.is_dealer:
            if shape is None:
                raise ValueError("the dealer needs the shape of a share it does not hold")
            return cls(ctx, ctx.suite.dummy(tuple(shape)), scale)
        share = np.asarray(share)
        if share.dtype != RING_DTYPE or share.ndim < 1 or share.shape[0] != ctx.suite.slots:
            raise ValueError(
                f"a {ctx.suite.name} share must be uint64 with {ctx.suite.slots} slot(s) on axis 0, "
                f"got {share.dtype}{share.shape}"
            )
        if shape is not None and tuple(share.shape[1:]) != tuple(shape):
            raise ValueError(f"share has shape {share.shape[1:]}, expected {tuple(shape)}")
        return cls(ctx, share, scale)

    @classmethod
    def input(cls, ctx: Context, value: np.ndarray | None, shape: Sequence[int], owner: int) -> SharedTensor:
        """Secret-share a float array held by compute party ``owner``."""
        secret = ctx.fp.encode(value) if ctx.participant == owner else None
        return cls(ctx, ctx.suite.input(secret, tuple(shape), owner), ctx.fp.frac_bits)

    def reveal(self, check: bool = True) -> np.ndarray:
        """Open to every compute party and decode (float64; zeros at the dealer)."""
        ring = self.ctx.suite.reveal(self.data, check=check)
        return ring.view(np.int64).astype(np.float64) / float(1 << self.scale)

    # ------------------------------------------------------------------ shape
    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape[1:]

    @property
    def ndim(self) -> int:
        return self.data.ndim - 1

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def _like(self, data: np.ndarray, scale: int | None = None) -> SharedTensor:
        return SharedTensor(self.ctx, data, self.scale if scale is None else scale)

    def fixed(self, key: str) -> SharedTensor:
        """This tensor marked as a fixed right operand of matmul (a weight): its mask is opened once."""
        return SharedTensor(self.ctx, self.data, self.scale, fixed_key=key)

    def reshape(self, *shape: int | Sequence[int]) -> SharedTensor:
        if len(shape) == 1 and not isinstance(shape[0], int):
            shape = tuple(shape[0])
        return self._like(self.data.reshape((self.data.shape[0], *shape)))

    def transpose(self, *axes: int) -> SharedTensor:
        axes = axes or tuple(range(self.ndim))[::-1]
        return self._like(self.data.transpose((0, *(a % self.ndim + 1 for a in axes))))

    def swapaxes(self, a: int, b: int) -> SharedTensor:
        return self._like(np.swapaxes(self.data, a % self.ndim + 1, b % self.ndim + 1))

    @property
    def T(self) -> SharedTensor:  # noqa: N802 - numpy's name
        return self.transpose()

    def __getitem__(self, index) -> SharedTensor:
        index = index if isinstance(index, tuple) else (index,)
        return self._like(self.data[(slice(None), *index)])

    def broadcast_to(self, shape: Sequence[int]) -> SharedTensor:
        return self._like(np.broadcast_to(self.data, (self.data.shape[0], *shape)))

    def expand_dims(self, axis: int) -> SharedTensor:
        return self._like(np.expand_dims(self.data, axis % (self.ndim + 1) + 1))

    def sum(self, axis: int | None = None, keepdims: bool = False) -> SharedTensor:
        if axis is None:
            return self._like(self.data.reshape(self.data.shape[0], -1).sum(axis=1, dtype=RING_DTYPE))
        return self._like(self.data.sum(axis=axis % self.ndim + 1, keepdims=keepdims, dtype=RING_DTYPE))

    def mean(self, axis: int, keepdims: bool = False) -> SharedTensor:
        return self.sum(axis, keepdims) * (1.0 / self.shape[axis])

    @staticmethod
    def concatenate(tensors: Sequence[SharedTensor], axis: int = 0) -> SharedTensor:
        first = tensors[0]
        _same_scale(tensors)
        return first._like(np.concatenate([t.data for t in tensors], axis=axis % first.ndim + 1))

    @staticmethod
    def stack(tensors: Sequence[SharedTensor], axis: int = 0) -> SharedTensor:
        first = tensors[0]
        _same_scale(tensors)
        return first._like(np.stack([t.data for t in tensors], axis=axis % (first.ndim + 1) + 1))

    # ------------------------------------------------------------------ public operands
    def _encode_public(self, value: Public, scale: int) -> np.ndarray:
        if _is_integer(value):
            return as_ring(value) << np.uint64(scale) if scale else as_ring(value)
        if scale == self.ctx.fp.frac_bits:
            return self.ctx.fp.encode(value)
        raise TypeError("a float can only be combined with a fixed-point tensor, not a ring integer")

    def with_scale(self, scale: int) -> SharedTensor:
        """A ring-integer tensor (scale 0) as fixed point, exactly (a local shift)."""
        if scale == self.scale:
            return self
        if self.scale != 0:
            raise ValueError("only ring integers (scale 0) can be rescaled locally")
        return self._like(self.data << np.uint64(scale), scale)

    # ------------------------------------------------------------------ linear operators
    def __add__(self, other: SharedTensor | Public) -> SharedTensor:
        if isinstance(other, SharedTensor):
            a, b = _align(self, other)
            return a._like(a.data + b.data)
        lifted = _lift(self, np.ndim(other))  # a public operand of higher rank broadcasts the secret
        return lifted._like(self.ctx.suite.add_public(lifted.data, self._encode_public(other, self.scale)))

    __radd__ = __add__

    def __neg__(self) -> SharedTensor:
        return self._like(-self.data)

    def __sub__(self, other: SharedTensor | Public) -> SharedTensor:
        if isinstance(other, SharedTensor):
            a, b = _align(self, other)
            return a._like(a.data - b.data)
        return self + (-other)

    def __rsub__(self, other: Public) -> SharedTensor:
        return (-self) + other

    # ------------------------------------------------------------------ products
    def _finish_product(self, raw: np.ndarray, scale: int) -> SharedTensor:
        """Truncate a raw product carrying ``scale`` fractional bits back to at most f bits."""
        f = self.ctx.fp.frac_bits
        if scale > f:
            return self._like(self.ctx.suite.truncate(raw, scale - f), f)
        return self._like(raw, scale)

    def __mul__(self, other: SharedTensor | Public) -> SharedTensor:
        if isinstance(other, SharedTensor):
            raw = self.ctx.suite.mul(self.data, other.data)
            return self._finish_product(raw, self.scale + other.scale)
        lifted = _lift(self, np.ndim(other))  # keep the slot axis out of numpy broadcasting
        if _is_integer(other):
            return lifted._like(lifted.data * as_ring(other))
        encoded = self.ctx.fp.encode(other)
        return lifted._finish_product(lifted.data * encoded, self.scale + self.ctx.fp.frac_bits)

    __rmul__ = __mul__

    def square(self) -> SharedTensor:
        return self._finish_product(self.ctx.suite.square(self.data), 2 * self.scale)

    def __matmul__(self, other: SharedTensor | np.ndarray) -> SharedTensor:
        if isinstance(other, SharedTensor):
            raw = self.ctx.suite.matmul(self.data, other.data, fixed_key=other.fixed_key)
            return self._finish_product(raw, self.scale + other.scale)
        if _is_integer(other):
            return self._like(_local_matmul(self.data, as_ring(other)))
        encoded = self.ctx.fp.encode(other)
        return self._finish_product(_local_matmul(self.data, encoded), self.scale + self.ctx.fp.frac_bits)

    def __rmatmul__(self, other: np.ndarray) -> SharedTensor:
        encoded = as_ring(other) if _is_integer(other) else self.ctx.fp.encode(other)
        raw = np.stack([ring_matmul(encoded, self.data[s]) for s in range(self.data.shape[0])])
        return self._finish_product(raw, self.scale + (0 if _is_integer(other) else self.ctx.fp.frac_bits))

    def truncate(self, bits: int) -> SharedTensor:
        """Divide by 2^bits (probabilistic truncation, see the suite)."""
        return self._like(self.ctx.suite.truncate(self.data, bits))

    # ------------------------------------------------------------------ kernels
    def msb(self, bound: float | None = None, resolution: float | None = None) -> SharedTensor:
        """Ring-integer shares of [x < 0], exact (|x| < 2^(63 - f)).

        A caller that knows |x| < ``bound`` and can accept x in [0, ``resolution``) reading as negative
        gets a cheaper comparison: only the bits from ``resolution`` up to ``bound`` enter the carry tree
        (e.g. 14 instead of 63 for bound 240 and resolution 2^-6).  Outside the bound the bit is garbage.
        """
        low_bit, sign_bit = msb_window(self.scale, bound, resolution)  # (0, 63) when neither is given
        return self._like(self.ctx.suite.msb(self.data, low_bit, sign_bit), 0)

    def trig(self, period: float, harmonics: Sequence[int]) -> tuple[list[SharedTensor], list[SharedTensor]]:
        """cos(2 pi k x / period) and sin(...) for each k, in one round.

        ``period`` must be a power of two times 2^-f (so that it is a power of two in ring units): then the
        opened mask delta = (x + t) mod period is perfectly uniform.
        """
        period_bits = self._period_bits(period)
        cos, sin = self.ctx.suite.trig(self.data, period_bits, harmonics, self.ctx.fp.frac_bits)
        f = self.ctx.fp.frac_bits
        return [self._like(c, f) for c in cos], [self._like(s, f) for s in sin]

    def fourier(
        self,
        period: float,
        harmonics: Sequence[int],
        cos_coeffs: Sequence[float],
        sin_coeffs: Sequence[float] | None = None,
        linear: Sequence[tuple[SharedTensor, float]] = (),
    ) -> SharedTensor:
        """sum_k a_k cos(2 pi k x / period) + b_k sin(...) + sum_j w_j y_j with one truncation.

        Cheaper than :meth:`trig` followed by a weighted sum when only the sum is needed (an activation
        function as a Fourier series): one opened mask, one truncation, one output.
        """
        period_bits = self._period_bits(period)
        sin_coeffs = [0.0] * len(harmonics) if sin_coeffs is None else sin_coeffs
        f = self.ctx.fp.frac_bits
        for y, _ in linear:
            if y.scale != f or y.shape != self.shape:
                raise ValueError("linear terms of a Fourier series must be fixed point of the same shape")
        data = self.ctx.suite.fourier(
            self.data, period_bits, harmonics, cos_coeffs, sin_coeffs, f, [(y.data, w) for y, w in linear]
        )
        return self._like(data, f)

    def _period_bits(self, period: float) -> int:
        units = period * (1 << self.scale)
        period_bits = int(np.rint(np.log2(units)))
        if units <= 1 or 2**period_bits != units:
            raise ValueError(f"trig period {period} is not a power of two in ring units (scale {self.scale})")
        return period_bits

    def __repr__(self) -> str:
        return f"SharedTensor(suite={self.ctx.suite.name}, shape={self.shape}, scale={self.scale})"


def msb_window(scale: int, bound: float | None, resolution: float | None) -> tuple[int, int]:
    """(low_bit, sign_bit) of the cheapest msb window that is exact for |x| < bound down to resolution.

    Values at ``scale`` fractional bits; the window must satisfy |x| 2^scale < 2^sign_bit - 2^low_bit.
    """
    low_bit = 0
    if resolution is not None:
        if not resolution > 0:
            raise ValueError("msb resolution must be positive")
        low_bit = max(0, scale + math.floor(math.log2(resolution)))
    if bound is None:
        return low_bit, 63
    if not bound > 0:
        raise ValueError("msb bound must be positive")
    sign_bit = max(low_bit + 1, math.ceil(math.log2(bound * 2.0**scale + 2.0**low_bit + 1)))
    if sign_bit > 63:
        raise ValueError(f"msb bound {bound} does not fit the ring at scale {scale}")
    return low_bit, sign_bit


def _local_matmul(data: np.ndarray, public: np.ndarray) -> np.ndarray:
    return np.stack([ring_matmul(data[s], public) for s in range(data.shape[0])])


def _align(a: SharedTensor, b: SharedTensor) -> tuple[SharedTensor, SharedTensor]:
    """Bring two tensors to one scale (a ring integer is promoted to fixed point exactly) and one number
    of dimensions, so that numpy broadcasting of the share arrays aligns the secrets' trailing axes and
    never the slot axis (a (2, 5) share of a length-5 vector against a (2, 4, 5) share of a matrix)."""
    if a.scale != b.scale:
        scale = max(a.scale, b.scale)
        a, b = a.with_scale(scale), b.with_scale(scale)
    return _lift(a, b.ndim), _lift(b, a.ndim)


def _lift(t: SharedTensor, ndim: int) -> SharedTensor:
    """``t`` with leading singleton axes (after the slot axis) up to ``ndim`` secret dimensions."""
    if t.ndim >= ndim:
        return t
    return t._like(t.data.reshape((t.data.shape[0], *(1,) * (ndim - t.ndim), *t.shape)))


def _same_scale(tensors: Sequence[SharedTensor]) -> None:
    if len({t.scale for t in tensors}) != 1:
        raise ValueError("cannot join tensors of different fixed-point scales")
