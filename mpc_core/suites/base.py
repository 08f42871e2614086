"""The small interface every protocol suite satisfies.

Shares are numpy ``uint64`` arrays with a leading *slot* axis: one slot for 2-of-2 additive sharing, two
for replicated sharing.  Everything that is local and linear on that layout (add, subtract, negate,
multiply by a public integer, reshape, transpose, index, sum) is identical in all suites and lives in
:class:`mpc_core.tensor.SharedTensor`; a suite implements only what differs: sharing, opening, adding a
public value, products, truncation and the nonlinear kernels (one-round trig, most significant bit).

Fixed-point products come out of :meth:`Suite.mul` and :meth:`Suite.matmul` with 2f fractional bits;
the caller truncates (so several products can be summed before one truncation).

A suite declares itself in one place (as SPU's ``regSemi2kProtocol``): its *facts* are class attributes
that the processes read without building anything (how many participants run the program, which of them
hold shares, which one deals, how many ring words a share has per element, how owners split and
reconstruct), and its *variants* (exact or probabilistic truncation, a dealer's or a party's side of the
2-of-2 kernels) are chosen once, when the suite is built for a participant's context.  Nothing outside
``suites/`` asks "which protocol is this?": it asks the suite.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from mpc_core.prg import PRG
from mpc_core.ring import RING_DTYPE

if TYPE_CHECKING:
    from mpc_core.context import Context


class Suite(ABC):
    """One participant's implementation of a protocol suite.

    Build it beside the participant's context and attach it: ``ctx.attach(Additive2PC(ctx))`` (or
    :func:`mpc_core.runtime.make_context`).
    """

    # ------------------------------------------------------------------ facts (declared by each suite)
    #: The suite's configuration name ("2pc", "3pc").
    name: ClassVar[str]
    #: Everyone who runs the SPMD program (compute parties and a dealer, if any), numbered 0..n-1.
    participants: ClassVar[int]
    #: The participants that hold shares (and receive the data owner's and model owner's shares).
    compute_parties: ClassVar[tuple[int, ...]]
    #: The participant that only deals correlated randomness, or None.
    dealer: ClassVar[int | None] = None
    #: Ring words (uint64) each compute party holds per secret element: the share's size.
    slots: ClassVar[int]

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    # ------------------------------------------------------------------ roles
    @classmethod
    def is_dealer(cls, participant: int) -> bool:
        """Whether ``participant`` holds no shares in this suite."""
        return participant == cls.dealer

    @classmethod
    def role(cls, participant: int) -> str:
        """``"dealer"`` or ``"party"``: the kind of process a participant of this suite runs."""
        if participant not in range(cls.participants):
            raise ValueError(f"{cls.name} has participants 0..{cls.participants - 1}, not {participant}")
        return "dealer" if cls.is_dealer(participant) else "party"

    @classmethod
    def share_bytes(cls, elements: int) -> int:
        """Bytes of one compute party's share of ``elements`` secret ring elements."""
        return 8 * cls.slots * elements

    def dummy(self, shape: tuple[int, ...]) -> np.ndarray:
        """What a share-less participant carries for a secret of this shape (zeros, never read)."""
        return np.zeros((self.slots, *shape), dtype=RING_DTYPE)

    # ------------------------------------------------------------------ sharing
    @staticmethod
    @abstractmethod
    def split(secret: np.ndarray, prg: PRG) -> list[np.ndarray]:
        """Shares of a ring array for every compute party (used by data and model owners)."""

    @staticmethod
    @abstractmethod
    def combine(shares: Sequence[np.ndarray]) -> np.ndarray:
        """Reconstruct a ring array from every compute party's share; checks consistency."""

    @abstractmethod
    def input(self, secret: np.ndarray | None, shape: tuple[int, ...], owner: int) -> np.ndarray:
        """Secret-share a ring array held by compute party ``owner`` (others pass None)."""

    @abstractmethod
    def reveal(self, data: np.ndarray, check: bool = True) -> np.ndarray:
        """Open a shared ring array to every compute party (zeros at the dealer)."""

    @abstractmethod
    def add_public(self, data: np.ndarray, value: np.ndarray) -> np.ndarray:
        """Shares of x + c for public ring values c (broadcasting)."""

    # ------------------------------------------------------------------ products (untruncated)
    @abstractmethod
    def mul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Elementwise product of two shared arrays (numpy broadcasting)."""

    @abstractmethod
    def square(self, a: np.ndarray) -> np.ndarray:
        """Elementwise square (cheaper than mul(a, a))."""

    @abstractmethod
    def matmul(self, a: np.ndarray, b: np.ndarray, fixed_key: str | None = None) -> np.ndarray:
        """``a @ b``.  ``fixed_key`` names a right operand reused across calls (a weight)."""

    @abstractmethod
    def truncate(self, data: np.ndarray, bits: int) -> np.ndarray:
        """Shares of x / 2^bits (probabilistic truncation; see the suite's error bound)."""

    # ------------------------------------------------------------------ nonlinear kernels
    @abstractmethod
    def trig(
        self, data: np.ndarray, period_bits: int, harmonics: Sequence[int], frac_bits: int
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Shares of cos(2 pi k x / 2^period_bits) and sin(...) for each k, x the signed ring value.

        Results are fixed point with ``frac_bits`` fractional bits.  One round opens
        delta = (x + t) mod 2^period_bits for a dealt t uniform over the period, which is perfectly
        uniform and so independent of x.
        """

    @abstractmethod
    def fourier(
        self,
        data: np.ndarray,
        period_bits: int,
        harmonics: Sequence[int],
        cos_coeffs: Sequence[float],
        sin_coeffs: Sequence[float],
        frac_bits: int,
        linear: Sequence[tuple[np.ndarray, float]] = (),
    ) -> np.ndarray:
        """Shares of sum_k a_k cos(2 pi k x / 2^P) + b_k sin(...) + sum_j w_j y_j, truncated once.

        The same opened mask as :meth:`trig`, but the public weights are applied before the single
        truncation (and, in 3pc, before the single conversion back): one output instead of 2K.
        """

    @abstractmethod
    def msb(self, data: np.ndarray, low_bit: int = 0, sign_bit: int = 63) -> np.ndarray:
        """Shares (as ring integers 0 or 1) of the most significant bit of x: 1 iff x < 0 (signed).

        With a window, bit ``sign_bit`` of x / 2^low_bit (carries from below ``low_bit`` ignored): [x < 0]
        for |x| < 2^sign_bit - 2^low_bit, except that x in [0, 2^low_bit) may read as negative.
        """
