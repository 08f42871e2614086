"""2-of-2 additive protocols between two parties, with a third participant dealing their correlations.

The 2pc suite runs everything here with P0, P1 and the dealer D.  The 3pc suite reuses the nonlinear
kernels (trig, msb) and the exact truncation with P2 as the generator: a replicated sharing is a 2-of-2
sharing between P0 and P1 at no cost, and P2, which never sees an opened value of those kernels, plays
the dealer (DESIGN.md §3).

Two implementations of one set of kernels, chosen once per participant by :func:`two_party`:

* :class:`TwoPartyCore`, a compute party's *online* protocol: it asks its
  :class:`~mpc_core.suites.correlations.Correlations` for what it consumes, opens masked values and
  computes locally.  Nothing in it asks "am I the dealer?".
* :class:`TwoPartyDealer`, the dealer's side: for each kernel it asks its dealer-side correlations for
  the same correlations in the same order (which deals them) and returns placeholders of the output's
  shape.  It never receives anything.

Products use one formula for every bilinear operation ``op`` (elementwise product, matrix product, AND):
with E = x - a and F = y - b opened, each party sets z_i = op(E, y_i) + op(a_i, F) + c_i, which sums to
op(E, y) + op(a, y - b) + op(a, b) = op(x, y).  When y is a fixed operand (a weight), F is opened once
and cached, so later calls open only E.

Truncation (SecureML Thm 1, made unbiased as in SPU): P0 computes x0 >> k, P1 computes -((-x1) >> k).
With x0 uniform the result is x >> k up to one unit in the last place, except with probability about
|x| / 2^63 per element, when it is off by 2^(64 - k) (see docs/engine.md for the figures).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from mpc_core.context import flatten, split_back
from mpc_core.ring import EXACT_TRUNC_BITS, RING_DTYPE, ring_matmul, ring_scalar, to_signed
from mpc_core.suites.correlations import (
    Correlations,
    DealerCorrelations,
    PartyCorrelations,
    encode_public,
    harmonic_phases,
)

if TYPE_CHECKING:
    from mpc_core.context import Context

_ONE = np.uint64(1)
#: Fractional bits of the public factors of a Fourier series under exact truncation (raw values
#: |series| 2^(f + 20) stay below 2^62 for |series| < 2^26).
SERIES_BITS = 20
#: Elements per chunk of dealt trig tables (2K ring words per element): bounds their memory.
TABLE_CHUNK = 1 << 18
#: Bit positions 0..62 of a ring element: the low bits whose carry decides the sign bit.
_BIT_POSITIONS = np.arange(63, dtype=np.uint64)

__all__ = [
    "SERIES_BITS",
    "TABLE_CHUNK",
    "TwoPartyCore",
    "TwoPartyDealer",
    "carry_tree_levels",
    "harmonic_phases",
    "truncate_share",
    "two_party",
]


def truncate_share(share: np.ndarray, bits: int, role: int) -> np.ndarray:
    """One party's local truncation of its 2-of-2 share (SPU's unbiased SecureML variant)."""
    if role == 0:
        return (to_signed(share) >> bits).view(RING_DTYPE)
    return (-((to_signed(-share)) >> bits)).view(RING_DTYPE)


def carry_tree_levels(bits: int) -> list[int]:
    """How many AND gates per element each round of the msb carry tree over ``bits`` bit positions uses.

    Round one computes the generate bits (one AND per position); every later round merges adjacent
    blocks (two ANDs per merge, one for the last merge, which needs only the carry).
    """
    levels, blocks = [bits], bits
    while blocks > 1:
        pairs = blocks // 2
        if blocks == 2:
            levels.append(1)
            break
        levels.append(2 * pairs)
        blocks = pairs + blocks % 2
    return levels


def two_party(ctx: Context, p0: int, p1: int, dealer: int) -> TwoPartyCore | TwoPartyDealer:
    """This participant's side of the 2-of-2 protocols between ``p0`` and ``p1`` dealt by ``dealer``."""
    me = ctx.participant
    if me == dealer:
        return TwoPartyDealer(ctx, DealerCorrelations(ctx, p0, p1), ctx.fp.truncation == "exact")
    if me not in (p0, p1):
        raise ValueError(f"participant {me} is neither party ({p0}, {p1}) nor the dealer ({dealer})")
    role = 0 if me == p0 else 1
    corr = PartyCorrelations(ctx, role, dealer)
    return TwoPartyCore(ctx, role, p1 if role == 0 else p0, corr, ctx.fp.truncation == "exact")


class TwoPartyCore:
    """A compute party's online 2-of-2 protocols (``role`` 0 or 1; ``other`` is the other party)."""

    def __init__(
        self, ctx: Context, role: int, other: int, corr: Correlations, exact_truncation: bool
    ) -> None:
        self.ctx = ctx
        self.role = role
        self.other = other
        self.corr = corr
        self._fixed: dict[str, np.ndarray] = {}  # key -> opened F = W - B_key
        # Variants chosen once (FixedPoint.truncation): exact truncation, or the local SecureML one.
        self.truncate = self.truncate_exact if exact_truncation else self.truncate_local
        self.series_bits = SERIES_BITS if exact_truncation else None

    # ------------------------------------------------------------------ opening
    def open(self, shares: Sequence[np.ndarray], label: str = "open", xor: bool = False) -> list[np.ndarray]:
        """Open several 2-of-2 shared arrays (one dtype) in one round, under the name ``label``."""
        theirs = self.ctx.swap(self.other, shares, label)
        if xor:
            return [mine ^ t for mine, t in zip(shares, theirs, strict=True)]
        return [mine + t for mine, t in zip(shares, theirs, strict=True)]

    def swap_bits(self, bits: Sequence[np.ndarray], label: str) -> list[np.ndarray]:
        """Send this party's bits (0/1 words) packed eight to a byte; the other party's bits (uint8) back."""
        flat = flatten(bits).astype(np.uint8)
        packed = np.packbits(flat)
        (theirs,) = self.ctx.swap(self.other, [packed], label)
        return split_back(np.unpackbits(theirs, count=flat.size), bits)

    # ------------------------------------------------------------------ products
    def mul(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Shares of x * y (broadcasting) from a Beaver triple: one round, opens E and F."""
        a, b, c = self.corr.mul_triple(x.shape, y.shape, np.broadcast_shapes(x.shape, y.shape))
        e, f = self.open([x - a, y - b], "open(x-a,y-b)")
        return e * y + a * f + c

    def square(self, x: np.ndarray) -> np.ndarray:
        """x^2 from a dealt pair (a, a^2): open only E = x - a; z_i = E x_i + a_i E + c_i."""
        a, c = self.corr.square_pair(x.shape)
        (e,) = self.open([x - a], "open(x-a)")
        return e * x + a * e + c

    def matmul(self, x: np.ndarray, y: np.ndarray, fixed_key: str | None = None) -> np.ndarray:
        """x @ y; a fixed right operand (``fixed_key``) opens F = y - B_key once and then only E."""
        out_shape = (*np.broadcast_shapes(x.shape[:-2], y.shape[:-2]), x.shape[-2], y.shape[-1])
        if fixed_key is None:
            a, b, c = self.corr.matmul_triple(x.shape, y.shape, out_shape)
            e, f = self.open([x - a, y - b], "open(x-a,y-b)")
        else:
            if fixed_key in self._fixed and self._fixed[fixed_key].shape != y.shape:
                raise ValueError(
                    f"fixed operand {fixed_key!r} was registered with shape {self._fixed[fixed_key].shape}, "
                    f"got {y.shape}"
                )
            a, b, c = self.corr.fixed_matmul_triple(x.shape, fixed_key, y.shape, out_shape)
            if b is not None:  # first use of the key: open its mask once
                (self._fixed[fixed_key],) = self.open([y - b], "open(w-b)")
            f = self._fixed[fixed_key]
            (e,) = self.open([x - a], "open(x-a)")
        return ring_matmul(e, y) + ring_matmul(a, f) + c

    # ------------------------------------------------------------------ truncation
    def truncate_local(self, x: np.ndarray, bits: int) -> np.ndarray:
        """Probabilistic truncation, no communication (see the module docstring for its error)."""
        return truncate_share(x, bits, self.role)

    def truncate_exact(self, x: np.ndarray, bits: int) -> np.ndarray:
        """Truncation that cannot wrap, for raw values |x| < 2^62; one round, two bits per element.

        P0 adds 2^62 - 1 to its share, so x' = x - 1 + 2^62 lies in [0, 2^63).  Then the wrap of the
        sharing, w = [x0' + x1' >= 2^64], is m0 OR m1 for the top bits m0, m1 of the two shares (with
        msb(x') = 0 the carry into bit 63 equals m0 XOR m1, and w = maj(m0, m1, m0 XOR m1) = m0 OR m1), so
        floor(x0' / 2^k) + floor(x1' / 2^k) - w 2^(64 - k) = floor(x' / 2^k) - c with a low carry c in {0, 1}.
        OR of two private bits: each party masks its bit with a dealt random bit (a known to P0, b to P1),
        they swap e = m0 ^ a and f = m1 ^ b (packed bits, one round), and with dealt shares of a b,
        m0 m1 = e f + f a (1 - 2e) + e b (1 - 2f) + a b (1 - 2e)(1 - 2f) is linear in what each party
        knows.  P0 finally adds 1 - 2^(62 - k).  With rho = x mod 2^k the result is x / 2^k + 1 - c - rho 2^-k
        where P[c = 0] = rho / 2^k (rho = 0 gives x / 2^k exactly): strictly within one unit and unbiased.
        """
        own_mask, ab = self.corr.trunc_pair(x.shape)
        shifted = x + np.uint64((1 << EXACT_TRUNC_BITS) - 1) if self.role == 0 else x
        top = shifted >> np.uint64(63)
        mine = top ^ own_mask
        (theirs,) = self.swap_bits([mine], "open(top^r)")
        theirs = theirs.astype(RING_DTYPE)
        e, f = (mine, theirs) if self.role == 0 else (theirs, mine)
        one = np.ones_like(e)
        sign_e, sign_f = one - (e << _ONE), one - (f << _ONE)
        if self.role == 0:
            both = e * f + f * own_mask * sign_e + ab * sign_e * sign_f
        else:
            both = e * own_mask * sign_f + ab * sign_e * sign_f
        wrap = top - both
        out = (shifted >> np.uint64(bits)) - (wrap << np.uint64(64 - bits))
        if self.role == 0:
            out += ring_scalar(1 - (1 << (EXACT_TRUNC_BITS - bits)))
        return out

    # ------------------------------------------------------------------ bits
    def bit_to_arith(self, bit: np.ndarray) -> np.ndarray:
        """XOR-shared bits (0/1 in uint64) to additive shares of the same bits, one round.

        The dealer deals r both ways; open c = b ^ r (one byte per element); b = c + r - 2 c r.
        """
        r_bool, r_arith = self.corr.bit_pair(bit.shape)
        (c,) = self.open([(bit ^ r_bool).astype(np.uint8)], "open(b^r)", xor=True)
        c = c.astype(RING_DTYPE)
        own_c = c if self.role == 0 else np.zeros_like(c)
        return own_c + r_arith - (c << _ONE) * r_arith

    def msb(self, x: np.ndarray, low_bit: int = 0, sign_bit: int = 63) -> np.ndarray:
        """Additive shares of the sign bit of x = x0 + x1 (mod 2^64), by a carry tree on packed bits.

        msb(x) = x0[63] ^ x1[63] ^ c, with c the carry into bit 63 when adding the low 63 bits of the two
        shares.  Each party holds one addend, so per bit p_i = a_i ^ b_i is free and g_i = a_i b_i takes one
        AND; a binary tree then merges adjacent blocks, (G, P)_hi o (G, P)_lo = (G_hi ^ P_hi G_lo,
        P_hi P_lo) (XOR is OR here: a block cannot both generate and propagate), two ANDs per merge.
        63 + 2 * 62 = 187 bit ANDs in 1 + 6 rounds, each opening two bits per party (packed), then one round
        to convert the bit: eight rounds, about 47 bytes per element per party.

        A window (``low_bit``, ``sign_bit``) reads bit ``sign_bit`` of floor(x0 / 2^low) + floor(x1 / 2^low)
        instead: that sum is floor(x / 2^low) or one less, so for |x| < 2^sign_bit - 2^low_bit the bit is
        [x < 0] except that x in [0, 2^low_bit) may read as negative.  A comparison whose operands are known
        to be close (a softmax row) then needs sign_bit - low_bit bits of carry instead of 63.
        """
        _check_window(low_bit, sign_bit)
        positions = _BIT_POSITIONS[low_bit:sign_bit]
        own = ((x[None, ...] >> positions.reshape((-1,) + (1,) * x.ndim)) & _ONE).astype(np.uint8)
        zero = np.zeros_like(own)
        left, right = (own, zero) if self.role == 0 else (zero, own)
        propagate = left ^ right
        (generate,) = self.and_bits([left], [right])
        g, p = generate, propagate
        while g.shape[0] > 1:  # the rounds of carry_tree_levels
            blocks = g.shape[0]
            pairs = blocks // 2
            g_lo, g_hi = g[0 : 2 * pairs : 2], g[1 : 2 * pairs : 2]
            p_lo, p_hi = p[0 : 2 * pairs : 2], p[1 : 2 * pairs : 2]
            if blocks == 2:  # the last merge: only the carry is needed, not the block's propagate
                (carried,) = self.and_bits([p_hi], [g_lo])
                g = g_hi ^ carried
                break
            carried, p_merged = self.and_bits([p_hi, p_hi], [g_lo, p_lo])
            g_merged = g_hi ^ carried
            if blocks % 2:  # the top block has no partner at this level: it moves up unchanged
                g_merged = np.concatenate([g_merged, g[-1:]])
                p_merged = np.concatenate([p_merged, p[-1:]])
            g, p = g_merged, p_merged
        top = ((x >> np.uint64(sign_bit)) & _ONE).astype(np.uint8)
        sign = (top ^ g[0]).astype(RING_DTYPE)
        return self.bit_to_arith(sign)

    def and_bits(self, xs: Sequence[np.ndarray], ys: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Several AND gates on XOR-shared bits (uint8 0/1 arrays) in one round; bits travel packed.

        Beaver on bits: with a dealt triple (a, b, c = a & b) the parties open e = x ^ a, f = y ^ b and
        set z = e y ^ a f ^ c.
        """
        x, y = flatten(xs), flatten(ys)
        a, b, c = self.corr.and_triple(x.size)
        mine = [x ^ a, y ^ b]
        theirs = self.swap_bits(mine, "open(x^a,y^b)")
        e, f = (m ^ t for m, t in zip(mine, theirs, strict=True))
        return split_back((e & y) ^ (a & f) ^ c, xs)

    # ------------------------------------------------------------------ trig
    def _trig_chunks(self, x: np.ndarray, period_bits: int, ks: np.ndarray, frac_bits: int):
        """Open delta = (x + t) mod 2^period_bits (one round), then take the dealt [cos kt; sin kt] chunk by
        chunk.

        Yields (slice of the flattened x, this party's table shares (2K, chunk), public base angles
        2 pi delta / 2^period_bits of the chunk).  Chunks of TABLE_CHUNK elements bound the memory of the
        tables (2K words per element): the dealer's messages are offline, so chunking costs no rounds.
        """
        _check_period(period_bits)
        mask = np.uint64((1 << period_bits) - 1)
        flat = x.reshape(-1)
        t, tables = self.corr.trig_pair(flat.size, period_bits, ks, frac_bits, TABLE_CHUNK)
        wire = np.uint32 if period_bits <= 32 else RING_DTYPE
        (delta,) = self.open([((flat + t) & mask).astype(wire)], "open(x+t)")
        base = (2 * np.pi / 2.0**period_bits) * (delta.astype(RING_DTYPE) & mask).astype(np.float64)
        start = 0
        for table in tables:
            part = slice(start, start + table.shape[1])
            start = part.stop
            yield part, table, base[part]

    def trig(self, x: np.ndarray, period_bits: int, harmonics: Sequence[int], frac_bits: int):
        """cos and sin of 2 pi k x / 2^period_bits for each k (see Suite.trig): two rounds."""
        ks = np.asarray(list(harmonics), dtype=np.float64)
        count = len(ks)
        scale = float(1 << frac_bits)
        raw = np.zeros((2, count, x.size), dtype=RING_DTYPE)
        for part, table, theta in self._trig_chunks(x, period_bits, ks, frac_bits):
            for i, phase in enumerate(harmonic_phases(theta, ks)):
                cos_d, sin_d = encode_public(phase.real, scale), encode_public(phase.imag, scale)
                cos_t, sin_t = table[i], table[count + i]
                # cos k(d - t) = cos kd cos kt + sin kd sin kt;  sin k(d - t) = sin kd cos kt - cos kd sin kt
                raw[0, i, part] = cos_d * cos_t + sin_d * sin_t
                raw[1, i, part] = sin_d * cos_t - cos_d * sin_t
        both = self.truncate(raw, frac_bits).reshape((2, count, *x.shape))
        return list(both[0]), list(both[1])

    def fourier(
        self,
        x: np.ndarray,
        period_bits: int,
        harmonics: Sequence[int],
        cos_coeffs: Sequence[float],
        sin_coeffs: Sequence[float],
        frac_bits: int,
        linear: Sequence[tuple[np.ndarray, float]] = (),
    ) -> np.ndarray:
        """sum_k a_k cos(2 pi k x / 2^P) + b_k sin(...) + sum_j w_j y_j, with ONE truncation: two rounds.

        sum_k a_k cos k(d - t) + b_k sin k(d - t) = sum_k cos kt (a_k cos kd + b_k sin kd)
        + sin kt (a_k sin kd - b_k cos kd): the public factors are formed in float64 and encoded with
        ``SERIES_BITS`` fractional bits (exact truncation; f bits otherwise), multiplied by the dealt
        shares (f bits) and summed with the linear terms y_j (shares, f bits) times w_j, then truncated
        once.  Error: half an ulp of the public encoding per term (relative 2^-(e+1)), the dealt tables'
        encoding (2^-(f+1) |a_k| + |b_k| each) and one ulp of truncation.
        """
        ks = np.asarray(list(harmonics), dtype=np.float64)
        count = len(ks)
        extra_bits = self.series_bits or frac_bits
        scale = float(1 << extra_bits)
        raw = np.zeros(x.size, dtype=RING_DTYPE)
        for part, table, theta in self._trig_chunks(x, period_bits, ks, frac_bits):
            for i, phase in enumerate(harmonic_phases(theta, ks)):
                a, b = float(cos_coeffs[i]), float(sin_coeffs[i])
                p = encode_public(a * phase.real + b * phase.imag, scale)
                q = encode_public(a * phase.imag - b * phase.real, scale)
                raw[part] += p * table[i] + q * table[count + i]
        raw = raw.reshape(x.shape)
        for share, weight in linear:
            raw = raw + share * encode_public(np.asarray(weight), scale)
        return self.truncate(raw, extra_bits)


class TwoPartyDealer:
    """The dealer's side of :class:`TwoPartyCore`: the same kernels, dealing their correlations in the
    same order and returning zero placeholders of the outputs' shapes (the dealer holds no shares)."""

    def __init__(self, ctx: Context, corr: Correlations, exact_truncation: bool) -> None:
        self.ctx = ctx
        self.corr = corr
        self.truncate = self.truncate_exact if exact_truncation else self.truncate_local
        self.series_bits = SERIES_BITS if exact_truncation else None

    def open(self, shares: Sequence[np.ndarray], label: str = "open", xor: bool = False) -> list[np.ndarray]:
        """The dealer takes no part in an opening: zeros."""
        return [np.zeros_like(s) for s in shares]

    def mul(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        out_shape = np.broadcast_shapes(x.shape, y.shape)
        self.corr.mul_triple(x.shape, y.shape, out_shape)
        return np.zeros(out_shape, dtype=RING_DTYPE)

    def square(self, x: np.ndarray) -> np.ndarray:
        self.corr.square_pair(x.shape)
        return np.zeros(x.shape, dtype=RING_DTYPE)

    def matmul(self, x: np.ndarray, y: np.ndarray, fixed_key: str | None = None) -> np.ndarray:
        out_shape = (*np.broadcast_shapes(x.shape[:-2], y.shape[:-2]), x.shape[-2], y.shape[-1])
        if fixed_key is None:
            self.corr.matmul_triple(x.shape, y.shape, out_shape)
        else:
            self.corr.fixed_matmul_triple(x.shape, fixed_key, y.shape, out_shape)
        return np.zeros(out_shape, dtype=RING_DTYPE)

    def truncate_local(self, x: np.ndarray, bits: int) -> np.ndarray:
        return x

    def truncate_exact(self, x: np.ndarray, bits: int) -> np.ndarray:
        self.corr.trunc_pair(x.shape)
        return np.zeros(x.shape, dtype=RING_DTYPE)

    def bit_to_arith(self, bit: np.ndarray) -> np.ndarray:
        self.corr.bit_pair(bit.shape)
        return np.zeros(bit.shape, dtype=RING_DTYPE)

    def msb(self, x: np.ndarray, low_bit: int = 0, sign_bit: int = 63) -> np.ndarray:
        _check_window(low_bit, sign_bit)
        for gates in carry_tree_levels(sign_bit - low_bit):
            self.corr.and_triple(gates * x.size)
        return self.bit_to_arith(np.zeros(x.shape, dtype=RING_DTYPE))

    def trig(self, x: np.ndarray, period_bits: int, harmonics: Sequence[int], frac_bits: int):
        ks = np.asarray(list(harmonics), dtype=np.float64)
        _check_period(period_bits)
        self.corr.trig_pair(x.size, period_bits, ks, frac_bits, TABLE_CHUNK)
        both = self.truncate(np.zeros((2, len(ks), x.size), dtype=RING_DTYPE), frac_bits)
        both = both.reshape((2, len(ks), *x.shape))
        return list(both[0]), list(both[1])

    def fourier(self, x, period_bits, harmonics, cos_coeffs, sin_coeffs, frac_bits, linear=()):
        ks = np.asarray(list(harmonics), dtype=np.float64)
        _check_period(period_bits)
        self.corr.trig_pair(x.size, period_bits, ks, frac_bits, TABLE_CHUNK)
        return self.truncate(np.zeros(x.shape, dtype=RING_DTYPE), self.series_bits or frac_bits)


def _check_window(low_bit: int, sign_bit: int) -> None:
    if not 0 <= low_bit < sign_bit <= 63:
        raise ValueError(f"msb window needs 0 <= low_bit < sign_bit <= 63, got ({low_bit}, {sign_bit})")


def _check_period(period_bits: int) -> None:
    if not 1 <= period_bits <= 63:
        raise ValueError("period_bits must be in [1, 63]")
