"""One job's bidirectional stream to one peer (:class:`PeerLink`), its limits, and how it is opened.

Threads: the streams live on an asyncio event loop (the server's), while the SPMD program runs in a
worker thread.  :meth:`PeerLink.send` builds the frames in the caller's thread and hands them to the
loop without waiting (the interface requires a non-blocking send); a reader task on the loop
reassembles incoming tensors into a thread-safe queue that :meth:`PeerLink.recv` blocks on.

Accounting: :class:`WireStats` counts serialized frame bytes and frames in both directions, so the
engine's payload accounting (``Context.stats``) can be compared with what the wire carried.

Shaping (:mod:`.shaping`): with an active :class:`NetworkShape` every message is released to the writer
at its emulated delivery time.

Flow control: a link buffers at most ``window_bytes`` of tensors in each direction beyond the one being
moved.  The reader stops reading the stream while that many received bytes wait for :meth:`PeerLink.recv`
(gRPC's own flow control then holds the sender's writes), and :meth:`PeerLink.send` waits while that many
of its bytes are not yet written.  So a participant that runs ahead (the 2pc dealer, which only sends)
is held back by the slowest reader instead of piling its whole output into memory.  A message larger than
the window still travels alone, and a send waits only on bytes the peer will read in program order, so
lock-step exchanges cannot deadlock (a party sends round k + 1 only after reading the peer's round k).

Failures: a broken stream, an ``Abort`` frame from the peer, or a malformed frame closes the link and
wakes a blocked :meth:`PeerLink.recv` with :class:`TransportClosed` naming the cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import grpc
import grpc.aio
import numpy as np

from mpc_core.transport.base import ProtocolError, TransportClosed
from mpc_core.transport.framing import FRAME_OVERHEAD, TensorAssembler, tensor_frames
from mpc_core.transport.shaping import DELIVERY_TIMER, NO_SHAPING, DeliveryTimer, LinkClock, NetworkShape
from proto.api import peer_pb2, peer_pb2_grpc


# ---------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class LinkSettings:
    """Limits and shaping of every link of a job."""

    max_message_bytes: int = 1 << 20
    max_tensor_bytes: int = 16 << 30
    recv_timeout_s: float = 300.0
    shape: NetworkShape = NO_SHAPING
    window_bytes: int = 128 << 20

    def __post_init__(self) -> None:
        if self.max_message_bytes < 2 * FRAME_OVERHEAD:
            raise ValueError(f"max_message_bytes must be at least {2 * FRAME_OVERHEAD}")
        if self.window_bytes < 1:
            raise ValueError("window_bytes must be positive")

    @property
    def chunk_bytes(self) -> int:
        return self.max_message_bytes - FRAME_OVERHEAD


@dataclass
class WireStats:
    """What one participant's links carried (serialized frames, in both directions)."""

    bytes_sent: int = 0
    bytes_received: int = 0
    frames_sent: int = 0
    frames_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    shaping_delay_s: float = 0.0

    def add(self, other: WireStats) -> WireStats:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    def as_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


# ---------------------------------------------------------------------------------------- links
class _Closed:
    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


class _Final:
    """The writer's last item: send a Close or Abort frame, then stop writing."""

    __slots__ = ("mode", "reason")

    def __init__(self, mode: str, reason: str) -> None:
        self.mode = mode
        self.reason = reason


FailureCallback = Callable[[int, str], None]


class PeerLink:
    """One job's stream to one peer, usable from any thread; its I/O runs on ``loop``.

    ``rpc`` is either side of the bidirectional call (a client call object or a server context): both
    offer ``read()`` and ``write()`` coroutines.  ``on_failure(peer, reason)`` runs on the loop when
    the link fails (not when it is closed locally).  ``timer`` releases shaped messages (the process's
    one :data:`~mpc_core.transport.shaping.DELIVERY_TIMER` unless given another).
    """

    def __init__(
        self,
        peer: int,
        rpc: Any,
        loop: asyncio.AbstractEventLoop,
        settings: LinkSettings,
        *,
        is_client: bool,
        on_failure: FailureCallback | None = None,
        timer: DeliveryTimer = DELIVERY_TIMER,
    ) -> None:
        self.peer = peer
        self.settings = settings
        self.stats = WireStats()
        self._rpc = rpc
        self._loop = loop
        self._is_client = is_client
        self._on_failure = on_failure
        self._clock = LinkClock(settings.shape)
        self._timer = timer  # releases shaped messages at their delivery time
        self._incoming: queue.Queue = queue.Queue()
        self._outgoing: asyncio.Queue = asyncio.Queue()
        self._lock = threading.Lock()
        # flow control (module docstring): bytes received and not yet taken, bytes sent and not yet written
        self._buffered = 0
        self._room = asyncio.Event()
        self._room.set()
        self._unwritten = 0
        self._written = threading.Condition()
        self._closed_reason: str | None = None
        self._malformed = False
        self._done = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    # ------------------------------------------------------------------ lifecycle (loop thread)
    def start(self) -> None:
        """Start the reader and writer tasks; call on the loop thread."""
        self._tasks = [
            self._loop.create_task(self._reader(), name=f"peer-{self.peer}-reader"),
            self._loop.create_task(self._writer(), name=f"peer-{self.peer}-writer"),
        ]

    async def wait_closed(self) -> None:
        await self._done.wait()

    @property
    def closed_reason(self) -> str | None:
        return self._closed_reason

    @property
    def malformed(self) -> bool:
        """Whether the peer's frames were not a well-formed tensor stream (the link was closed for it)."""
        return self._malformed

    # ------------------------------------------------------------------ engine side (any thread)
    def send(self, tag: str, payload: np.ndarray) -> None:
        """Queue one tagged tensor and return, once fewer than ``window_bytes`` of earlier sends wait to be
        written (raises TransportClosed if the link is down or nothing moves for ``recv_timeout_s``)."""
        if self._closed_reason is not None:
            raise TransportClosed(self._closed_reason)
        frames = tensor_frames(tag, payload, self.settings.chunk_bytes)
        nbytes = int(np.asarray(payload).nbytes)
        self._wait_for_window(nbytes)
        if self.settings.shape.active:
            now = time.monotonic()
            deliver_at = self._clock.delivery_time(sum(f.ByteSize() for f in frames), now)
            self.stats.shaping_delay_s += deliver_at - now
            self._timer.schedule(deliver_at, partial(self._release, (frames, nbytes)))
            return
        self._release((frames, nbytes), raising=True)

    def _wait_for_window(self, nbytes: int) -> None:
        """Block while unwritten bytes plus this message exceed the window (a lone message passes)."""
        deadline = time.monotonic() + self.settings.recv_timeout_s
        with self._written:
            while self._unwritten and self._unwritten + nbytes > self.settings.window_bytes:
                if self._closed_reason is not None:
                    raise TransportClosed(self._closed_reason)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TransportClosed(
                        f"participant {self.peer} took no data for {self.settings.recv_timeout_s:g} s"
                    )
                self._written.wait(min(left, 1.0))
            self._unwritten += nbytes

    def _mark_written(self, nbytes: int) -> None:
        with self._written:
            self._unwritten -= nbytes
            self._written.notify_all()

    def _release(self, item: tuple[list[peer_pb2.PeerFrame], int], raising: bool = False) -> None:
        """Hand a message's frames to the writer on the loop (from any thread)."""
        try:
            self._loop.call_soon_threadsafe(self._outgoing.put_nowait, item)
        except RuntimeError:  # the loop is gone: the server is shutting down
            self._mark_written(item[1])
            if raising:
                raise TransportClosed("the peer transport's event loop has stopped") from None

    def recv(self, tag: str) -> np.ndarray:
        """The next tensor from the peer; it must carry ``tag``."""
        timeout = self.settings.recv_timeout_s
        try:
            item = self._incoming.get(timeout=timeout)
        except queue.Empty:
            raise TransportClosed(f"no message from participant {self.peer} within {timeout:g} s") from None
        if isinstance(item, _Closed):
            self._incoming.put(item)  # every later receive fails the same way
            raise TransportClosed(item.reason)
        got_tag, array = item
        self._take(array.nbytes)
        if got_tag != tag:
            raise ProtocolError(
                f"expected message {tag!r} from participant {self.peer}, got {got_tag!r}: the participants "
                "are running different programs, shapes or suites"
            )
        return array

    def close(self, reason: str = "link closed locally", notify: bool = True, graceful: bool = False) -> None:
        """Shut the link down from any thread.

        ``graceful``: the job ended normally (the peer keeps its job state until told otherwise);
        otherwise, with ``notify``, the peer is told the job was aborted and why.
        """
        if not self._mark_closed(reason):
            return
        mode = "close" if graceful else ("abort" if notify else "silent")
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._shutdown(reason, mode)))

    def _take(self, nbytes: int) -> None:
        """A received tensor left the buffer: wake the reader if it was waiting for room."""
        with self._lock:
            was_full = self._buffered > self.settings.window_bytes
            self._buffered -= nbytes
        if was_full:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._room.set)

    # ------------------------------------------------------------------ internals (loop thread)
    def _mark_closed(self, reason: str) -> bool:
        with self._lock:
            if self._closed_reason is not None:
                return False
            self._closed_reason = reason
        self._incoming.put(_Closed(reason))
        with self._written:
            self._written.notify_all()
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._room.set)
        return True

    def _fail(self, reason: str) -> None:
        if not self._mark_closed(reason):
            return
        self._loop.create_task(self._shutdown(reason, "silent"))
        if self._on_failure is not None:
            self._on_failure(self.peer, reason)

    async def _shutdown(self, reason: str, mode: str) -> None:
        """End the link: ``close``/``abort`` send a last frame (queued data is dropped), ``silent`` does not.

        Pending gRPC reads are never cancelled here (cancelling a read cancels the whole call, which
        would lose the last frame); the call ends when both sides have stopped writing.
        """
        writer = self._tasks[1] if len(self._tasks) > 1 else None
        if mode != "silent" and writer is not None and not writer.done():
            self._outgoing.put_nowait(_Final(mode, reason))
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(writer), timeout=3.0)
        if writer is not None and not writer.done():
            writer.cancel()
        if self._is_client:
            if mode == "silent":
                self._rpc.cancel()
            else:
                self._loop.call_later(2.0, self._rpc.cancel)
        self._done.set()

    async def _reader(self) -> None:
        assembler = TensorAssembler(self.settings.max_tensor_bytes)
        who = f"participant {self.peer}"
        try:
            while True:
                frame = await self._rpc.read()
                if frame is grpc.aio.EOF:
                    self._fail(f"{who} closed the stream")
                    return
                self.stats.frames_received += 1
                self.stats.bytes_received += frame.ByteSize()
                if frame.HasField("abort"):
                    self._fail(f"{who} aborted the job: {frame.abort.reason[:500]}")
                    return
                if frame.HasField("close"):
                    if self._mark_closed(f"{who} closed the job"):
                        self._loop.create_task(self._shutdown(f"{who} closed the job", "silent"))
                    return
                done = assembler.feed(frame)
                if done is not None:
                    self.stats.messages_received += 1
                    with self._lock:
                        self._buffered += done[1].nbytes
                    self._incoming.put(done)
                    await self._wait_for_room()
        except asyncio.CancelledError:
            self._fail(f"the stream with {who} was cancelled")
            raise
        except grpc.aio.AioRpcError as exc:
            self._fail(f"the stream with {who} broke: {exc.code().name}: {exc.details()}")
        except ProtocolError as exc:
            self._malformed = True
            self._fail(f"malformed traffic from {who}: {exc}")
        except Exception as exc:
            self._fail(f"the stream with {who} failed: {type(exc).__name__}: {exc}")

    async def _wait_for_room(self) -> None:
        """Stop reading while more than the window waits for recv() (gRPC then holds the sender)."""
        while self._closed_reason is None:
            with self._lock:
                if self._buffered <= self.settings.window_bytes:
                    return
                self._room.clear()
            await self._room.wait()

    async def _writer(self) -> None:
        try:
            while True:
                item = await self._outgoing.get()
                if isinstance(item, _Final):
                    await self._write_final(item)
                    return
                frames, nbytes = item
                try:
                    if self._closed_reason is not None:
                        continue  # the link is closing: drop queued data
                    for frame in frames:
                        await self._rpc.write(frame)
                        self.stats.frames_sent += 1
                        self.stats.bytes_sent += frame.ByteSize()
                    self.stats.messages_sent += 1
                finally:
                    self._mark_written(nbytes)
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as exc:
            self._fail(f"sending to participant {self.peer} failed: {exc.code().name}: {exc.details()}")
        except Exception as exc:
            self._fail(f"sending to participant {self.peer} failed: {type(exc).__name__}: {exc}")

    async def _write_final(self, final: _Final) -> None:
        if final.mode == "close":
            frame = peer_pb2.PeerFrame(close=peer_pb2.Close())
        else:
            frame = peer_pb2.PeerFrame(abort=peer_pb2.Abort(reason=final.reason[:500]))
        with contextlib.suppress(Exception):
            await self._rpc.write(frame)
            if self._is_client:
                await self._rpc.done_writing()


# ---------------------------------------------------------------------------------------- set-up
class LinkRefusedError(ConnectionError):
    """The peer refused or could not take the stream (carries its gRPC status code)."""

    def __init__(self, peer: int, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"participant {peer} refused the peer stream: {code.name}: {details}")
        self.peer = peer
        self.code = code
        self.details = details


async def open_link(
    channel: grpc.aio.Channel,
    *,
    job_id: str,
    me: int,
    peer: int,
    digest: bytes,
    settings: LinkSettings,
    timeout_s: float,
    metadata: Any = None,
    on_failure: FailureCallback | None = None,
) -> PeerLink:
    """Initiator side: open the job's stream to ``peer``, exchange Hello frames, start the link."""
    # wait_for_ready: a peer that is (re)starting gets until the timeout to accept the stream
    call = peer_pb2_grpc.PeerStub(channel).Exchange(metadata=metadata, wait_for_ready=True)
    try:
        await asyncio.wait_for(
            call.write(
                peer_pb2.PeerFrame(hello=peer_pb2.Hello(job_id=job_id, participant=me, spec_digest=digest))
            ),
            timeout_s,
        )
        reply = await asyncio.wait_for(call.read(), timeout_s)
    except grpc.aio.AioRpcError as exc:
        raise LinkRefusedError(peer, exc.code(), exc.details() or "") from None
    except TimeoutError:
        call.cancel()
        raise LinkRefusedError(
            peer, grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer within {timeout_s:g} s"
        ) from None
    if reply is grpc.aio.EOF:
        code = await call.code()
        raise LinkRefusedError(peer, code, await call.details() or "stream ended before the peer's hello")
    hello = reply.hello if reply.HasField("hello") else None
    if hello is None or hello.participant != peer or hello.job_id != job_id or hello.spec_digest != digest:
        call.cancel()
        raise ProtocolError(f"participant {peer} answered with a different job, participant or job spec")
    link = PeerLink(peer, call, asyncio.get_running_loop(), settings, is_client=True, on_failure=on_failure)
    link.start()
    return link


async def accept_link(
    context: grpc.aio.ServicerContext,
    hello: peer_pb2.Hello,
    *,
    me: int,
    settings: LinkSettings,
    on_failure: FailureCallback | None = None,
) -> PeerLink:
    """Acceptor side (inside the Exchange handler, after checking ``hello``): answer and start the link."""
    answer = peer_pb2.Hello(job_id=hello.job_id, participant=me, spec_digest=hello.spec_digest)
    await context.write(peer_pb2.PeerFrame(hello=answer))
    link = PeerLink(
        hello.participant,
        context,
        asyncio.get_running_loop(),
        settings,
        is_client=False,
        on_failure=on_failure,
    )
    link.start()
    return link
