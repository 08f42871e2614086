"""The per-participant context: who I am, my transport, my PRG seeds, the accounting, and the suite.

Every participant (compute parties 0..n-1 and, in 2pc, the dealer) builds one :class:`Context` per job and
runs the same program with it (SPMD).  There is no global state: everything a protocol needs is reached
through the context that is passed explicitly.

The context carries messages, PRGs and statistics and knows nothing about protocols: the suite is built
beside it (``suite = Additive2PC(ctx)``) and attached to it (:meth:`Context.attach`); see
:func:`mpc_core.runtime.make_context`.  Batched messages (:meth:`Context.swap`, :meth:`Context.rotate`)
flatten several arrays into one message under a named tag and split the reply back.

Participants are numbered 0, 1, 2 in both suites: in ``2pc`` participant 2 is the dealer, in ``3pc`` it is
the third compute party.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from mpc_core.prg import PRG, SEED_BYTES, fresh_seed
from mpc_core.ring import FixedPoint
from mpc_core.transport.base import ProtocolError, Transport

if TYPE_CHECKING:
    from mpc_core.suites.base import Suite

#: Participants are numbered 0, 1, 2 in every suite (which of them hold shares is the suite's fact).
PARTICIPANTS = 3


@dataclass
class OpStats:
    """Traffic sent by this participant under one named operation."""

    bytes_sent: int = 0
    messages: int = 0
    rounds: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "bytes": self.bytes_sent,
            "messages": self.messages,
            "rounds": self.rounds,
            "seconds": self.seconds,
        }


@dataclass
class CommStats:
    """Bytes, messages and rounds this participant sent, in total and per top-level named operation.

    ``rounds`` counts communication steps on the online critical path (a participant sends, then waits
    for what it needs).  The dealer's messages are offline: they count as bytes but not as rounds.
    """

    total: OpStats = field(default_factory=OpStats)
    by_op: dict[str, OpStats] = field(default_factory=lambda: defaultdict(OpStats))

    def record_send(self, op: str, nbytes: int) -> None:
        self.total.bytes_sent += nbytes
        self.total.messages += 1
        self.by_op[op].bytes_sent += nbytes
        self.by_op[op].messages += 1

    def record_round(self, op: str) -> None:
        self.total.rounds += 1
        self.by_op[op].rounds += 1

    def snapshot(self) -> dict[str, dict[str, float]]:
        out = {"total": self.total.as_dict()}
        out.update({name: stats.as_dict() for name, stats in self.by_op.items()})
        return out


class Context:
    """One participant's view of a job: build it, attach a suite built beside it, then call :meth:`setup`."""

    def __init__(self, participant: int, transport: Transport, fixed_point: FixedPoint) -> None:
        if participant not in range(PARTICIPANTS):
            raise ValueError(f"participant must be 0, 1 or 2, got {participant}")
        self.participant = participant
        self.transport = transport
        self.fp = fixed_point
        self.stats = CommStats()
        self._pair_prgs: dict[int, PRG] = {}
        self._op_stack: list[str] = []
        self._pair_counters: dict[tuple[int, int], int] = defaultdict(int)
        self._suite: Suite | None = None
        self._setting = ""
        self.is_dealer = False  #: True for a participant that holds no shares (the 2pc dealer)

    # ---------------------------------------------------------------- identity and suite
    def attach(self, suite: Suite) -> None:
        """Give this context the suite built beside it (once, before any message)."""
        if self._suite is not None:
            raise RuntimeError("this context already has a suite")
        if suite.ctx is not self:
            raise ValueError("the suite was built for another context")
        self._suite = suite
        self.is_dealer = suite.is_dealer(self.participant)
        # The tag names the suite and the fixed-point precision (see _pair_tag).
        self._setting = f"{suite.name}/f{self.fp.frac_bits}/{self.fp.truncation}"

    @property
    def suite(self) -> Suite:
        """The protocol suite this participant runs (attached with :meth:`attach`)."""
        if self._suite is None:
            raise RuntimeError("no suite is attached to this context (see mpc_core.runtime.make_context)")
        return self._suite

    # ---------------------------------------------------------------- randomness
    def setup(self) -> None:
        """Agree a fresh PRG seed with every other participant (the lower number picks and sends it).

        Over the cluster's mutually authenticated TLS channels this is a semi-honest key agreement; seeds
        never leave the two participants that share them.
        """
        with self.op("setup"):
            for peer in range(PARTICIPANTS):
                if peer == self.participant:
                    continue
                if self.participant < peer:
                    seed = fresh_seed()
                    self.send(peer, np.frombuffer(seed, dtype=np.uint8))
                else:
                    seed = self.recv(peer, (SEED_BYTES,), np.uint8).tobytes()
                self._pair_prgs[peer] = PRG(seed)
            self.stats.record_round(self.current_op)
        self.private_prg = PRG(fresh_seed())

    def prg_with(self, peer: int) -> PRG:
        """The PRG whose seed this participant shares with ``peer`` (and nobody else)."""
        try:
            return self._pair_prgs[peer]
        except KeyError:
            raise RuntimeError("Context.setup() must run before any protocol") from None

    # ---------------------------------------------------------------- accounting
    @property
    def current_op(self) -> str:
        return self._op_stack[0] if self._op_stack else "other"

    @contextlib.contextmanager
    def op(self, name: str) -> Iterator[None]:
        """Attribute traffic and time inside the block to ``name`` (outermost name wins)."""
        outermost = not self._op_stack
        self._op_stack.append(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            self._op_stack.pop()
            if outermost:
                self.stats.by_op[name].seconds += time.perf_counter() - start

    # ---------------------------------------------------------------- messages
    def send(self, to: int, payload: np.ndarray, label: str = "") -> None:
        """Send one message (tagged with this participant's message counter for the pair and ``label``)."""
        payload = np.require(payload, requirements="C")  # ascontiguousarray would make a 0-d array 1-d
        self.transport.send(to, self._tag_for(to, label), payload)
        self.stats.record_send(self.current_op, payload.nbytes)

    def recv(self, frm: int, shape: tuple[int, ...], dtype: np.dtype | type, label: str = "") -> np.ndarray:
        """Receive the next message from ``frm`` and check its tag (``label`` included), shape and dtype."""
        payload = self.transport.recv(frm, self._tag_from(frm, label))
        if payload.dtype != np.dtype(dtype) or payload.shape != tuple(shape):
            raise ProtocolError(
                f"participant {self.participant} expected {np.dtype(dtype)}{tuple(shape)} from {frm}, "
                f"got {payload.dtype}{payload.shape}: mismatched shapes or suites between parties"
            )
        return payload

    def exchange(
        self,
        sends: dict[int, np.ndarray],
        receives: dict[int, tuple[tuple[int, ...], np.dtype | type]],
        label: str = "",
    ) -> dict[int, np.ndarray]:
        """One communication round: send everything, then receive everything (counted as one round)."""
        for to, payload in sends.items():
            self.send(to, payload, label)
        received = {frm: self.recv(frm, shape, dtype, label) for frm, (shape, dtype) in receives.items()}
        self.stats.record_round(self.current_op)
        return received

    def swap(self, peer: int, arrays: Sequence[np.ndarray], label: str) -> list[np.ndarray]:
        """Send several arrays (one dtype) to ``peer`` as one message and get the peer's arrays of the same
        shapes back: one round under the name ``label`` (an opening: each side adds what it gets)."""
        flat = flatten(arrays)
        theirs = self.exchange({peer: flat}, {peer: (flat.shape, flat.dtype)}, label)[peer]
        return split_back(theirs, arrays)

    def rotate(self, arrays: Sequence[np.ndarray], label: str) -> list[np.ndarray]:
        """Send arrays to the previous participant and receive the next one's (same shapes), one round.

        The three participants form a ring (i sends to i - 1 and hears from i + 1): the 3pc reshare
        (SPU's ``Communicator::rotate``).
        """
        flat = flatten(arrays)
        prev, nxt = (self.participant - 1) % PARTICIPANTS, (self.participant + 1) % PARTICIPANTS
        theirs = self.exchange({prev: flat}, {nxt: (flat.shape, flat.dtype)}, label)[nxt]
        return split_back(theirs, arrays)

    # Per-pair counters: both ends of a pair count the messages of that pair, so tags agree exactly when
    # both run the same program.  The tag also names the suite and the fixed-point precision, so that
    # participants configured differently fail at their first message (in setup) with a ProtocolError
    # instead of computing garbage or waiting for a message that never comes.
    # A label (an opening's or a correlation's name) makes a divergence readable at the first message.
    def _tag_for(self, to: int, label: str = "") -> str:
        return self._pair_tag(self.participant, to, label)

    def _tag_from(self, frm: int, label: str = "") -> str:
        return self._pair_tag(frm, self.participant, label)

    def _pair_tag(self, src: int, dst: int, label: str) -> str:
        self._pair_counters[(src, dst)] += 1
        tag = f"{self._setting}:{src}->{dst}#{self._pair_counters[(src, dst)]}"
        return f"{tag}:{label}" if label else tag


def flatten(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Several arrays of one dtype as one flat array (the payload of one batched message)."""
    if len(arrays) == 1:
        return np.ravel(arrays[0])
    return np.concatenate([np.ravel(a) for a in arrays])


def split_back(flat: np.ndarray, like: Sequence[np.ndarray | tuple[int, ...]]) -> list[np.ndarray]:
    """Cut a flat array into pieces shaped like ``like`` (arrays or shapes), in order."""
    out, start = [], 0
    for item in like:
        shape = item if isinstance(item, tuple) else item.shape
        size = int(np.prod(shape, dtype=np.int64))
        out.append(flat[start : start + size].reshape(shape))
        start += size
    return out
