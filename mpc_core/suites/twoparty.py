"""2-of-2 additive protocols between two parties with a third participant as the dealer.

The 2pc suite runs everything here with P0, P1 and the dealer D.  The 3pc suite reuses the nonlinear
kernels (trig, msb) with P2 as the generator: a replicated sharing is a 2-of-2 sharing between P0 and P1
at no cost, and P2, which never sees an opened value of those kernels, plays the dealer (DESIGN.md §3).

Correlated randomness: the dealer derives P0's part of every triple from the seed it shares with P0 and
P1's random parts from the seed it shares with P1, so it sends P1 only the corrections (for a triple
(a, b, c = a * b) just c - c0).  A party never learns a mask together with the value it masks: the
dealer never receives anything.

Products use one formula for every bilinear operation ``op`` (elementwise product, matrix product, AND):
with E = x - a and F = y - b opened, each party sets z_i = op(E, y_i) + op(a_i, F) + c_i, which sums to
op(E, y) + op(a, y - b) + op(a, b) = op(x, y).  When y is a fixed operand (a weight), F is opened once
and cached, so later calls open only E.

Truncation (SecureML Thm 1, made unbiased as in SPU): P0 computes x0 >> k, P1 computes -((-x1) >> k).
With x0 uniform the result is x >> k up to one unit in the last place, except with probability about
|x| / 2^63 per element, when it is off by 2^(64 - k) (see docs/engine.md for the figures).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from mpc_core.ring import EXACT_TRUNC_BITS, RING_DTYPE, ring_matmul, ring_scalar, to_signed

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


def truncate_share(share: np.ndarray, bits: int, role: int) -> np.ndarray:
    """One party's local truncation of its 2-of-2 share (SPU's unbiased SecureML variant)."""
    if role == 0:
        return (to_signed(share) >> bits).view(RING_DTYPE)
    return (-((to_signed(-share)) >> bits)).view(RING_DTYPE)


def _mul(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return x * y


def _and(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return x & y


class TwoPartyCore:
    """2-of-2 protocols for one participant: ``role`` is 0 or 1 for the parties, ``'dealer'`` for D."""

    def __init__(self, ctx: Context, p0: int, p1: int, dealer: int) -> None:
        self.ctx = ctx
        self.p0, self.p1, self.dealer = p0, p1, dealer
        me = ctx.participant
        self.role: int | str = 0 if me == p0 else 1 if me == p1 else "dealer"
        self.other = p1 if me == p0 else p0
        self._fixed: dict[str, np.ndarray] = {}
        self._dealer_fixed: dict[str, np.ndarray] = {}

    @property
    def is_dealer(self) -> bool:
        return self.role == "dealer"

    # ------------------------------------------------------------------ opening
    def open(self, shares: Sequence[np.ndarray], xor: bool = False) -> list[np.ndarray]:
        """Open several 2-of-2 shared arrays in one round (zeros at the dealer)."""
        if self.is_dealer:
            return [np.zeros_like(s) for s in shares]
        dtype = shares[0].dtype
        flat = np.concatenate([np.ravel(s) for s in shares]) if len(shares) > 1 else np.ravel(shares[0])
        theirs = self.ctx.exchange({self.other: flat}, {self.other: (flat.shape, dtype)})[self.other]
        total = flat ^ theirs if xor else flat + theirs
        out, start = [], 0
        for s in shares:
            out.append(total[start : start + s.size].reshape(s.shape))
            start += s.size
        return out

    # ------------------------------------------------------------------ correlated randomness
    def _dealt(
        self, shape: tuple[int, ...], make: Callable[[], np.ndarray] | None, xor: bool = False
    ) -> np.ndarray:
        """One dealt value: P0's share from its seed, P1's as a correction sent by the dealer.

        ``make`` (called at the dealer only) computes the value to be shared.
        """
        if self.role == 0:
            return self.ctx.prg_with(self.dealer).ring(shape)
        if self.role == 1:
            return self.ctx.recv(self.dealer, shape, RING_DTYPE)
        share0 = self.ctx.prg_with(self.p0).ring(shape)
        value = make()
        self.ctx.send(self.p1, (value ^ share0) if xor else (value - share0))
        return share0  # unused by the dealer; returned for a uniform signature

    def _random_pair(self, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray | None]:
        """A uniformly random shared mask: (this party's share, the full value at the dealer)."""
        if self.is_dealer:
            s0 = self.ctx.prg_with(self.p0).ring(shape)
            s1 = self.ctx.prg_with(self.p1).ring(shape)
            return s0, (s0, s1)
        return self.ctx.prg_with(self.dealer).ring(shape), None

    # ------------------------------------------------------------------ products
    def beaver(self, op: str, x: np.ndarray, y: np.ndarray, fixed_key: str | None = None) -> np.ndarray:
        """Shares of op(x, y) for op in {'mul', 'matmul', 'and'} ('and' on XOR-shared words)."""
        if op == "matmul":
            return self._matmul(x, y, fixed_key)
        fn, xor = (_and, True) if op == "and" else (_mul, False)
        combine = np.bitwise_xor if xor else np.add
        out_shape = np.broadcast_shapes(x.shape, y.shape)
        a, a_parts = self._random_pair(x.shape)
        b, b_parts = self._random_pair(y.shape)
        if self.is_dealer:
            a_full = a_parts[0] ^ a_parts[1] if xor else a_parts[0] + a_parts[1]
            b_full = b_parts[0] ^ b_parts[1] if xor else b_parts[0] + b_parts[1]
            self._dealt(out_shape, lambda: fn(a_full, b_full), xor=xor)
            return np.zeros(out_shape, dtype=RING_DTYPE)
        c = self._dealt(out_shape, None, xor=xor)
        e, f = self.open([combine(x, a) if xor else x - a, combine(y, b) if xor else y - b], xor=xor)
        return combine(combine(fn(e, y), fn(a, f)), c)

    def square(self, x: np.ndarray) -> np.ndarray:
        """x^2 from a dealt pair (a, a^2): open only E = x - a; z_i = E x_i + a_i E + c_i."""
        a, a_parts = self._random_pair(x.shape)
        if self.is_dealer:
            a_full = a_parts[0] + a_parts[1]
            self._dealt(x.shape, lambda: a_full * a_full)
            return np.zeros(x.shape, dtype=RING_DTYPE)
        c = self._dealt(x.shape, None)
        (e,) = self.open([x - a])
        return e * x + a * e + c

    def _matmul(self, x: np.ndarray, y: np.ndarray, fixed_key: str | None) -> np.ndarray:
        out_shape = (*np.broadcast_shapes(x.shape[:-2], y.shape[:-2]), x.shape[-2], y.shape[-1])
        a, a_parts = self._random_pair(x.shape)
        if fixed_key is not None:
            f, b_full = self._fixed_operand(fixed_key, y)
        else:
            b, b_parts = self._random_pair(y.shape)
        if self.is_dealer:
            a_full = a_parts[0] + a_parts[1]
            if fixed_key is None:
                b_full = b_parts[0] + b_parts[1]
            self._dealt(out_shape, lambda: ring_matmul(a_full, b_full))
            return np.zeros(out_shape, dtype=RING_DTYPE)
        c = self._dealt(out_shape, None)
        if fixed_key is not None:
            (e,) = self.open([x - a])
        else:
            e, f = self.open([x - a, y - b])
        return ring_matmul(e, y) + ring_matmul(a, f) + c

    def _fixed_operand(self, key: str, y: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(opened F = y - b, None) at a party, (None, b) at the dealer: a fixed right operand's mask,
        drawn and opened once per key and reused by every later product with it."""
        if self.is_dealer:
            if key not in self._dealer_fixed:
                _, (p0, p1) = self._random_pair(y.shape)
                self._dealer_fixed[key] = p0 + p1
            return None, self._dealer_fixed[key]
        if key not in self._fixed:
            b, _ = self._random_pair(y.shape)
            (f,) = self.open([y - b])
            self._fixed[key] = f
        f = self._fixed[key]
        if f.shape != y.shape:
            raise ValueError(f"fixed operand {key!r} was registered with shape {f.shape}, got {y.shape}")
        return f, None

    # ------------------------------------------------------------------ truncation
    def truncate(self, x: np.ndarray, bits: int) -> np.ndarray:
        """x / 2^bits in the mode the fixed-point parameters choose (see FixedPoint.truncation)."""
        if self.ctx.fp.truncation == "exact":
            return self.truncate_exact(x, bits)
        if self.is_dealer:
            return x
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
        shape = x.shape
        if self.is_dealer:
            a = self.ctx.prg_with(self.p0).bits(shape)
            b = self.ctx.prg_with(self.p1).bits(shape)
            self._dealt(shape, lambda: a * b)
            return np.zeros(shape, dtype=RING_DTYPE)
        own_mask = self.ctx.prg_with(self.dealer).bits(shape)
        ab = self._dealt(shape, None)
        shifted = x + np.uint64((1 << EXACT_TRUNC_BITS) - 1) if self.role == 0 else x
        top = shifted >> np.uint64(63)
        (theirs,) = self.open_bits([top ^ own_mask])
        mine = top ^ own_mask
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

    def open_bits(self, bits: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Send this party's bits (0/1 words) packed eight to a byte; return the other party's bits."""
        flat = np.concatenate([np.ravel(b) for b in bits]).astype(np.uint8)
        packed = np.packbits(flat)
        theirs = self.ctx.exchange({self.other: packed}, {self.other: (packed.shape, np.uint8)})[self.other]
        unpacked = np.unpackbits(theirs, count=flat.size).astype(RING_DTYPE)
        out, start = [], 0
        for b in bits:
            out.append(unpacked[start : start + b.size].reshape(b.shape))
            start += b.size
        return out

    # ------------------------------------------------------------------ bits
    def bit_to_arith(self, bit: np.ndarray) -> np.ndarray:
        """XOR-shared bits (0/1 in uint64) to additive shares of the same bits, one round.

        The dealer deals r both ways; open c = b ^ r (one byte per element); b = c + r - 2 c r.
        """
        shape = bit.shape
        r_bool, r_parts = self._random_pair(shape)
        r_bool = r_bool & _ONE
        if self.is_dealer:
            r_full = (r_parts[0] ^ r_parts[1]) & _ONE
            self._dealt(shape, lambda: r_full)
            return np.zeros(shape, dtype=RING_DTYPE)
        r_arith = self._dealt(shape, None)
        (c,) = self.open([(bit ^ r_bool).astype(np.uint8)], xor=True)
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
        if not 0 <= low_bit < sign_bit <= 63:
            raise ValueError(f"msb window needs 0 <= low_bit < sign_bit <= 63, got ({low_bit}, {sign_bit})")
        positions = _BIT_POSITIONS[low_bit:sign_bit]
        own = ((x[None, ...] >> positions.reshape((-1,) + (1,) * x.ndim)) & _ONE).astype(np.uint8)
        zero = np.zeros_like(own)
        left, right = (own, zero) if self.role == 0 else (zero, own)
        if self.is_dealer:
            left = right = zero
        propagate = left ^ right
        (generate,) = self.and_bits([left], [right])
        g, p = generate, propagate
        while g.shape[0] > 1:
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
        top = (x >> np.uint64(sign_bit)) & _ONE
        top = top.astype(np.uint8) if not self.is_dealer else np.zeros(x.shape, np.uint8)
        sign = (top ^ g[0]).astype(RING_DTYPE)
        return self.bit_to_arith(sign)

    def and_bits(self, xs: Sequence[np.ndarray], ys: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Several AND gates on XOR-shared bits (uint8 0/1 arrays) in one round; bits travel packed.

        Beaver on bits: the dealer deals a, b, c = a & b (P0's from its seed, P1's a, b from its seed and
        c as a packed correction); the parties open e = x ^ a, f = y ^ b and set z = e y ^ a f ^ c.
        """
        shapes = [x.shape for x in xs]
        x = np.concatenate([v.ravel() for v in xs])
        y = np.concatenate([v.ravel() for v in ys])
        n = x.size
        nbytes = -(-n // 8)

        def draw(peer: int) -> np.ndarray:
            return np.unpackbits(
                np.frombuffer(self.ctx.prg_with(peer).random_bytes(nbytes), np.uint8), count=n
            )

        if self.is_dealer:
            a0, b0, c0 = draw(self.p0), draw(self.p0), draw(self.p0)
            a1, b1 = draw(self.p1), draw(self.p1)
            c1 = ((a0 ^ a1) & (b0 ^ b1)) ^ c0
            self.ctx.send(self.p1, np.packbits(c1))
            out = np.zeros(n, dtype=np.uint8)
        else:
            a, b = draw(self.dealer), draw(self.dealer)
            if self.role == 0:
                c = draw(self.dealer)
            else:
                c = np.unpackbits(self.ctx.recv(self.dealer, (nbytes,), np.uint8), count=n)
            mine = np.packbits(np.concatenate([x ^ a, y ^ b]))
            theirs = self.ctx.exchange({self.other: mine}, {self.other: (mine.shape, np.uint8)})[self.other]
            opened = np.unpackbits(theirs, count=2 * n) ^ np.unpackbits(mine, count=2 * n)
            e, f = opened[:n], opened[n:]
            out = (e & y) ^ (a & f) ^ c
        result, start = [], 0
        for shape in shapes:
            size = int(np.prod(shape, dtype=np.int64))
            result.append(out[start : start + size].reshape(shape))
            start += size
        return result

    # ------------------------------------------------------------------ trig
    def _trig_chunks(self, x: np.ndarray, period_bits: int, ks: np.ndarray, frac_bits: int):
        """Open delta = (x + t) mod 2^period_bits (one round), then deal [cos kt; sin kt] chunk by chunk.

        Yields (slice of the flattened x, this party's table shares (2K, chunk), public base angles
        2 pi delta / 2^period_bits of the chunk); the dealer yields (slice, None, None) after dealing each
        chunk.  Chunks of TABLE_CHUNK elements bound the memory of the tables (2K words per element):
        the dealer's messages are offline, so chunking costs no rounds.
        """
        if not 1 <= period_bits <= 63:
            raise ValueError("period_bits must be in [1, 63]")
        mask = np.uint64((1 << period_bits) - 1)
        flat = x.reshape(-1)
        size, count = flat.size, len(ks)
        t, t_parts = self._random_pair(flat.shape)
        t = t & mask
        to_angle = 2 * np.pi / 2.0**period_bits
        if self.is_dealer:
            base = to_angle * ((t_parts[0] + t_parts[1]) & mask).astype(np.float64)
        else:
            wire = np.uint32 if period_bits <= 32 else RING_DTYPE
            (delta,) = self.open([((flat + t) & mask).astype(wire)])
            base = to_angle * (delta.astype(RING_DTYPE) & mask).astype(np.float64)
        scale = float(1 << frac_bits)
        for start in range(0, max(size, 1), TABLE_CHUNK):
            part = slice(start, min(size, start + TABLE_CHUNK))
            angles = base[part]
            shape = (2 * count, angles.size)
            if self.is_dealer:

                def tables(angles: np.ndarray = angles, shape: tuple[int, int] = shape) -> np.ndarray:
                    out = np.empty(shape, dtype=RING_DTYPE)
                    for i, phase in enumerate(harmonic_phases(angles, ks)):
                        out[i], out[count + i] = _encode(phase.real, scale), _encode(phase.imag, scale)
                    return out

                self._dealt(shape, tables)
                yield part, None, None
            else:
                yield part, self._dealt(shape, None), angles

    def trig(self, x: np.ndarray, period_bits: int, harmonics: Sequence[int], frac_bits: int):
        """cos and sin of 2 pi k x / 2^period_bits for each k (see Suite.trig): two rounds."""
        ks = np.asarray(list(harmonics), dtype=np.float64)
        count = len(ks)
        scale = float(1 << frac_bits)
        raw = np.zeros((2, count, x.size), dtype=RING_DTYPE)
        for part, table, theta in self._trig_chunks(x, period_bits, ks, frac_bits):
            if table is None:
                continue
            for i, phase in enumerate(harmonic_phases(theta, ks)):
                cos_d, sin_d = _encode(phase.real, scale), _encode(phase.imag, scale)
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
        extra_bits = SERIES_BITS if self.ctx.fp.truncation == "exact" else frac_bits
        scale = float(1 << extra_bits)
        raw = np.zeros(x.size, dtype=RING_DTYPE)
        for part, table, theta in self._trig_chunks(x, period_bits, ks, frac_bits):
            if table is None:
                continue
            for i, phase in enumerate(harmonic_phases(theta, ks)):
                a, b = float(cos_coeffs[i]), float(sin_coeffs[i])
                p = _encode(a * phase.real + b * phase.imag, scale)
                q = _encode(a * phase.imag - b * phase.real, scale)
                raw[part] += p * table[i] + q * table[count + i]
        raw = raw.reshape(x.shape)
        for share, weight in linear:
            raw = raw + share * _encode(np.asarray(weight), scale)
        return self.truncate(raw, extra_bits)


def harmonic_phases(base: np.ndarray, ks: np.ndarray):
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


def _encode(values: np.ndarray, scale: float) -> np.ndarray:
    """Public floats as ring elements with the given scale (round to nearest)."""
    return np.rint(values * scale).astype(np.int64).view(RING_DTYPE)
