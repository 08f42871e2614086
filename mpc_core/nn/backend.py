"""Two backends behind one small interface, so that every layer is written once (Piranha, CrypTen style).

* :class:`PlainBackend`: numpy float64 with exact functions (erf GELU, exact softmax, exact division).
  It is the reference every secure result is compared with.
* :class:`SecureBackend`: :class:`~mpc_core.tensor.SharedTensor` values and the approximations of
  :mod:`mpc_core.functions`, in one participant's context (SPMD: every participant, the 2pc dealer
  included, runs the same calls in the same order).

Layer code uses numpy-like operators on the values themselves (``+ - * @``, ``reshape``, ``transpose``,
``swapaxes``, indexing, ``sum``), which both numpy arrays and SharedTensors provide, and calls the backend
for everything that differs: named weights, nonlinear functions, joins.  Public operands (masks,
lengths, random projections, anchors) are numpy arrays in both backends: a float array is a fixed-point
constant on shares, an integer array an exact ring integer (a 0/1 mask multiplies exactly).

Neither backend decides anything from secret values: the control flow depends on shapes and public
configuration only.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from mpc_core.context import Context
    from mpc_core.tensor import SharedTensor

#: Real period of the trig protocol used for cos/sin of an angle: a power of two (in ring units too),
#: large enough that the angle's fixed-point error 2^-f becomes 2 pi 2^-f / period radians.
TRIG_PERIOD = 64.0

Value = Any  # np.ndarray in PlainBackend, SharedTensor in SecureBackend


def _erf(x: np.ndarray) -> np.ndarray:
    """Elementwise erf in float64 (torch's vectorised kernel; numpy has none)."""
    import torch

    return torch.special.erf(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))).numpy()


def _rows(x: Value, fn: Callable[[Value], Value]) -> Value:
    """fn applied to x flattened to 2-D rows [prod(leading), last], reshaped back.

    A 3-D @ 2-D numpy matmul loops over the batch (about 8x slower here than one 2-D GEMM); ring products
    on shares go through the same float64 GEMMs, so both backends flatten first.
    """
    if x.ndim == 2:
        return fn(x)
    lead = x.shape[:-1]
    y = fn(x.reshape(-1, x.shape[-1]))
    return y.reshape(*lead, y.shape[-1])


class Backend(ABC):
    """What the layers need beyond numpy-like operators.  ``weights`` maps canonical names to values."""

    name: str

    def __init__(self, weights: Mapping[str, Value]) -> None:
        self.weights = weights

    # ------------------------------------------------------------------ weights
    def param(self, name: str) -> Value:
        try:
            return self.weights[name]
        except KeyError:
            raise KeyError(f"the model has no tensor named {name!r}") from None

    def linear(self, x: Value, name: str) -> Value:
        """x @ W + b for the layer ``name`` (canonical W is [in, out])."""
        return _rows(x, lambda x2: x2 @ self.param(f"{name}.weight") + self.param(f"{name}.bias"))

    def linear_many(self, x: Value, names: Sequence[str]) -> list[Value]:
        """Several layers applied to the same input (the secure backend fuses them into one product)."""
        return [self.linear(x, n) for n in names]

    def linear_columns(self, x: Value, name: str, columns: Sequence[int]) -> Value:
        """x @ W[:, columns] + b[columns]: only some outputs of a (large) layer, e.g. label words."""
        cols = np.asarray(columns, dtype=np.int64)
        w, b = self.param(f"{name}.weight")[:, cols], self.param(f"{name}.bias")[cols]
        return _rows(x, lambda x2: x2 @ w + b)

    def layer_norm(self, x: Value, name: str, eps: float) -> Value:
        return self._layer_norm(x, self.param(f"{name}.weight"), self.param(f"{name}.bias"), eps)

    # ------------------------------------------------------------------ functions
    @abstractmethod
    def _layer_norm(self, x: Value, weight: Value, bias: Value, eps: float) -> Value: ...

    @abstractmethod
    def gelu(self, x: Value) -> Value:
        """x Phi(x), Phi the standard normal CDF (the erf form BERT uses)."""

    @abstractmethod
    def softmax(self, x: Value, mask: np.ndarray | None = None) -> Value:
        """Softmax along the last axis over the positions where the public 0/1 ``mask`` is 1.

        Masked positions get probability exactly 0 (``mask`` broadcasts against ``x``).
        """

    @abstractmethod
    def exp(self, x: Value, lower: float | None = None) -> Value:
        """e^max(x, lower); callers pass x <= 0 (shifted exponents), where e^x lies in (0, 1].

        ``lower`` clips very negative arguments first (exactly: max(x, c) = relu(x - c) + c), for inputs
        that may leave the secure exp's domain; e^lower must be negligible (below 2^-16).
        """

    @abstractmethod
    def log(self, x: Value, lo: float, hi: float) -> Value:
        """log x for x in the stated domain [lo, hi] (the secure version is only right there)."""

    @abstractmethod
    def reciprocal(self, x: Value, lo: float, hi: float, precise: bool = False) -> Value:
        """1 / x for x in the stated domain [lo, hi], 0 < lo.

        ``precise``: the secure result keeps its working precision (finer than f bits) until the caller's
        next product, for a 1/x that may be small (large x).
        """

    @abstractmethod
    def rsqrt(self, x: Value, lo: float | None = None, hi: float | None = None) -> Value:
        """1 / sqrt(x) for x > 0 (the secure version only in [lo, hi], default its RSQRT_DOMAIN)."""

    @abstractmethod
    def relu(self, x: Value) -> Value: ...

    @abstractmethod
    def max(self, x: Value, axis: int = -1) -> Value:
        """Maximum along ``axis``, keeping the axis (size 1)."""

    @abstractmethod
    def square(self, x: Value) -> Value: ...

    @abstractmethod
    def cos_sin(self, x: Value) -> tuple[Value, Value]:
        """(cos x, sin x) of an angle in radians."""

    def floor_at(self, x: Value, floor: float) -> Value:
        """max(x, floor) = relu(x - floor) + floor (exact identity)."""
        return self.relu(x - floor) + floor

    def clamp(self, x: Value, lo: float, hi: float) -> Value:
        """min(max(x, lo), hi): a domain guard, the same function in both backends.

        Used where the plaintext value could leave a domain the secure function cannot serve: both
        backends then compute the guarded function, so they still agree (and the guard's effect on the
        plaintext model is measured like any other approximation).  Two comparisons per element.
        """
        return hi - self.relu(hi - self.floor_at(x, lo))

    # ------------------------------------------------------------------ joins
    @abstractmethod
    def concatenate(self, xs: Sequence[Value], axis: int) -> Value: ...

    @abstractmethod
    def broadcast_to(self, x: Value, shape: Sequence[int]) -> Value: ...


class PlainBackend(Backend):
    """float64 numpy with exact functions: the reference computation."""

    name = "plain"

    def __init__(self, weights: Mapping[str, np.ndarray]) -> None:
        super().__init__({k: np.asarray(v, dtype=np.float64) for k, v in weights.items()})

    def _layer_norm(self, x, weight, bias, eps):
        mu = x.mean(axis=-1, keepdims=True)
        var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * weight + bias

    def gelu(self, x):
        return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))

    def softmax(self, x, mask=None):
        x = np.asarray(x, dtype=np.float64)
        if mask is not None:
            keep = np.broadcast_to(np.asarray(mask) != 0, x.shape)
            x = np.where(keep, x, -np.inf)
        z = np.exp(x - x.max(axis=-1, keepdims=True))
        return z / z.sum(axis=-1, keepdims=True)

    def exp(self, x, lower=None):
        return np.exp(x if lower is None else np.maximum(x, lower))

    def log(self, x, lo, hi):
        return np.log(x)

    def reciprocal(self, x, lo, hi, precise=False):
        return 1.0 / x

    def rsqrt(self, x, lo=None, hi=None):
        return 1.0 / np.sqrt(x)

    def clamp(self, x, lo, hi):
        return np.clip(x, lo, hi)

    def relu(self, x):
        return np.maximum(x, 0.0)

    def max(self, x, axis=-1):
        return np.max(x, axis=axis, keepdims=True)

    def square(self, x):
        return x * x

    def cos_sin(self, x):
        return np.cos(x), np.sin(x)

    def concatenate(self, xs, axis):
        return np.concatenate(list(xs), axis=axis)

    def broadcast_to(self, x, shape):
        return np.broadcast_to(x, tuple(shape))


class SecureBackend(Backend):
    """SharedTensor values and :mod:`mpc_core.functions` in one participant's context.

    Weight matrices should be marked ``.fixed(name)`` (see :func:`mpc_core.nn.weights.load_party_shares`)
    so that their Beaver masks are opened once per context and reused by every later call.
    """

    name = "secure"

    def __init__(self, ctx: Context, weights: Mapping[str, SharedTensor]) -> None:
        from mpc_core import functions

        super().__init__(weights)
        self.ctx = ctx
        self.fn = functions
        self._fused: dict[str, tuple[SharedTensor, SharedTensor, list[int]]] = {}

    # ------------------------------------------------------------------ weights (traffic named "linear")
    def linear(self, x, name):
        with self.ctx.op("linear"):
            return super().linear(x, name)

    def linear_many(self, x, names):
        """One product x @ [W_1 | W_2 | ...] (one opening of x in 2pc) split into the layers' outputs."""
        with self.ctx.op("linear"):
            return self._linear_many(x, names)

    def _linear_many(self, x, names):
        from mpc_core.tensor import SharedTensor

        key = "+".join(names)
        if key not in self._fused:
            ws = [self.param(f"{n}.weight") for n in names]
            bs = [self.param(f"{n}.bias") for n in names]
            w = SharedTensor.concatenate(ws, axis=1).fixed(key)
            b = SharedTensor.concatenate(bs, axis=0)
            self._fused[key] = (w, b, [int(wi.shape[1]) for wi in ws])
        w, b, widths = self._fused[key]
        y = _rows(x, lambda x2: x2 @ w + b)
        out, start = [], 0
        for width in widths:
            out.append(y[..., start : start + width])
            start += width
        return out

    def linear_columns(self, x, name, columns):
        with self.ctx.op("linear"):
            return self._linear_columns(x, name, columns)

    def _linear_columns(self, x, name, columns):
        key = f"{name}[{','.join(str(int(c)) for c in columns)}]"
        if key not in self._fused:
            cols = np.asarray(columns, dtype=np.int64)
            w = self.param(f"{name}.weight")[:, cols].fixed(key)
            b = self.param(f"{name}.bias")[cols]
            self._fused[key] = (w, b, [len(cols)])
        w, b, _ = self._fused[key]
        return _rows(x, lambda x2: x2 @ w + b)

    # ------------------------------------------------------------------ functions
    def _layer_norm(self, x, weight, bias, eps):
        with self.ctx.op("layernorm"):
            return self.fn.layer_norm(x, weight, bias, eps)

    def gelu(self, x):
        with self.ctx.op("gelu"):
            return self.fn.gelu(x)

    def softmax(self, x, mask=None):
        """functions.softmax with its public mask: masked entries take no part in max and sum, and are 0."""
        with self.ctx.op("softmax"):
            return self.fn.softmax(x, axis=-1, mask=None if mask is None else (np.asarray(mask) != 0))

    def exp(self, x, lower=None):
        with self.ctx.op("exp"):
            if lower is not None:
                x = self.fn.relu(x - lower) + lower
            return self.fn.exp(x)

    def log(self, x, lo, hi):
        with self.ctx.op("log"):
            return self.fn.log(x, lo=lo, hi=hi)

    def reciprocal(self, x, lo, hi, precise=False):
        with self.ctx.op("reciprocal"):
            return self.fn.reciprocal(x, lo=lo, hi=hi, precise=precise)

    def rsqrt(self, x, lo=None, hi=None):
        with self.ctx.op("rsqrt"):
            if lo is None or hi is None:
                return self.fn.rsqrt(x)
            return self.fn.rsqrt(x, lo=lo, hi=hi)

    def relu(self, x):
        with self.ctx.op("relu"):
            return self.fn.relu(x)

    def max(self, x, axis=-1):
        with self.ctx.op("max"):
            return self.fn.max(x, axis=axis, keepdims=True)

    def square(self, x):
        return x.square()

    def cos_sin(self, x):
        """cos and sin of x radians via the one-round trig protocol on t = x period / (2 pi).

        The opened value (t + r) mod period is uniform (period a power of two in ring units); the angle
        error is at most 2 pi 2^-f / period from the one truncation of t.
        """
        with self.ctx.op("trig"):
            t = x * (TRIG_PERIOD / (2.0 * math.pi))
            cos, sin = t.trig(TRIG_PERIOD, [1])
            return cos[0], sin[0]

    # ------------------------------------------------------------------ joins
    def concatenate(self, xs, axis):
        from mpc_core.tensor import SharedTensor

        return SharedTensor.concatenate(list(xs), axis=axis)

    def broadcast_to(self, x, shape):
        return x.broadcast_to(tuple(shape))
