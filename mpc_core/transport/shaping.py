"""Network shaping for the peer links: an emulated LAN or WAN on top of the real (loopback) network.

A :class:`NetworkShape` (``lan`` 3 Gbps / 0.8 ms, ``wan`` 100 Mbps / 80 ms, or custom) makes each directed
link a virtual wire (:class:`LinkClock`): a message of b bytes sent at time t leaves at
s = max(t, link free) and occupies the link until s + 8 b / bandwidth; it is delivered at that time plus
the latency.  A :class:`DeliveryTimer` thread hands every message to the writer at its delivery time, so
timings include the emulated network.  One timer serves every link of a process
(:data:`DELIVERY_TIMER`); a link may be given another.

This module knows nothing about gRPC or tensors: it only answers "when does this message arrive?".
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


# ---------------------------------------------------------------------------------------- shaping
@dataclass(frozen=True)
class NetworkShape:
    """An emulated link: bandwidth in bits per second (None: unlimited) and one-way latency."""

    name: str = "none"
    bandwidth_bps: float | None = None
    latency_s: float = 0.0

    @property
    def active(self) -> bool:
        return self.bandwidth_bps is not None or self.latency_s > 0

    def serialization_s(self, nbytes: int) -> float:
        return 0.0 if self.bandwidth_bps is None else 8.0 * nbytes / self.bandwidth_bps


NO_SHAPING = NetworkShape()
LAN = NetworkShape("lan", 3e9, 0.8e-3)
WAN = NetworkShape("wan", 100e6, 80e-3)
PRESETS = {"none": NO_SHAPING, "lan": LAN, "wan": WAN}


def network_shape(
    profile: str, bandwidth_mbps: float | None = None, latency_ms: float | None = None
) -> NetworkShape:
    """``none``, ``lan``, ``wan`` or ``custom`` (with bandwidth in Mbit/s and latency in ms)."""
    if profile == "custom":
        if bandwidth_mbps is None or latency_ms is None:
            raise ValueError("a custom network shape needs bandwidth_mbps and latency_ms")
        return NetworkShape("custom", bandwidth_mbps * 1e6, latency_ms * 1e-3)
    try:
        return PRESETS[profile]
    except KeyError:
        raise ValueError(f"unknown network profile {profile!r}; choose none, lan, wan or custom") from None


class DeliveryTimer:
    """Releases shaped messages at their delivery time, from one thread per process.

    An event loop's timers are millisecond-granular (epoll), which would turn the LAN's 0.8 ms into
    1-2 ms; a condition variable's timed wait wakes within tens of microseconds.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def schedule(self, when: float, release: Callable[[], None]) -> None:
        """Call ``release()`` at monotonic time ``when`` (in order of ``when``, then of scheduling)."""
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._seq), release))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="shaper", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    self._cond.wait()
                when, _, release = self._heap[0]
                delay = when - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                heapq.heappop(self._heap)
            with contextlib.suppress(Exception):
                release()


#: The process's delivery timer (one thread, started at the first shaped message).
DELIVERY_TIMER = DeliveryTimer()


class LinkClock:
    """The virtual wire of one directed link: when does a message sent now arrive?"""

    def __init__(self, shape: NetworkShape) -> None:
        self.shape = shape
        self._free_at = 0.0
        self._lock = threading.Lock()

    def delivery_time(self, nbytes: int, now: float) -> float:
        with self._lock:
            start = max(now, self._free_at)
            self._free_at = start + self.shape.serialization_s(nbytes)
            return self._free_at + self.shape.latency_s

    def drained_at(self) -> float:
        """When everything sent so far will have arrived (monotonic time; in the past if it has)."""
        with self._lock:
            return self._free_at + self.shape.latency_s
