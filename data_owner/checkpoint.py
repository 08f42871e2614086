"""Atomic files: a write either lands completely or not at all (temp file + fsync + ``os.replace``).

The tuner's checkpoint (the pickled ``cma`` object with its random generator, numpy's global RNG state, the
best prompt, counters and the number of history lines) is written this way after every generation, so a crash
or Ctrl-C at any instant leaves the previous complete checkpoint: at most one generation is lost.
"""

from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

CHECKPOINT_VERSION = 1


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_write_npy(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array)
    atomic_write_bytes(path, buf.getvalue())


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write_bytes(path, pickle.dumps({"version": CHECKPOINT_VERSION, **state}, protocol=5))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint dict; raises ``ValueError`` for a file from another version or a damaged file."""
    try:
        state = pickle.loads(Path(path).read_bytes())
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
        raise ValueError(f"damaged checkpoint {path}: {exc}") from exc
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"checkpoint {path} is not a version-{CHECKPOINT_VERSION} tuner checkpoint")
    return state
