"""Errors that end an RPC with a definite gRPC status code and a clear message.

Handlers raise :class:`RpcError`; the service layer turns it into ``context.abort(code, message)``.
Messages name jobs, tensors, shapes, participants and limits, never values of shares or results.
"""

from __future__ import annotations

import grpc


class RpcError(Exception):
    """A refusal or failure with the status code the caller should see."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


def invalid(message: str) -> RpcError:
    return RpcError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> RpcError:
    return RpcError(grpc.StatusCode.NOT_FOUND, message)


def precondition(message: str) -> RpcError:
    return RpcError(grpc.StatusCode.FAILED_PRECONDITION, message)


def denied(message: str) -> RpcError:
    return RpcError(grpc.StatusCode.PERMISSION_DENIED, message)


def unauthenticated(message: str) -> RpcError:
    return RpcError(grpc.StatusCode.UNAUTHENTICATED, message)


def unavailable(message: str) -> RpcError:
    return RpcError(grpc.StatusCode.UNAVAILABLE, message)


def exhausted(message: str) -> RpcError:
    return RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, message)


def shown(text: str, limit: int = 64) -> str:
    """A caller-supplied string as it may appear in a message: quoted and cut to ``limit`` characters."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


def shown_shape(shape: tuple[int, ...], limit: int = 9) -> str:
    """A caller-supplied shape as it may appear in a message (at most ``limit`` dimensions shown)."""
    return str(shape) if len(shape) <= limit else f"{shape[:limit]}... ({len(shape)} dimensions)"
