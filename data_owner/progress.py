"""The progress display of ``secp-tune run/resume`` on stderr: generation, calls, best loss, dev score
(percent), bytes, elapsed and ETA.  On a terminal a live rich bar; otherwise (a log file, a pipe, CI) one
plain line per generation, so a run of many minutes shows its progress in logs too.  The label carries the
backend's full name, e.g. ``plain (NOT PRIVATE)``, printed as text (never read as rich markup).  Disabled
with ``--quiet``; never mixed into ``--json`` output on stdout.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_seconds(s: float) -> str:
    s = round(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class TuningProgress:
    """A context manager whose :meth:`update` is the tuner's progress callback."""

    def __init__(
        self, console: Console, label: str, total_calls: int, done_calls: int = 0, enabled: bool = True
    ) -> None:
        self.enabled = enabled
        self.console = console
        self.label = label
        self.total = total_calls
        self.live = enabled and console.is_terminal
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("gen {task.fields[gen]}"),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("dev {task.fields[dev]}"),
            TextColumn("{task.fields[bytes]}"),
            TimeElapsedColumn(),
            TextColumn("ETA {task.fields[eta]}"),
            console=console,
            disable=not self.live,
            transient=False,
        )
        self.task = self.progress.add_task(
            escape(label),
            total=total_calls,
            completed=done_calls,
            gen="-",
            loss="-",
            dev="-",
            bytes="0 B",
            eta="?",
        )

    def __enter__(self) -> TuningProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def update(self, info: dict[str, Any]) -> None:
        fields = {
            "gen": f"{info['generation']}/{info['generations']}",
            "loss": f"{info['best_train_loss']:.4f}",
            "dev": f"{info['best_dev']:.1f}%",
            "bytes": human_bytes(
                info.get("bytes_sent", 0) + info.get("bytes_received", 0) + info.get("server_bytes", 0)
            ),
            "eta": human_seconds(info["eta"]),
        }
        if self.live:
            self.progress.update(self.task, completed=info["calls"], **fields)
        elif self.enabled:
            line = log_line(self.label, info["calls"], self.total, info["elapsed"], fields)
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)


def log_line(label: str, calls: int, total: int, elapsed: float, fields: dict[str, str]) -> str:
    """One generation as one plain line (no markup, no control characters), for logs."""
    return (
        f"{label}: gen {fields['gen']}  calls {calls}/{total}  loss {fields['loss']}  dev {fields['dev']}  "
        f"{fields['bytes']}  elapsed {human_seconds(elapsed)}  ETA {fields['eta']}"
    )
