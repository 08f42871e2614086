"""Adam with the moments kept as shares, for either backend (Kingma and Ba 2015, Algorithm 1).

The state is the *bias-corrected* moments m^_t = m_t / (1 - b1^t) and v^_t = v_t / (1 - b2^t), the same
numbers torch.optim.Adam divides by, updated in that form with public per-step coefficients:

    m^_t = a1_t m^_{t-1} + (1 - a1_t) g,    a1_t = b1 (1 - b1^(t-1)) / (1 - b1^t)   (a1_1 = 0)
    v^_t = a2_t v^_{t-1} + (1 - a2_t) g^2,  a2_t likewise with b2,

so v^ is a weighted mean of g^2 and keeps the magnitude of g^2 from step 1 on (the textbook
v_t = b2 v + (1 - b2) g^2 is 1000 times smaller at t = 1, below the 2^-16 resolution for small g).
The update is

    theta <- theta - lr m^_t rsqrt(v^_t + eps^2)

with epsilon *inside* the root (one rsqrt instead of torch's sqrt and then a reciprocal of sqrt(v^) + eps:
half the nonlinear cost).  The two agree to a relative eps / sqrt(v^) (below 1e-3 once sqrt(v^) >= 1000 eps)
and differ by at most a factor sqrt(2) where sqrt(v^) = eps.  All parameters are flattened into one vector
so that the whole step is one rsqrt (one batched msb) whatever the number of tensors.

Domain and precision (public configuration, never checked on secrets): Adam is invariant under a scale
of the gradients when eps scales with them, so it rescales the incoming (loss-scaled) gradients by a public
power of two to its own working scale W = 2^round(log2((grad_max eps^2)^(-1/3))), which balances the two
fixed-point limits of the step direction u = m^ rsqrt(v^ + eps^2) (|u| <= about 1):

* the rsqrt's output resolution: 2^-f absolute on y = rsqrt(.), i.e. up to 2^-f W grad_max on u for the
  largest gradients, and
* the rsqrt input's resolution: 2^-f on v^ + eps^2 >= (W eps)^2, i.e. 2^-(f+1) / (W eps)^2 relative;

their sum is :attr:`Adam.precision` (0.24% for eps = 1e-3, grad_max = 1, f = 16; 1.1% for eps = 1e-4).
A configuration whose precision is above PRECISION_LIMIT = 1e-2 is refused (with f = 16 the dynamic range
grad_max / eps is limited to about 10^4).  The rsqrt runs on [(W eps)^2, (W grad_max)^2 + (W eps)^2]; a
gradient above ``grad_max`` (unscaled, any element, any step) leaves that domain and is wrong silently.

Error on shares (exact truncation): per step, |u - u_exact| <= precision + 1.6e-5 (rsqrt's Newton error)
+ 1 ulp per moment update; the step lr u is rounded once to 2^-16 absolute, so a learning rate below about
2^-10 needs more fractional bits than f = 16 (the update would lose 1.5% or more).

Cost per step and element: one square (g^2), one rsqrt on the whole vector (J comparisons in one msb,
J = octaves of the domain, then 7 products), one product m^ r, three truncations for public combinations.

Memory: the rsqrt's comparisons hold about J + 10 ring arrays of the vector's size at once, measured 12.5 KiB
per element for the three participants of one in-process 2pc job (J = 13, eps 1e-2): SFT's 10.7 M encoder
elements at once would take about 130 GiB.  The step therefore runs the element-wise part (moments, rsqrt,
update) on consecutive slices of at most ``chunk`` elements (:data:`ADAM_CHUNK` by default), one after the
other: the same values and bytes, the same result in float64, and the rsqrt's rounds once per slice
(ceil(size / chunk) times: about 28 rounds each in 2pc).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

from mpc_core.nn.backend import Backend, Value
from mpc_core.nn.grad.ops import grad_ops
from mpc_core.ring import DEFAULT_FRAC_BITS

#: Largest accepted :attr:`Adam.precision` (the step direction's fixed-point error bound).
PRECISION_LIMIT = 1e-2
#: Elements per slice of the element-wise step (module docstring, Memory): about 2 GiB per participant.
ADAM_CHUNK = 1 << 19


class AdamConfig(BaseModel):
    """Adam's public hyper-parameters, and the bound on gradients that fixes the rsqrt's domain."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    lr: float = Field(gt=0)
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.999, ge=0, lt=1)
    eps: float = Field(default=1e-3, gt=0)
    grad_max: float = Field(default=1.0, gt=0)


class Adam:
    """Adam over named tensors (shares or float64): :meth:`step` returns the updated tensors."""

    def __init__(
        self, B: Backend, config: AdamConfig, loss_scale: float = 1.0, chunk: int = ADAM_CHUNK
    ) -> None:
        if not loss_scale > 0:
            raise ValueError("the loss scale must be positive")
        if chunk < 1:
            raise ValueError("the chunk must hold at least one element")
        self.chunk = int(chunk)
        frac_bits = B.ctx.fp.frac_bits if hasattr(B, "ctx") else DEFAULT_FRAC_BITS
        self.working_scale = 2.0 ** round(math.log2((config.grad_max * config.eps**2) ** (-1.0 / 3.0)))
        eps2 = (config.eps * self.working_scale) ** 2
        ulp = 2.0**-frac_bits
        self.precision = ulp * self.working_scale * config.grad_max + 0.5 * ulp / eps2
        if self.precision > PRECISION_LIMIT:
            raise ValueError(
                f"Adam with eps = {config.eps:g} and grad_max = {config.grad_max:g} would have a fixed-point "
                f"step error of {self.precision:.2g} (above {PRECISION_LIMIT:g}) with {frac_bits} fractional "
                "bits: raise eps or lower grad_max"
            )
        self.B, self.ops, self.config = B, grad_ops(B), config
        self.factor = self.working_scale / loss_scale
        self.eps2 = eps2
        self.hi = (config.grad_max * self.working_scale) ** 2 + eps2
        self.t = 0
        self.m: Value | None = None
        self.v: Value | None = None
        self.names: list[str] | None = None

    def coefficients(self) -> tuple[float, float]:
        """(a1_t, a2_t) for the current step t (module docstring)."""
        b1, b2, t = self.config.beta1, self.config.beta2, self.t
        a1 = b1 * (1 - b1 ** (t - 1)) / (1 - b1**t)
        a2 = b2 * (1 - b2 ** (t - 1)) / (1 - b2**t)
        return a1, a2

    def _flatten(self, tensors: Mapping[str, Value]) -> Value:
        return self.B.concatenate([tensors[n].reshape(-1) for n in self.names], axis=0)

    def _slice_step(self, g: Value, m: Value | None, v: Value | None, a1: float, a2: float):
        """(m^, v^, lr u) of one slice of the flattened vector (all element-wise)."""
        ops = self.ops
        if self.factor != 1.0:
            g = ops.scale(g, self.factor)
        g2 = self.B.square(g)
        if m is None:
            m, v = g, g2
        else:
            m = ops.combine([(m, a1), (g, 1.0 - a1)])
            v = ops.combine([(v, a2), (g2, 1.0 - a2)])
        r = ops.rsqrt(v + self.eps2, self.eps2, self.hi)
        return m, v, ops.scale(m * r, self.config.lr)

    def step(self, params: Mapping[str, Value], grads: Mapping[str, Value]) -> dict[str, Value]:
        """One Adam step for every tensor in ``params`` (``grads`` holds the S-scaled gradients)."""
        names = sorted(params)
        if self.names is not None and names != self.names:
            raise ValueError("Adam.step got other tensors than at its first step")
        missing = [n for n in names if n not in grads]
        if missing:
            raise ValueError(f"no gradient for {missing[:3]}")
        for n in names:
            if tuple(params[n].shape) != tuple(grads[n].shape):
                raise ValueError(
                    f"gradient of {n} has shape {tuple(grads[n].shape)}, not {tuple(params[n].shape)}"
                )
        self.names = names
        B, ops = self.B, self.ops
        with ops.op("adam"):
            self.t += 1
            a1, a2 = self.coefficients()
            g = self._flatten(grads)
            total = g.shape[0]
            ms, vs, updates = [], [], []
            for lo in range(0, total, self.chunk):
                hi = min(total, lo + self.chunk)
                whole = lo == 0 and hi == total
                m, v, u = self._slice_step(
                    g if whole else g[lo:hi],
                    None if self.m is None else (self.m if whole else self.m[lo:hi]),
                    None if self.v is None else (self.v if whole else self.v[lo:hi]),
                    a1,
                    a2,
                )
                ms.append(m)
                vs.append(v)
                updates.append(u)
            if len(updates) == 1:
                self.m, self.v, update = ms[0], vs[0], updates[0]
            else:
                self.m, self.v = B.concatenate(ms, axis=0), B.concatenate(vs, axis=0)
                update = B.concatenate(updates, axis=0)
            out, start = {}, 0
            for n in names:
                size = math.prod(params[n].shape)
                out[n] = params[n] - update[start : start + size].reshape(params[n].shape)
                start += size
            return out
