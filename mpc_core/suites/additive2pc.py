"""The ``2pc`` suite: 2-of-2 additive sharing between P0 and P1, correlated randomness from dealer D.

Shares have one slot.  All products and kernels are the dealer-assisted protocols of
:mod:`mpc_core.suites.twoparty`: a compute party runs their online side, the dealer their dealing side
(chosen once, when the suite is built).  Truncation is exact (one round) or local, as the fixed-point
parameters say, also chosen once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from mpc_core.prg import PRG
from mpc_core.ring import RING_DTYPE
from mpc_core.suites.base import Suite
from mpc_core.suites.twoparty import two_party
from mpc_core.transport.base import ProtocolError

if TYPE_CHECKING:
    from mpc_core.context import Context

PARTIES = (0, 1)
DEALER = 2


class Additive2PC(Suite):
    name = "2pc"
    participants = 3
    compute_parties = PARTIES
    dealer = DEALER
    slots = 1

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.core = two_party(ctx, *PARTIES, DEALER)
        self.truncate_raw = self.core.truncate  # the variant FixedPoint.truncation chose

    # ------------------------------------------------------------------ sharing
    @staticmethod
    def split(secret: np.ndarray, prg: PRG) -> list[np.ndarray]:
        secret = np.asarray(secret, dtype=RING_DTYPE)
        r = prg.ring(secret.shape)
        return [(secret - r)[None], r[None]]

    @staticmethod
    def combine(shares: Sequence[np.ndarray]) -> np.ndarray:
        if len(shares) != 2 or any(s.shape[0] != 1 for s in shares):
            raise ProtocolError("2pc reconstruction needs one single-slot share from each of P0 and P1")
        if shares[0].shape != shares[1].shape:
            raise ProtocolError(f"2pc shares disagree in shape: {shares[0].shape} vs {shares[1].shape}")
        return shares[0][0] + shares[1][0]

    def input(self, secret: np.ndarray | None, shape: tuple[int, ...], owner: int) -> np.ndarray:
        """The owner masks with the PRG it shares with the other party: no communication at all."""
        if owner not in PARTIES:
            raise ValueError(f"2pc inputs come from P0 or P1, not participant {owner} (the dealer has none)")
        me = self.ctx.participant
        if self.ctx.is_dealer:
            return self.dummy(shape)
        mask = self.ctx.prg_with(1 - me).ring(shape)
        if me == owner:
            secret = np.asarray(secret, dtype=RING_DTYPE)
            if secret.shape != tuple(shape):
                raise ValueError(f"input has shape {secret.shape}, declared {tuple(shape)}")
            return (secret - mask)[None]
        return mask[None]

    def reveal(self, data: np.ndarray, check: bool = True) -> np.ndarray:
        (value,) = self.core.open([data[0]], "reveal")
        return value

    def add_public(self, data: np.ndarray, value: np.ndarray) -> np.ndarray:
        shape = np.broadcast_shapes(data.shape[1:], np.shape(value))
        out = np.array(np.broadcast_to(data, (1, *shape)))
        if self.ctx.participant == 0:
            out[0] += np.asarray(value, dtype=RING_DTYPE)
        return out

    # ------------------------------------------------------------------ products
    def mul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self.core.mul(a[0], b[0])[None]

    def square(self, a: np.ndarray) -> np.ndarray:
        return self.core.square(a[0])[None]

    def matmul(self, a: np.ndarray, b: np.ndarray, fixed_key: str | None = None) -> np.ndarray:
        return self.core.matmul(a[0], b[0], fixed_key)[None]

    def truncate(self, data: np.ndarray, bits: int) -> np.ndarray:
        return self.truncate_raw(data[0], bits)[None]

    # ------------------------------------------------------------------ kernels
    def trig(self, data, period_bits, harmonics, frac_bits):
        cos, sin = self.core.trig(data[0], period_bits, harmonics, frac_bits)
        return [c[None] for c in cos], [s[None] for s in sin]

    def fourier(self, data, period_bits, harmonics, cos_coeffs, sin_coeffs, frac_bits, linear=()):
        pairs = [(y[0], w) for y, w in linear]
        out = self.core.fourier(data[0], period_bits, harmonics, cos_coeffs, sin_coeffs, frac_bits, pairs)
        return out[None]

    def msb(self, data: np.ndarray, low_bit: int = 0, sign_bit: int = 63) -> np.ndarray:
        return self.core.msb(data[0], low_bit, sign_bit)[None]
