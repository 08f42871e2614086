"""The transport interface the engine talks through.

A transport moves numpy arrays between the participants of one computation (compute parties and, in
2pc, the dealer), in order, tagged.  Every participant runs the same program (SPMD), so each message a
participant expects is known in advance: :meth:`Transport.recv` is told the tag it expects and the
caller checks shape and dtype.  A tag mismatch means the participants diverged (different programs,
shapes or suites) and is an error, never silently tolerated.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class ProtocolError(RuntimeError):
    """The participants disagree: a tag, shape, dtype or suite that does not match what was expected."""


class TransportClosed(ConnectionError):  # noqa: N818 - reads as a state, like ConnectionResetError's peers
    """The transport was shut down (a peer failed or the job was aborted)."""


class Transport(ABC):
    """Ordered, tagged, point-to-point messages between the participants of one job."""

    participant: int

    @abstractmethod
    def send(self, to: int, tag: str, payload: np.ndarray) -> None:
        """Queue ``payload`` for participant ``to``; must not block on the receiver."""

    @abstractmethod
    def recv(self, frm: int, tag: str) -> np.ndarray:
        """The next message from ``frm``; raises ProtocolError if its tag is not ``tag``."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources and wake any participant blocked in :meth:`recv`."""
