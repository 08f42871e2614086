"""Chunking of share arrays for the party API (uploads and fetched results).

A share is a uint64 array (slot axis first) sent as raw little-endian bytes: the first chunk carries a
``ShareHeader`` (name, dtype, shape, byte count) and the first bytes, later chunks only bytes, every
message below the configured size.  :class:`ShareAssembler` rebuilds the array and refuses a stream
whose byte count does not match its header.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

#: Room in every chunk for the header fields (names and shapes are short).
CHUNK_OVERHEAD = 4096


class ShareStreamError(ValueError):
    """The chunks do not add up to the share their header declared."""


def share_chunks(header: Any, share: np.ndarray, max_message_bytes: int, chunk_cls: type) -> Iterator[Any]:
    """``chunk_cls(header=..., data=...)`` messages carrying ``share`` (uint64, little-endian)."""
    array = np.ascontiguousarray(share, dtype="<u8")
    raw = memoryview(array.reshape(-1)).cast("B")
    step = max_message_bytes - CHUNK_OVERHEAD
    yield chunk_cls(header=header, data=bytes(raw[:step]))
    for start in range(step, array.nbytes, step):
        yield chunk_cls(data=bytes(raw[start : start + step]))


class ShareAssembler:
    """Collects one share's bytes after its header has been validated by the receiver.

    The buffer is ``np.empty``: the operating system commits its pages only as data is written, so a
    header that declares a large share and a stream that stops short cost only the bytes that arrived
    (a zero-filled ``bytearray`` would make the whole declared size resident at the header).
    """

    def __init__(self, header: Any) -> None:
        self.header = header
        if header.nbytes % 8:
            raise ShareStreamError(
                f"share {header.name!r}: {header.nbytes} bytes is not a whole number of uint64"
            )
        self._array = np.empty(header.nbytes // 8, dtype="<u8")
        self._buffer = memoryview(self._array).cast("B")
        self._filled = 0

    def feed(self, data: bytes) -> None:
        end = self._filled + len(data)
        if end > len(self._buffer):
            raise ShareStreamError(
                f"share {self.header.name!r} carried more than the {len(self._buffer)} bytes declared"
            )
        self._buffer[self._filled : end] = data
        self._filled = end

    def finish(self) -> np.ndarray:
        if self._filled != len(self._buffer):
            raise ShareStreamError(
                f"share {self.header.name!r} ended after {self._filled} of {len(self._buffer)} bytes declared"
            )
        return self._array.reshape(tuple(self.header.shape)).view(np.uint64)

    def discard(self) -> None:
        """Drop the buffer now (a refused stream must not keep it alive through a traceback)."""
        self._buffer.release()
        self._array = np.empty(0, dtype="<u8")
        self._buffer = memoryview(self._array).cast("B")
