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
        """Uniform elements of Z_2^64 with the given shape."""
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        count = int(np.prod(shape, dtype=np.int64))
        return np.frombuffer(self.random_bytes(8 * count), dtype=RING_DTYPE).reshape(shape).copy()

    def bits(self, shape: tuple[int, ...] | int) -> np.ndarray:
        """Uniform bits (0 or 1) as ring elements."""
        return self.ring(shape) >> np.uint64(63)


def system_prg() -> PRG:
    """A PRG freshly seeded from the operating system (for one-off sharing by data or model owners)."""
    return PRG(fresh_seed())
