"""Generate the Python gRPC code for ``proto/*.proto`` with grpcio-tools (never committed).

:func:`ensure_generated` regenerates when a ``.proto`` file is newer than its generated modules.  It is
safe when several processes start at once (an exclusive file lock, files written to a temporary folder
and moved into place).  Run ``python -m proto.build`` to generate explicitly (the Dockerfile does).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
ROOT = PROTO_DIR.parent
SOURCES = ("peer.proto", "party.proto")


def _outputs(source: str) -> list[Path]:
    stem = source.removesuffix(".proto")
    return [PROTO_DIR / f"{stem}_pb2.py", PROTO_DIR / f"{stem}_pb2_grpc.py"]


def is_current() -> bool:
    """Whether every generated module exists and is at least as new as its ``.proto`` source.

    An installed package (wheel, container image) carries the generated modules but not the sources:
    then the modules are what there is.
    """
    for source in SOURCES:
        src = PROTO_DIR / source
        if not src.exists():
            if all(out.exists() for out in _outputs(source)):
                continue
            raise FileNotFoundError(f"neither {src} nor its generated modules exist")
        src_mtime = src.stat().st_mtime
        for out in _outputs(source):
            if not out.exists() or out.stat().st_mtime < src_mtime:
                return False
    return True


def generate() -> None:
    """Run protoc (from grpcio-tools) on every source; imports come out as ``from proto import ...``."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory(dir=PROTO_DIR, prefix=".gen-") as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{ROOT}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            *[str(PROTO_DIR / s) for s in SOURCES],
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {', '.join(SOURCES)}")
        for source in SOURCES:
            for out in _outputs(source):
                generated = Path(tmp) / "proto" / out.name
                staged = out.with_suffix(".py.tmp")
                shutil.copyfile(generated, staged)
                os.replace(staged, out)


def ensure_generated() -> None:
    """Generate the modules if missing or stale (no-op, without locking, when they are current)."""
    if is_current():
        return
    # The lock lives outside the repository so that it never shows up as an untracked file.
    digest = hashlib.sha256(str(PROTO_DIR).encode()).hexdigest()[:16]
    lock_path = Path(tempfile.gettempdir()) / f"secp-proto-{digest}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not is_current():
                generate()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


if __name__ == "__main__":
    generate()
    print(f"generated {', '.join(p.name for s in SOURCES for p in _outputs(s))}", file=sys.stderr)
