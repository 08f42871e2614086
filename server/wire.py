"""Registering the party and peer services with request parsing that cannot fail inside gRPC.

With the generated ``add_*Servicer_to_server``, a request that is not valid protobuf for its type (corrupt
wire format, a string field holding invalid UTF-8) makes gRPC's own deserializer raise: the caller gets
UNKNOWN and the server logs a traceback for every such message (found by fuzzing the party API).  Here
the deserializer never raises; it returns a :class:`MalformedMessage` that the handlers refuse with
INVALID_ARGUMENT after checking the caller, like any other malformed request.  Inside an accepted peer
stream, reading any field of a malformed frame raises :class:`MalformedFrameError` (a ProtocolError), so
the transport treats it as malformed traffic from that peer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass

from mpc_core.transport.base import ProtocolError
from server.errors import RpcError, invalid


class MalformedFrameError(ProtocolError):
    """A field of a message that could not be parsed was read."""


class MalformedMessage:
    """Stands in for a request that failed to parse; says which type and why (never its bytes)."""

    __slots__ = ("reason", "type_name")

    def __init__(self, type_name: str, reason: str) -> None:
        self.type_name = type_name
        self.reason = reason

    def error(self) -> RpcError:
        return invalid(f"the request is not a valid {self.type_name} message ({self.reason})")

    def __getattr__(self, name: str) -> Any:
        raise MalformedFrameError(f"a frame is not a valid {self.type_name} message ({self.reason})")


def _reason(exc: Exception) -> str:
    """protobuf's own explanation ("Wire format was corrupt", "String field had bad UTF-8")."""
    text = str(exc).rpartition(": ")[2] or type(exc).__name__
    return text[:120]


def tolerant_parser(cls: type[Message]) -> Callable[[bytes], Message | MalformedMessage]:
    type_name = cls.DESCRIPTOR.full_name

    def parse(data: bytes) -> Message | MalformedMessage:
        try:
            return cls.FromString(data)
        except (DecodeError, ValueError, RuntimeError) as exc:
            return MalformedMessage(type_name, _reason(exc))

    return parse


_HANDLER_KINDS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def add_service(server: grpc.aio.Server, service: ServiceDescriptor, servicer: object) -> None:
    """Register every method of ``service`` on ``servicer`` with tolerant request parsing."""
    handlers = {}
    for method in service.methods:
        make = _HANDLER_KINDS[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=tolerant_parser(GetMessageClass(method.input_type)),
            response_serializer=GetMessageClass(method.output_type).SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
