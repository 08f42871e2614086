"""The ``3pc`` suite: replicated secret sharing (ABY3, semi-honest, honest majority), no dealer.

x = x0 + x1 + x2 and party i holds (x_i, x_{i+1}) (indices mod 3), so any two parties can reconstruct
and no single party learns anything.

* Products are local, z_i = x_i y_i + x_i y_{i+1} + x_{i+1} y_i plus a PRF zero-share
  alpha_i = F(k_{i,i+1}) - F(k_{i-1,i}), followed by one reshare: P_i sends z_i to P_{i-1}
  (one ring element per output element per party).
* Truncation is ABY3's semi-honest share truncation (§5.1.1, Pi_trunc1): x = (x0 + x1) + x2 is a 2-of-2
  sharing between P0 and {P1, P2}; P0 computes a = (x0 + x1) >> k, P1 and P2 both compute
  b = -((-x2) >> k); the new shares are (a - r, r, b) with r from the PRF P0 and P1 share, and P0 sends
  a - r to P2: one round, one element.  Same error bound as the 2pc local truncation.  (It needs no
  truncation pairs, so no generator and no offline traffic.)
* The nonlinear kernels (trig, msb) run the 2-of-2 protocols of :mod:`.twoparty` between P0 and P1 with
  P2 as the generator, which never sees an opened value: converting to 2-of-2 is local (P0 holds
  x0 + x1, P1 holds x2) and back costs one round (two elements per output element, both to P2, masked
  by PRF values P2 does not know).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from mpc_core.context import flatten, split_back
from mpc_core.prg import PRG
from mpc_core.ring import RING_DTYPE, ring_matmul
from mpc_core.suites.base import Suite
from mpc_core.suites.twoparty import truncate_share, two_party
from mpc_core.transport.base import ProtocolError

if TYPE_CHECKING:
    from mpc_core.context import Context


class Replicated3PC(Suite):
    name = "3pc"
    participants = 3
    compute_parties = (0, 1, 2)
    dealer = None
    slots = 2

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        me = ctx.participant
        self.next = (me + 1) % 3
        self.prev = (me - 1) % 3
        self.core = two_party(ctx, 0, 1, 2)  # P2 generates for the 2-of-2 kernels between P0 and P1
        self._fixed: dict[str, np.ndarray] = {}  # key -> b0 + b1 of a fixed right operand
        # The truncation variant, chosen once (FixedPoint.truncation).
        self._truncate = self._truncate_exact if ctx.fp.truncation == "exact" else self._truncate_trunc1

    # ------------------------------------------------------------------ sharing
    @staticmethod
    def split(secret: np.ndarray, prg: PRG) -> list[np.ndarray]:
        secret = np.asarray(secret, dtype=RING_DTYPE)
        x0, x1 = prg.ring(secret.shape), prg.ring(secret.shape)
        parts = [x0, x1, secret - x0 - x1]
        return [np.stack([parts[i], parts[(i + 1) % 3]]) for i in range(3)]

    @staticmethod
    def combine(shares: Sequence[np.ndarray]) -> np.ndarray:
        if len(shares) != 3 or any(s.shape[0] != 2 for s in shares):
            raise ProtocolError("3pc reconstruction needs one two-slot share from each of P0, P1 and P2")
        if len({s.shape for s in shares}) != 1:
            raise ProtocolError("3pc shares disagree in shape")
        for i in range(3):
            if not np.array_equal(shares[i][1], shares[(i + 1) % 3][0]):
                raise ProtocolError(
                    f"3pc shares are inconsistent: the two copies of share {(i + 1) % 3} "
                    f"(held by P{i} and P{(i + 1) % 3}) disagree"
                )
        return shares[0][0] + shares[1][0] + shares[2][0]

    def input(self, secret: np.ndarray | None, shape: tuple[int, ...], owner: int) -> np.ndarray:
        if owner not in range(3):
            raise ValueError(f"3pc inputs come from P0, P1 or P2, not participant {owner}")
        me = self.ctx.participant
        if me == owner:
            secret = np.asarray(secret, dtype=RING_DTYPE)
            if secret.shape != tuple(shape):
                raise ValueError(f"input has shape {secret.shape}, declared {tuple(shape)}")
            shares = self.split(secret, self.ctx.private_prg)
            self.ctx.exchange({p: shares[p] for p in range(3) if p != me}, {}, "input")
            return shares[me]
        return self.ctx.exchange({}, {owner: ((2, *shape), RING_DTYPE)}, "input")[owner]

    def reveal(self, data: np.ndarray, check: bool = True) -> np.ndarray:
        """Each party gets its missing share x_{i+2}; with ``check`` from both holders, compared."""
        shape = data.shape[1:]
        sends = {self.prev: data[1]}
        receives = {self.next: (shape, RING_DTYPE)}
        if check:
            sends[self.next] = data[0]
            receives[self.prev] = (shape, RING_DTYPE)
        got = self.ctx.exchange(sends, receives, "reveal")
        missing = got[self.next]
        if check and not np.array_equal(missing, got[self.prev]):
            raise ProtocolError(
                f"P{self.ctx.participant}: the two copies of a share received while opening disagree "
                "(a party is faulty or the parties hold different data)"
            )
        return data[0] + data[1] + missing

    def add_public(self, data: np.ndarray, value: np.ndarray) -> np.ndarray:
        shape = np.broadcast_shapes(data.shape[1:], np.shape(value))
        out = np.array(np.broadcast_to(data, (2, *shape)))
        slot = {0: 0, 2: 1}.get(self.ctx.participant)  # x_0 is held by P0 (slot 0) and P2 (slot 1)
        if slot is not None:
            out[slot] += np.asarray(value, dtype=RING_DTYPE)
        return out

    # ------------------------------------------------------------------ products
    def _zero_share(self, shape: tuple[int, ...]) -> np.ndarray:
        return self.ctx.prg_with(self.next).ring(shape) - self.ctx.prg_with(self.prev).ring(shape)

    def _reshare(self, z: np.ndarray) -> np.ndarray:
        """3-out-of-3 shares z_i (already masked by a zero share) to replicated ones, one round."""
        (theirs,) = self.ctx.rotate([z], "reshare")
        return np.stack([z, theirs])

    def mul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        z = a[0] * b[0] + a[0] * b[1] + a[1] * b[0]
        return self._reshare(z + self._zero_share(z.shape))

    def square(self, a: np.ndarray) -> np.ndarray:
        z = a[0] * a[0] + ((a[0] * a[1]) << np.uint64(1))
        return self._reshare(z + self._zero_share(z.shape))

    def matmul(self, a: np.ndarray, b: np.ndarray, fixed_key: str | None = None) -> np.ndarray:
        if fixed_key is None:
            both = b[0] + b[1]
        else:
            if fixed_key not in self._fixed:
                self._fixed[fixed_key] = b[0] + b[1]
            both = self._fixed[fixed_key]
            if both.shape != b.shape[1:]:
                raise ValueError(f"fixed operand {fixed_key!r} was registered with shape {both.shape}")
        z = ring_matmul(a[0], both) + ring_matmul(a[1], b[0])
        return self._reshare(z + self._zero_share(z.shape))

    def truncate(self, data: np.ndarray, bits: int) -> np.ndarray:
        """Exact mode: the 2-of-2 exact truncation between P0 and P1 with P2 as generator, then back to
        replicated shares (two rounds).  Probabilistic mode: ABY3 Pi_trunc1 (one round, see module doc)."""
        return self._truncate(data, bits)

    def _truncate_exact(self, data: np.ndarray, bits: int) -> np.ndarray:
        (out,) = self._from_2of2([self.core.truncate_exact(self._to_2of2(data), bits)])
        return out

    def _truncate_trunc1(self, data: np.ndarray, bits: int) -> np.ndarray:
        me = self.ctx.participant
        if me == 0:
            a = truncate_share(data[0] + data[1], bits, role=0)
            r = self.ctx.prg_with(1).ring(a.shape)
            self.ctx.exchange({2: a - r}, {}, "trunc1")
            return np.stack([a - r, r])
        if me == 1:
            r = self.ctx.prg_with(0).ring(data.shape[1:])
            b = truncate_share(data[1], bits, role=1)
            self.ctx.exchange({}, {}, "trunc1")
            return np.stack([r, b])
        b = truncate_share(data[0], bits, role=1)
        t0 = self.ctx.exchange({}, {0: (b.shape, RING_DTYPE)}, "trunc1")[0]
        return np.stack([b, t0])

    # ------------------------------------------------------------------ 2-of-2 conversions and kernels
    def _to_2of2(self, data: np.ndarray) -> np.ndarray:
        """P0: x0 + x1, P1: x2, P2 (the generator): a placeholder.  Local."""
        me = self.ctx.participant
        if me == 0:
            return data[0] + data[1]
        if me == 1:
            return data[1]
        return np.zeros_like(data[0])

    def _from_2of2(self, values: Sequence[np.ndarray]) -> list[np.ndarray]:
        """2-of-2 shares held by P0 and P1 back to replicated shares, in one round.

        t1 = rho, t0 = u0 - rho - sigma, t2 = u1 + sigma with rho, sigma from the PRF P0 and P1 share;
        P2 receives t0 and t2, each masked by a value it does not know.
        """
        me = self.ctx.participant
        flat = flatten(values)
        if me in (0, 1):
            prg = self.ctx.prg_with(1 - me)
            rho, sigma = prg.ring(flat.shape), prg.ring(flat.shape)
            if me == 0:
                t0 = flat - rho - sigma
                self.ctx.exchange({2: t0}, {}, "to_replicated")
                first, second = t0, rho
            else:
                t2 = flat + sigma
                self.ctx.exchange({2: t2}, {}, "to_replicated")
                first, second = rho, t2
        else:
            got = self.ctx.exchange(
                {}, {0: (flat.shape, RING_DTYPE), 1: (flat.shape, RING_DTYPE)}, "to_replicated"
            )
            first, second = got[1], got[0]
        pairs = zip(split_back(first, values), split_back(second, values), strict=True)
        return [np.stack([a, b]) for a, b in pairs]

    def trig(self, data, period_bits, harmonics, frac_bits):
        cos, sin = self.core.trig(self._to_2of2(data), period_bits, harmonics, frac_bits)
        converted = self._from_2of2(cos + sin)
        return converted[: len(cos)], converted[len(cos) :]

    def fourier(self, data, period_bits, harmonics, cos_coeffs, sin_coeffs, frac_bits, linear=()):
        pairs = [(self._to_2of2(y), w) for y, w in linear]
        out = self.core.fourier(
            self._to_2of2(data), period_bits, harmonics, cos_coeffs, sin_coeffs, frac_bits, pairs
        )
        (converted,) = self._from_2of2([out])
        return converted

    def msb(self, data: np.ndarray, low_bit: int = 0, sign_bit: int = 63) -> np.ndarray:
        (bit,) = self._from_2of2([self.core.msb(self._to_2of2(data), low_bit, sign_bit)])
        return bit
