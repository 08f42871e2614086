"""The run folder: what a run leaves at the data owner, and how it comes into being atomically.

Layout::

    RUN/config.json      the RunConfig (+ backend label, privacy line, data file hashes)
    RUN/checkpoint.pkl   tuner state after the last complete generation (atomic)
    RUN/history.jsonl    one line per generation (losses, sigma, dev scores, bytes, seconds)
    RUN/prompt.npy       the best prompt [L, H] so far: the data owner's secret, never uploaded anywhere
    RUN/report.json      summary (written at the end of a run, by ``report`` and ``eval``)
    RUN/loss.png, RUN/dev.png

A new run is assembled in a hidden sibling folder and renamed into place only once ``config.json`` and the
first checkpoint exist, so a run that fails during set-up (bad data, cluster down) leaves nothing that
``resume`` could misread.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from data_owner.errors import DataOwnerError

CONFIG = "config.json"
CHECKPOINT = "checkpoint.pkl"
HISTORY = "history.jsonl"
PROMPT = "prompt.npy"
REPORT = "report.json"


class RunFolder:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def is_complete_run(self) -> bool:
        return self.file(CONFIG).is_file() and self.file(CHECKPOINT).is_file()

    def read_config(self) -> dict[str, Any]:
        if not self.path.is_dir():
            raise DataOwnerError(f"run folder not found: {self.path}")
        if not self.is_complete_run:
            raise DataOwnerError(f"{self.path} is not a run folder (no {CONFIG} and {CHECKPOINT})")
        return json.loads(self.file(CONFIG).read_text())

    # ------------------------------------------------------------------ history
    def append_history(self, record: dict[str, Any]) -> None:
        with open(self.file(HISTORY), "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def read_history(self) -> list[dict[str, Any]]:
        path = self.file(HISTORY)
        if not path.is_file():
            return []
        out = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by a crash: everything after it is not checkpointed either
        return out

    def truncate_history(self, lines: int) -> None:
        """Keep the first ``lines`` records: those covered by the checkpoint."""
        records = self.read_history()[:lines]
        from data_owner.checkpoint import atomic_write_bytes

        atomic_write_bytes(
            self.file(HISTORY), "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode()
        )

    def remove_stale_temporaries(self) -> list[str]:
        """Delete the ``.NAME.tmp-PID`` files of atomic writes whose process died mid-write (a kill between
        writing the temporary file and renaming it): never read, but they pile up over crashes."""
        removed = []
        for tmp in self.path.glob(".*.tmp-*"):
            if not _alive(tmp.name.rsplit("-", 1)[-1]):
                tmp.unlink(missing_ok=True)
                removed.append(tmp.name)
        return removed


class PendingRunFolder:
    """A run folder under construction: a hidden sibling that becomes ``target`` on :meth:`commit`."""

    def __init__(self, target: Path) -> None:
        self.target = Path(target)
        if self.target.exists():
            hint = " (resume it with `secp-tune resume`)" if RunFolder(self.target).is_complete_run else ""
            raise DataOwnerError(f"run folder {self.target} already exists{hint}")
        self.target.parent.mkdir(parents=True, exist_ok=True)
        for stale in self.target.parent.glob(f".{self.target.name}.partial-*"):
            if not _alive(stale.name.rsplit("-", 1)[-1]):
                shutil.rmtree(stale, ignore_errors=True)  # left by a set-up that was killed
        self.tmp = self.target.parent / f".{self.target.name}.partial-{os.getpid()}"
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir()
        self.folder = RunFolder(self.tmp)

    def commit(self) -> RunFolder:
        os.rename(self.tmp, self.target)
        from data_owner.checkpoint import fsync_dir

        fsync_dir(self.target.parent)
        return RunFolder(self.target)

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True
