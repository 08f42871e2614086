"""In-process transport: one thread per participant, one FIFO queue per ordered pair.

Used by unit tests and benchmarks that keep all participants in one process.  Arrays are copied on
send so that no participant can alias another's memory (as on a real network).
"""

from __future__ import annotations

import queue
import threading

import numpy as np

from mpc_core.transport.base import ProtocolError, Transport, TransportClosed

_CLOSED = object()


class InProcessNetwork:
    """The shared medium: creates one :class:`InProcessTransport` per participant."""

    def __init__(self, participants: int, timeout_s: float = 120.0) -> None:
        self.participants = participants
        self.timeout_s = timeout_s
        self._queues = {
            (src, dst): queue.Queue()
            for src in range(participants)
            for dst in range(participants)
            if src != dst
        }
        self._closed = threading.Event()

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
        self.network._queues[(self.participant, to)].put((tag, np.array(payload, copy=True)))

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
