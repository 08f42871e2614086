"""Server-wide resource limits: bytes of shares held by all jobs, and the process's resident memory.

Per-job limits (uploads per job, named inputs) live with the job (:mod:`server.jobs`); what one server
holds across all its jobs, and how much memory it may use before refusing new work, lives here.  Every
refusal is RESOURCE_EXHAUSTED and names the configuration key and its value, so that an operator knows
what to raise and a data owner knows to retry later or elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

from contract.cluster import Limits
from server.errors import exhausted

#: Share of the machine's memory a server may use before refusing new work (when not configured).
DEFAULT_MEMORY_FRACTION = 0.9


def physical_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def resident_bytes() -> int:
    """This process's resident memory (VmRSS), 0 where /proc is not available."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class ResourceGuard:
    """Checks one server's global limits: bytes of shares (stored and in flight) and memory."""

    def __init__(self, limits: Limits, participant: int) -> None:
        self.participant = participant
        self.max_server_bytes = limits.max_server_bytes
        self.max_memory_bytes = limits.max_memory_bytes or int(
            DEFAULT_MEMORY_FRACTION * physical_memory_bytes()
        )
        self.memory_source = (
            "limits.max_memory_bytes" if limits.max_memory_bytes else "90% of this machine's memory"
        )

    def check_memory(self, what: str, adding: int = 0, reserved: int = 0) -> None:
        """Refuse ``what`` (new job, upload, batch) if it would take the process above its memory limit.

        ``adding`` is what ``what`` will allocate (an upload's declared size) and ``reserved`` what accepted
        uploads still in flight will (their buffers fill as data arrives, so resident memory does not show
        them yet): both count now, before anything is allocated, so concurrent headers cannot together
        overshoot the limit. The check and the caller's reservation run on the server's one event loop,
        with no await between them.
        """
        rss = resident_bytes()
        if rss + reserved + adding > self.max_memory_bytes:
            needs = f" and {adding + reserved} more reserved for uploads" if adding or reserved else ""
            raise exhausted(
                f"participant {self.participant} refuses a new {what}: it uses {rss} bytes of memory{needs}, "
                f"above its limit of {self.max_memory_bytes} bytes ({self.memory_source}); retry later"
            )

    def check_server_bytes(self, held: int, adding: int) -> None:
        """Refuse an upload that would take this server's shares (all jobs) above its limit."""
        if held + adding > self.max_server_bytes:
            raise exhausted(
                f"participant {self.participant} holds {held} bytes of shares for all jobs; {adding} more "
                f"would exceed limits.max_server_bytes = {self.max_server_bytes}"
            )
