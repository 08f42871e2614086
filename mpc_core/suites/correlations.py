"""Correlated randomness for the 2-of-2 protocols: one catalogue, a dealer side and a party side.

Everything a dealer-assisted protocol consumes before it opens anything is a *correlation*: values whose
shares are random but whose sum satisfies a relation (c = a b for a Beaver triple).  It is all
input-independent, so it is the offline phase; this module names it and gives it one seam
(:class:`Correlations`), in the spirit of CrypTen's ``TupleProvider`` and SPU's semi2k ``Beaver``.
The online protocols of :mod:`mpc_core.suites.twoparty` only ask for correlations and open masked
values; where the correlations come from (a dealer running beside the parties, as here, or later a
precomputed cache, a separate TTP process or an OT/HE generator) is the provider's business.

The catalogue (one method per correlation, all shares in Z_2^64 unless said otherwise):

    mul_triple(a, b, out)        a, b, c = a * b (broadcasting)             elementwise products
    matmul_triple(a, b, out)     a, b, c = a @ b                            matrix products
    fixed_matmul_triple(...)     a, c = a @ B_key (+ B_key's share once)    products with a weight
    square_pair(shape)           a, c = a^2                                 squares
    and_triple(n)                bits a, b, c = a & b (uint8 0/1)           the msb carry tree
    bit_pair(shape)              r as an XOR bit and as a ring integer     bit -> arithmetic conversion
    trunc_pair(shape)            own bit, shares of a b for the two bits    exact truncation
    trig_pair(size, P, k, f, n)  t mod 2^P, tables [cos kt; sin kt]         the one-round trig protocol

Dealing (both sides make identical calls in identical order, SPMD): the dealer derives P0's part of
every correlation from the seed it shares with P0 and P1's *random* parts from the seed it shares with
P1, so it sends P1 only the corrections (for a triple just c - c0).  A party never learns a mask
together with the value it masks: the dealer never receives anything, and never sees an opened value.
Dealer messages are offline: they count as bytes, never as rounds.

The party side returns this party's shares; the dealer side deals and returns None (it keeps nothing
except the masks of fixed operands, which later triples with the same key reuse).
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from mpc_core.ring import RING_DTYPE, ring_matmul

if TYPE_CHECKING:
    from mpc_core.context import Context

Shape = tuple[int, ...]
_ONE = np.uint64(1)


class Triple(NamedTuple):
    """This party's shares of a Beaver triple (a, b, c = op(a, b)); ``b`` is None for a fixed operand
    whose mask was dealt earlier."""

    a: np.ndarray
    b: np.ndarray | None
    c: np.ndarray


def table_chunks(size: int, chunk: int) -> Iterator[slice]:
    """The slices of a flattened input whose trig tables are dealt together (at least one, maybe empty)."""
    for start in range(0, max(size, 1), chunk):
        yield slice(start, min(size, start + chunk))


def harmonic_phases(base: np.ndarray, ks: np.ndarray) -> Iterator[np.ndarray]:
    """Yield exp(i k base) for each k in ``ks`` (in order), one array at a time.

    Successive harmonics come from the previous one times exp(i (k_j - k_{j-1}) base), one complex
    product instead of a cos and a sin per harmonic; the relative error grows by about 1e-16 per step.
    """
    steps: dict[float, np.ndarray] = {}
    phase = np.exp(1j * ks[0] * base)
    yield phase
    for previous, k in itertools.pairwise(ks):
        gap = float(k - previous)
        if gap not in steps:
            steps[gap] = np.exp(1j * gap * base)
        phase = phase * steps[gap]
        yield phase


def encode_public(values: np.ndarray, scale: float) -> np.ndarray:
    """Public floats as ring elements with the given scale (round to nearest)."""
    return np.rint(values * scale).astype(np.int64).view(RING_DTYPE)


def trig_tables(angles: np.ndarray, ks: np.ndarray, scale: float) -> np.ndarray:
    """[cos k_i t; sin k_i t] for base angles t, encoded with ``scale``: shape (2K, len(angles))."""
    count = len(ks)
    out = np.empty((2 * count, angles.size), dtype=RING_DTYPE)
    for i, phase in enumerate(harmonic_phases(angles, ks)):
        out[i], out[count + i] = encode_public(phase.real, scale), encode_public(phase.imag, scale)
    return out


class Correlations(ABC):
    """The catalogue of correlations one participant of a 2-of-2 protocol draws (see module docstring).

    Every method returns this party's shares at a party and None at the dealer.
    """

    @abstractmethod
    def mul_triple(self, a_shape: Shape, b_shape: Shape, out_shape: Shape) -> Triple | None:
        """(a, b, c = a * b) with numpy broadcasting of a's and b's shapes."""

    @abstractmethod
    def matmul_triple(self, a_shape: Shape, b_shape: Shape, out_shape: Shape) -> Triple | None:
        """(a, b, c = a @ b)."""

    @abstractmethod
    def fixed_matmul_triple(
        self, a_shape: Shape, key: str, b_shape: Shape, out_shape: Shape
    ) -> Triple | None:
        """(a, B_key's share or None, c = a @ B_key) for a fixed right operand named ``key``.

        B_key is dealt once per key, the first time the key is asked for (then ``b`` is this party's
        share, which the caller opens against the operand once); later triples reuse it (``b`` None).
        """

    @abstractmethod
    def square_pair(self, shape: Shape) -> tuple[np.ndarray, np.ndarray] | None:
        """(a, c = a^2)."""

    @abstractmethod
    def and_triple(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """n bit triples (a, b, c = a & b), XOR-shared, as uint8 0/1 arrays of length n."""

    @abstractmethod
    def bit_pair(self, shape: Shape) -> tuple[np.ndarray, np.ndarray] | None:
        """A random bit r twice: XOR-shared (ring words 0/1) and additively shared (ring integers)."""

    @abstractmethod
    def trunc_pair(self, shape: Shape) -> tuple[np.ndarray, np.ndarray] | None:
        """(this party's random bit, additive shares of a b) for the bits a of P0 and b of P1.

        Each party knows its own bit in the clear (it masks its share's top bit with it); only the
        product is shared.
        """

    @abstractmethod
    def trig_pair(
        self, size: int, period_bits: int, ks: np.ndarray, frac_bits: int, chunk: int
    ) -> tuple[np.ndarray, Iterator[np.ndarray]] | None:
        """(shares of t uniform mod 2^period_bits over ``size`` elements, the tables chunk by chunk).

        The tables are [cos k t; sin k t] (f = ``frac_bits``), shape (2K, chunk) for each slice of
        :func:`table_chunks`; the iterator yields them in order and must be consumed fully, before the
        next correlation is asked for.
        """


class PartyCorrelations(Correlations):
    """A compute party's side: P0 derives its shares from its seed with the dealer, P1 draws its random
    parts from its own seed with the dealer and receives the corrections."""

    def __init__(self, ctx: Context, role: int, dealer: int) -> None:
        self.ctx = ctx
        self.role = role
        self.dealer = dealer
        self._fixed_keys: set[str] = set()

    def _random(self, shape: Shape) -> np.ndarray:
        return self.ctx.prg_with(self.dealer).ring(shape)

    def _dealt(self, shape: Shape, label: str) -> np.ndarray:
        if self.role == 0:
            return self.ctx.prg_with(self.dealer).ring(shape)
        return self.ctx.recv(self.dealer, shape, RING_DTYPE, label=label)

    def _bits(self, n: int) -> np.ndarray:
        raw = self.ctx.prg_with(self.dealer).random_bytes(-(-n // 8))
        return np.unpackbits(np.frombuffer(raw, np.uint8), count=n)

    def mul_triple(self, a_shape, b_shape, out_shape):
        a, b = self._random(a_shape), self._random(b_shape)
        return Triple(a, b, self._dealt(out_shape, "mul_triple"))

    def matmul_triple(self, a_shape, b_shape, out_shape):
        a, b = self._random(a_shape), self._random(b_shape)
        return Triple(a, b, self._dealt(out_shape, "matmul_triple"))

    def fixed_matmul_triple(self, a_shape, key, b_shape, out_shape):
        a = self._random(a_shape)
        b = None
        if key not in self._fixed_keys:
            self._fixed_keys.add(key)
            b = self._random(b_shape)
        return Triple(a, b, self._dealt(out_shape, "matmul_triple"))

    def square_pair(self, shape):
        a = self._random(shape)
        return a, self._dealt(shape, "square_pair")

    def and_triple(self, n):
        a, b = self._bits(n), self._bits(n)
        if self.role == 0:
            c = self._bits(n)
        else:
            c = np.unpackbits(
                self.ctx.recv(self.dealer, (-(-n // 8),), np.uint8, label="and_triple"), count=n
            )
        return a, b, c

    def bit_pair(self, shape):
        r_bool = self._random(shape) & _ONE
        return r_bool, self._dealt(shape, "bit_pair")

    def trunc_pair(self, shape):
        own = self.ctx.prg_with(self.dealer).bits(shape)
        return own, self._dealt(shape, "trunc_pair")

    def trig_pair(self, size, period_bits, ks, frac_bits, chunk):
        t = self._random((size,)) & np.uint64((1 << period_bits) - 1)
        count = len(ks)

        def tables() -> Iterator[np.ndarray]:
            for part in table_chunks(size, chunk):
                yield self._dealt((2 * count, part.stop - part.start), "trig_table")

        return t, tables()


class DealerCorrelations(Correlations):
    """The dealer's side: draws both parties' random parts, computes the relation, sends P1 corrections."""

    def __init__(self, ctx: Context, p0: int, p1: int) -> None:
        self.ctx = ctx
        self.p0, self.p1 = p0, p1
        self._fixed: dict[str, np.ndarray] = {}  # key -> B_key

    def _value(self, shape: Shape) -> np.ndarray:
        """A uniformly random shared value: P0's part plus P1's part, drawn as the parties draw them."""
        return self.ctx.prg_with(self.p0).ring(shape) + self.ctx.prg_with(self.p1).ring(shape)

    def _deal(self, shape: Shape, make: Callable[[], np.ndarray], label: str) -> None:
        """P0's share from its seed, P1's as the correction value - share0 (``make`` runs after the draw)."""
        share0 = self.ctx.prg_with(self.p0).ring(shape)
        self.ctx.send(self.p1, make() - share0, label=label)

    def mul_triple(self, a_shape, b_shape, out_shape):
        a, b = self._value(a_shape), self._value(b_shape)
        self._deal(out_shape, lambda: a * b, "mul_triple")

    def matmul_triple(self, a_shape, b_shape, out_shape):
        a, b = self._value(a_shape), self._value(b_shape)
        self._deal(out_shape, lambda: ring_matmul(a, b), "matmul_triple")

    def fixed_matmul_triple(self, a_shape, key, b_shape, out_shape):
        if key in self._fixed and self._fixed[key].shape != tuple(b_shape):
            raise ValueError(
                f"fixed operand {key!r} was registered with shape {self._fixed[key].shape}, got {b_shape}"
            )
        a = self._value(a_shape)
        if key not in self._fixed:
            self._fixed[key] = self._value(b_shape)
        b = self._fixed[key]
        self._deal(out_shape, lambda: ring_matmul(a, b), "matmul_triple")

    def square_pair(self, shape):
        a = self._value(shape)
        self._deal(shape, lambda: a * a, "square_pair")

    def and_triple(self, n):
        nbytes = -(-n // 8)

        def draw(peer: int) -> np.ndarray:
            return np.unpackbits(
                np.frombuffer(self.ctx.prg_with(peer).random_bytes(nbytes), np.uint8), count=n
            )

        a0, b0, c0 = draw(self.p0), draw(self.p0), draw(self.p0)
        a1, b1 = draw(self.p1), draw(self.p1)
        self.ctx.send(self.p1, np.packbits(((a0 ^ a1) & (b0 ^ b1)) ^ c0), label="and_triple")

    def bit_pair(self, shape):
        r0, r1 = self.ctx.prg_with(self.p0).ring(shape), self.ctx.prg_with(self.p1).ring(shape)
        self._deal(shape, lambda: (r0 ^ r1) & _ONE, "bit_pair")

    def trunc_pair(self, shape):
        a = self.ctx.prg_with(self.p0).bits(shape)
        b = self.ctx.prg_with(self.p1).bits(shape)
        self._deal(shape, lambda: a * b, "trunc_pair")

    def trig_pair(self, size, period_bits, ks, frac_bits, chunk):
        mask = np.uint64((1 << period_bits) - 1)
        base = (2 * np.pi / 2.0**period_bits) * (self._value((size,)) & mask).astype(np.float64)
        scale = float(1 << frac_bits)
        count = len(ks)
        for part in table_chunks(size, chunk):
            angles = base[part]
            self._deal(
                (2 * count, angles.size), lambda angles=angles: trig_tables(angles, ks, scale), "trig_table"
            )
