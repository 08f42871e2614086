"""In-process transport: one thread per participant, one FIFO queue per ordered pair.

Used by unit tests and benchmarks that keep all participants in one process.  Arrays are copied on
send so that no participant can alias another's memory (as on a real network).

A :class:`~mpc_core.transport.shaping.NetworkShape` per directed link (``shapes``) emulates a LAN or WAN
with the same virtual wire as the gRPC links (:class:`~mpc_core.transport.shaping.LinkClock`: a message
occupies its link for 8 bytes / bandwidth, then arrives after the latency), without gRPC's serialization
CPU: benchmarks can time a protocol under ``wan`` on a two-core machine, where the time is mostly waiting.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Mapping

import numpy as np

from mpc_core.transport.base import ProtocolError, Transport, TransportClosed
from mpc_core.transport.shaping import DELIVERY_TIMER, LinkClock, NetworkShape

Link = tuple[int, int]

_CLOSED = object()


class InProcessNetwork:
    """The shared medium: creates one :class:`InProcessTransport` per participant."""

    def __init__(
        self, participants: int, timeout_s: float = 120.0, shapes: Mapping[Link, NetworkShape] | None = None
    ) -> None:
        """``shapes`` maps a directed link (src, dst) to its emulated network; links not named are instant."""
        self.participants = participants
        self.timeout_s = timeout_s
        self._queues = {
            (src, dst): queue.Queue()
            for src in range(participants)
            for dst in range(participants)
            if src != dst
        }
        unknown = set(shapes or {}) - set(self._queues)
        if unknown:
            raise ValueError(f"no such links between {participants} participants: {sorted(unknown)}")
        self._clocks = {link: LinkClock(shape) for link, shape in (shapes or {}).items() if shape.active}
        self._closed = threading.Event()

    def drained_at(self, link: Link) -> float:
        """When every message sent so far on ``link`` will have arrived (monotonic time)."""
        clock = self._clocks.get(link)
        return clock.drained_at() if clock is not None else time.monotonic()

    def _deliver(self, link: Link, item: tuple[str, np.ndarray]) -> None:
        """Put a message in its link's queue now, or at its emulated arrival time on a shaped link."""
        clock = self._clocks.get(link)
        if clock is None:
            self._queues[link].put(item)
            return
        DELIVERY_TIMER.schedule(
            clock.delivery_time(item[1].nbytes, time.monotonic()), lambda: self._queues[link].put(item)
        )

    def transport(self, participant: int) -> InProcessTransport:
        return InProcessTransport(self, participant)

    def close(self) -> None:
        """Abort: every blocked or later receive raises TransportClosed."""
        self._closed.set()
        for q in self._queues.values():
            q.put(_CLOSED)


class InProcessTransport(Transport):
    def __init__(self, network: InProcessNetwork, participant: int) -> None:
        self.network = network
        self.participant = participant

    def send(self, to: int, tag: str, payload: np.ndarray) -> None:
        if self.network._closed.is_set():
            raise TransportClosed("in-process network closed")
        self.network._deliver((self.participant, to), (tag, np.array(payload, copy=True)))

    def recv(self, frm: int, tag: str) -> np.ndarray:
        try:
            item = self.network._queues[(frm, self.participant)].get(timeout=self.network.timeout_s)
        except queue.Empty:
            raise TransportClosed(
                f"participant {self.participant}: no message from {frm} within {self.network.timeout_s} s"
            ) from None
        if item is _CLOSED:
            self.network._queues[(frm, self.participant)].put(_CLOSED)
            raise TransportClosed("in-process network closed")
        got_tag, payload = item
        if got_tag != tag:
            raise ProtocolError(
                f"participant {self.participant} expected message {tag!r} from {frm}, got {got_tag!r}: "
                "the participants are running different programs, shapes or suites"
            )
        return payload

    def close(self) -> None:
        self.network.close()
