"""A TCP proxy on loopback that delays every byte by a fixed one-way latency, in both directions.

Why a proxy and not the peer transport's shaper: the shaper delays frames on a link that is already up,
but what breaks a distant data owner or peer is the connection itself (TCP, the TLS handshake and
HTTP/2's SETTINGS exchange take several round trips before the first call). Here every byte, handshakes
included, arrives ``delay_s`` after it was sent; bandwidth is not limited and order is kept.

    with LatencyProxy(target=("127.0.0.1", 5001), delay_s=0.08) as proxy:
        ... connect to ("127.0.0.1", proxy.port) ...

Only loopback addresses are accepted (tests never send traffic elsewhere). Connections are bounded in
number and the proxy stops with the context manager.
"""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import suppress

MAX_CONNECTIONS = 512
CHUNK = 1 << 16


class LatencyProxy:
    """Forward ``127.0.0.1:port`` to ``target`` with ``delay_s`` added to each direction."""

    def __init__(self, target: tuple[str, int], delay_s: float, port: int = 0) -> None:
        if target[0] not in ("127.0.0.1", "localhost"):
            raise ValueError("the latency proxy only forwards to loopback addresses")
        self.target = target
        self.delay_s = delay_s
        self.port = port
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="latency-proxy", daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    def __enter__(self) -> LatencyProxy:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        future.result(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with suppress(asyncio.CancelledError, Exception):
                await task

    def _spawn(self, coro) -> None:  # type: ignore[no-untyped-def]
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.connections > MAX_CONNECTIONS:
            client_writer.close()
            return
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()
            return
        self._spawn(self._pipe(client_reader, server_writer))
        self._spawn(self._pipe(server_reader, client_writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read as data comes; write each chunk ``delay_s`` after it was read (a queue keeps the order)."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    with suppress(OSError):
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        delivery = self._loop.create_task(deliver())
        try:
            while True:
                data = await reader.read(CHUNK)
                queue.put_nowait((time.monotonic() + self.delay_s, data))
                if not data:
                    break
            await delivery
        except (OSError, asyncio.CancelledError):
            delivery.cancel()
        finally:
            with suppress(Exception):
                writer.close()
