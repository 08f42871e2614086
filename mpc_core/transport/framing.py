"""Framing: one tagged tensor as gRPC peer frames and back, refusing anything malformed or oversized.

A tensor travels as raw little-endian bytes: a header frame (tag, dtype, shape, byte count) whose
``data`` holds the first bytes, then data frames, each frame below the configured message size (about
1 MiB is fastest in Python gRPC).  Nothing is ever encoded element by element.  This module is pure
(no I/O, no threads): :func:`tensor_frames` cuts, :class:`TensorAssembler` reassembles and checks.
"""

from __future__ import annotations

import numpy as np

from mpc_core.transport.base import ProtocolError
from proto.api import peer_pb2

#: Room in every frame for its non-data fields (tags, shapes and ids are all short).
FRAME_OVERHEAD = 4096
MAX_TAG_CHARS = 256
MAX_NDIM = 32
ALLOWED_DTYPES = frozenset(
    np.dtype(t).str for t in ("<u1", "<i1", "?", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f4", "<f8")
)


# ---------------------------------------------------------------------------------------- framing
def tensor_frames(tag: str, payload: np.ndarray, chunk_bytes: int) -> list[peer_pb2.PeerFrame]:
    """The frames of one tagged tensor: a header frame (with the first bytes), then data frames."""
    array = np.asarray(payload)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    if not array.flags.c_contiguous:
        array = array.copy(order="C")  # (np.ascontiguousarray would turn a 0-d array into 1-d)
    dtype = array.dtype.str
    if dtype not in ALLOWED_DTYPES:
        raise TypeError(f"cannot send dtype {dtype}; allowed: {sorted(ALLOWED_DTYPES)}")
    if len(tag) > MAX_TAG_CHARS:
        raise ValueError(f"message tag longer than {MAX_TAG_CHARS} characters")
    raw = memoryview(array.reshape(-1)).cast("B")
    header = peer_pb2.TensorHeader(tag=tag, dtype=dtype, shape=array.shape, nbytes=array.nbytes)
    frames = [peer_pb2.PeerFrame(header=header, data=bytes(raw[:chunk_bytes]))]
    for start in range(chunk_bytes, array.nbytes, chunk_bytes):
        frames.append(peer_pb2.PeerFrame(data=bytes(raw[start : start + chunk_bytes])))
    return frames


class TensorAssembler:
    """Reassembles tensors from one peer's frames, refusing anything malformed or oversized."""

    def __init__(self, max_tensor_bytes: int) -> None:
        self.max_tensor_bytes = max_tensor_bytes
        self._header: peer_pb2.TensorHeader | None = None
        self._buffer = bytearray()
        self._filled = 0

    def feed(self, frame: peer_pb2.PeerFrame) -> tuple[str, np.ndarray] | None:
        """Consume one frame; returns ``(tag, array)`` when a tensor is complete."""
        if frame.HasField("header"):
            if self._header is not None:
                raise ProtocolError("a new tensor started before the previous one was complete")
            self._start(frame.header)
        elif self._header is None:
            if frame.data:
                raise ProtocolError("tensor data arrived without a header")
            raise ProtocolError("an empty frame arrived outside a tensor")
        data = frame.data
        if self._filled + len(data) > len(self._buffer):
            raise ProtocolError("a tensor carried more bytes than its header declared")
        self._buffer[self._filled : self._filled + len(data)] = data
        self._filled += len(data)
        if self._filled < len(self._buffer):
            return None
        header, buffer = self._header, self._buffer
        self._header, self._buffer, self._filled = None, bytearray(), 0
        array = np.frombuffer(buffer, dtype=np.dtype(header.dtype)).reshape(tuple(header.shape))
        return header.tag, array

    def _start(self, header: peer_pb2.TensorHeader) -> None:
        if header.dtype not in ALLOWED_DTYPES:
            raise ProtocolError(f"refused a tensor of dtype {header.dtype[:16]!r}")
        if len(header.tag) > MAX_TAG_CHARS or len(header.shape) > MAX_NDIM:
            raise ProtocolError("refused a tensor header with an oversized tag or shape")
        count = 1
        for dim in header.shape:
            count *= dim
        expected = count * np.dtype(header.dtype).itemsize
        if expected != header.nbytes:
            raise ProtocolError(
                f"tensor header declares {header.nbytes} bytes but dtype {header.dtype} and shape "
                f"{tuple(header.shape)} need {expected}"
            )
        if expected > self.max_tensor_bytes:
            raise ProtocolError(f"refused a tensor of {expected} bytes (limit {self.max_tensor_bytes})")
        self._header = header
        self._buffer = bytearray(expected)
        self._filled = 0
