"""Cryptographic pseudo-random generators for shares and correlated randomness.

AES-128 in counter mode (from ``cryptography``, AES-NI where present, ~2 GB/s here) keyed by a 16-byte
seed.  Two parties holding the same seed draw identical streams as long as they make identical calls
in identical order, which the SPMD programs guarantee.  numpy's generators are not used for anything
secret: they are not cryptographic.
"""

from __future__ import annotations

import secrets

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from mpc_core.ring import RING_DTYPE

SEED_BYTES = 16
#: Keystream is produced through this block of zeros (4 MiB), and ring() asks for 16 bytes of slack.
_ZERO_BLOCK = bytes(1 << 22)
_SLACK_WORDS = 2


def _shape_and_count(shape: tuple[int, ...] | int) -> tuple[tuple[int, ...], int]:
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    return shape, int(np.prod(shape, dtype=np.int64))


def fresh_seed() -> bytes:
    """A seed from the operating system's cryptographic source."""
    return secrets.token_bytes(SEED_BYTES)


class PRG:
    """A deterministic stream of ring elements from a secret seed (AES-128-CTR keystream)."""

    __slots__ = ("_encryptor",)

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_BYTES:
            raise ValueError(f"PRG seed must be {SEED_BYTES} bytes")
        self._encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()

    def random_bytes(self, count: int) -> bytes:
        return self._encryptor.update(bytes(count))

    def ring(self, shape: tuple[int, ...] | int) -> np.ndarray:
        """Uniform elements of Z_2^64 with the given shape.

        The keystream is written straight into the result, a slice at a time from one zero block: no
        zero input, keystream copy or conversion of the whole size (this runs for every mask and share).
        """
        shape, count = _shape_and_count(shape)
        out = np.empty(count + _SLACK_WORDS, dtype=RING_DTYPE)  # update_into wants a block of room
        raw = memoryview(out).cast("B")
        total = 8 * count
        for start in range(0, total, len(_ZERO_BLOCK)):
            size = min(len(_ZERO_BLOCK), total - start)
            source = _ZERO_BLOCK if size == len(_ZERO_BLOCK) else memoryview(_ZERO_BLOCK)[:size]
            self._encryptor.update_into(source, raw[start : start + size + 15])
        return out[:count].reshape(shape)

    def bits(self, shape: tuple[int, ...] | int) -> np.ndarray:
        """Uniform bits (0 or 1) as ring elements, eight from each keystream byte."""
        shape, count = _shape_and_count(shape)
        packed = np.frombuffer(self.random_bytes(-(-count // 8)), dtype=np.uint8)
        return np.unpackbits(packed, count=count).astype(RING_DTYPE).reshape(shape)


def system_prg() -> PRG:
    """A PRG freshly seeded from the operating system (for one-off sharing by data or model owners)."""
    return PRG(fresh_seed())
