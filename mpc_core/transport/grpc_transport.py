"""gRPC transport: the engine's :class:`Transport` over long-lived bidirectional peer streams.

One stream (``secp.peer.v1.Peer/Exchange``) per job and pair of participants carries tagged tensors
both ways.  The pieces live apart, one job each:

    shaping.py    the emulated network (NetworkShape, LinkClock, the delivery timer)
    framing.py    one tensor as frames and back (tensor_frames, TensorAssembler)
    link.py       one stream to one peer: threads, flow control, failures, opening (PeerLink, open_link)
    this module   the Transport over a participant's links (GrpcTransport)

The names of the pieces are re-exported here, so ``from mpc_core.transport.grpc_transport import ...``
keeps working.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from mpc_core.transport.base import ProtocolError, Transport
from mpc_core.transport.framing import (
    ALLOWED_DTYPES,
    FRAME_OVERHEAD,
    MAX_NDIM,
    MAX_TAG_CHARS,
    TensorAssembler,
    tensor_frames,
)
from mpc_core.transport.link import (
    FailureCallback,
    LinkRefusedError,
    LinkSettings,
    PeerLink,
    WireStats,
    accept_link,
    open_link,
)
from mpc_core.transport.shaping import (
    DELIVERY_TIMER,
    LAN,
    NO_SHAPING,
    PRESETS,
    WAN,
    DeliveryTimer,
    LinkClock,
    NetworkShape,
    network_shape,
)

__all__ = [
    "ALLOWED_DTYPES",
    "DELIVERY_TIMER",
    "FRAME_OVERHEAD",
    "LAN",
    "MAX_NDIM",
    "MAX_TAG_CHARS",
    "NO_SHAPING",
    "PRESETS",
    "WAN",
    "DeliveryTimer",
    "FailureCallback",
    "GrpcTransport",
    "LinkClock",
    "LinkRefusedError",
    "LinkSettings",
    "NetworkShape",
    "PeerLink",
    "TensorAssembler",
    "WireStats",
    "accept_link",
    "network_shape",
    "open_link",
    "tensor_frames",
]


# ---------------------------------------------------------------------------------------- transport
@dataclass
class GrpcTransport(Transport):
    """The engine's transport for one participant of one job, over its established peer links."""

    participant: int
    links: Mapping[int, PeerLink] = field(default_factory=dict)

    def _link(self, peer: int) -> PeerLink:
        try:
            return self.links[peer]
        except KeyError:
            raise ProtocolError(f"participant {self.participant} has no link to participant {peer}") from None

    def send(self, to: int, tag: str, payload: np.ndarray) -> None:
        self._link(to).send(tag, payload)

    def recv(self, frm: int, tag: str) -> np.ndarray:
        return self._link(frm).recv(tag)

    def close(self, reason: str = "transport closed", notify: bool = True, graceful: bool = False) -> None:
        for link in self.links.values():
            link.close(reason, notify=notify, graceful=graceful)

    def wire_stats(self) -> WireStats:
        total = WireStats()
        for link in self.links.values():
            total.add(link.stats)
        return total
