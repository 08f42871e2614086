"""A digest of the code that fixes a job's message sequence, so servers of different versions never meet.

Two servers whose engine or programs differ (one updated, one not) would exchange messages of different
shapes or in a different order and fail mid-batch with "participants diverged".  The job spec's digest,
which peers compare when their stream opens, therefore includes this digest: such servers are refused at
the first link with a message that says why.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import mpc_core
import server.programs

#: Packages whose code decides what a participant sends and when.
PROTOCOL_PACKAGES = (mpc_core, server.programs)


@lru_cache(maxsize=1)
def protocol_code_digest() -> str:
    """SHA-256 over the relative path and bytes of every Python file of :data:`PROTOCOL_PACKAGES`."""
    digest = hashlib.sha256()
    for package in PROTOCOL_PACKAGES:
        root = Path(package.__file__).resolve().parent
        for path in sorted(root.rglob("*.py")):
            digest.update(str(path.relative_to(root.parent)).encode())
            digest.update(b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()
