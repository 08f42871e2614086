"""How participants exchange tensors: one interface, an in-process and (later) a gRPC implementation."""

from mpc_core.transport.base import ProtocolError, Transport, TransportClosed
from mpc_core.transport.inprocess import InProcessNetwork

__all__ = ["InProcessNetwork", "ProtocolError", "Transport", "TransportClosed"]
