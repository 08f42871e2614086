"""The gRPC transport: framing, identical results to the in-process transport, wire accounting, shaping,
failures.  All participants run in this process (one thread each) over real gRPC streams on loopback."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import grpc
import grpc.aio
import numpy as np
import pytest

from mpc_core.context import PARTICIPANTS
from mpc_core.prg import PRG
from mpc_core.ring import RING_DTYPE, FixedPoint
from mpc_core.suites import suite_class
from mpc_core.transport.base import ProtocolError, TransportClosed
from mpc_core.transport.grpc_transport import (
    LAN,
    WAN,
    GrpcTransport,
    LinkClock,
    LinkSettings,
    NetworkShape,
    PeerLink,
    TensorAssembler,
    accept_link,
    network_shape,
    open_link,
    tensor_frames,
)
from proto.api import peer_pb2, peer_pb2_grpc
from server.execute import run_in_process, run_program, start_context
from server.programs import get_program

pytestmark = pytest.mark.timeout(120)


# ---------------------------------------------------------------------------------------- framing
@pytest.mark.parametrize(
    ("dtype", "shape"),
    [(np.uint64, (3, 5)), (np.uint8, (16,)), (np.uint32, (2, 3, 4)), (np.uint64, (0, 4)), (np.int64, ())],
)
@pytest.mark.parametrize("chunk", [64, 4096])
def test_frames_roundtrip(dtype, shape, chunk):
    rng = np.random.default_rng(1)
    array = rng.integers(0, 200, size=shape).astype(dtype)
    frames = tensor_frames("0->1#7", array, chunk)
    assert frames[0].header.tag == "0->1#7"
    assert all(len(f.data) <= chunk for f in frames)
    assert len(frames) == max(1, -(-array.nbytes // chunk))
    assembler = TensorAssembler(1 << 20)
    outs = [assembler.feed(f) for f in frames]
    assert all(o is None for o in outs[:-1])
    tag, got = outs[-1]
    assert tag == "0->1#7" and got.dtype == array.dtype and got.shape == array.shape
    assert np.array_equal(got, array)
    got[...] = 0  # received arrays are writable, like the in-process transport's copies


def test_big_endian_payload_travels_little_endian():
    array = np.arange(6, dtype=">u8").reshape(2, 3)
    (frame,) = tensor_frames("t", array, 4096)
    assert frame.header.dtype == "<u8"
    _, got = TensorAssembler(1 << 20).feed(frame)
    assert np.array_equal(got, np.arange(6).reshape(2, 3))


def _header(**kw) -> peer_pb2.PeerFrame:
    fields = {"tag": "t", "dtype": "<u8", "shape": [2], "nbytes": 16, **kw}
    return peer_pb2.PeerFrame(header=peer_pb2.TensorHeader(**fields))


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        ([peer_pb2.PeerFrame(data=b"12345678")], "without a header"),
        ([_header(nbytes=15)], "declares 15 bytes"),
        ([_header(dtype="|O")], "dtype"),
        ([_header(dtype="<u8", shape=[1 << 20], nbytes=8 << 20)], "limit"),
        ([_header(), peer_pb2.PeerFrame(data=b"x" * 24)], "more bytes"),
        ([_header(), _header()], "before the previous"),
    ],
)
def test_assembler_refuses_malformed_frames(frames, message):
    assembler = TensorAssembler(max_tensor_bytes=1 << 20)
    with pytest.raises(ProtocolError, match=message):
        for frame in frames:
            assembler.feed(frame)


def test_link_clock_models_latency_and_bandwidth():
    clock = LinkClock(NetworkShape("t", bandwidth_bps=8e6, latency_s=0.01))  # 1 MB/s, 10 ms
    assert clock.delivery_time(1000, now=0.0) == pytest.approx(0.001 + 0.01)
    # a second message sent at once queues behind the first on the wire
    assert clock.delivery_time(1000, now=0.0) == pytest.approx(0.002 + 0.01)
    # after the link went idle, only its own serialization and the latency count
    assert clock.delivery_time(1000, now=5.0) == pytest.approx(5.0 + 0.001 + 0.01)


def test_network_presets():
    assert (LAN.bandwidth_bps, LAN.latency_s) == (3e9, 0.8e-3)
    assert (WAN.bandwidth_bps, WAN.latency_s) == (100e6, 80e-3)
    custom = network_shape("custom", bandwidth_mbps=200, latency_ms=40)
    assert (custom.bandwidth_bps, custom.latency_s) == (200e6, 0.04)
    assert not network_shape("none").active
    with pytest.raises(ValueError, match="custom"):
        network_shape("custom")


# ---------------------------------------------------------------------------------------- a mesh
class _Hub(peer_pb2_grpc.PeerServicer):
    """Accepts streams for one participant (no job bookkeeping, no authentication: transport only)."""

    def __init__(self, me: int, settings: LinkSettings) -> None:
        self.me = me
        self.settings = settings
        self.links: dict[int, PeerLink] = {}
        self.arrived = asyncio.Event()

    async def Exchange(self, request_iterator, context):  # noqa: N802 - gRPC's name
        first = await context.read()
        link = await accept_link(context, first.hello, me=self.me, settings=self.settings)
        self.links[first.hello.participant] = link
        if len(self.links) == self.me:
            self.arrived.set()
        await link.wait_closed()


class Mesh:
    """Three participants' links over real gRPC streams, on an event loop in a background thread."""

    def __init__(self, settings: LinkSettings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.links, self._servers, self._channels = self._run(self._build())

    def _run(self, coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _build(self):
        hubs, servers, ports, channels = [], [], [], []
        for p in range(PARTICIPANTS):
            server = grpc.aio.server()
            hub = _Hub(p, self.settings)
            peer_pb2_grpc.add_PeerServicer_to_server(hub, server)
            ports.append(server.add_insecure_port("127.0.0.1:0"))
            await server.start()
            hubs.append(hub)
            servers.append(server)
        links: dict[int, dict[int, PeerLink]] = {p: {} for p in range(PARTICIPANTS)}
        for i in range(PARTICIPANTS):
            for j in range(i + 1, PARTICIPANTS):
                channel = grpc.aio.insecure_channel(f"127.0.0.1:{ports[j]}")
                channels.append(channel)
                links[i][j] = await open_link(
                    channel, job_id="job", me=i, peer=j, digest=b"d", settings=self.settings, timeout_s=10
                )
        for j in range(PARTICIPANTS):
            await asyncio.wait_for(hubs[j].arrived.wait(), 10) if j else None
            links[j].update(hubs[j].links)
        return links, servers, channels

    def transport(self, p: int) -> GrpcTransport:
        return GrpcTransport(p, self.links[p])

    def close(self) -> None:
        async def shutdown():
            for server in self._servers:
                await server.stop(0)
            for channel in self._channels:
                await channel.close()

        self._run(shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def mesh_factory():
    meshes: list[Mesh] = []

    def make(settings: LinkSettings | None = None) -> Mesh:
        mesh = Mesh(settings or LinkSettings(recv_timeout_s=20))
        meshes.append(mesh)
        return mesh

    yield make
    for mesh in meshes:
        mesh.close()


def _parallel(fn: Callable[[int], object]) -> list:
    results: list = [None] * PARTICIPANTS
    errors: list = [None] * PARTICIPANTS

    def body(p: int) -> None:
        try:
            results[p] = fn(p)
        except BaseException as exc:
            errors[p] = exc

    threads = [threading.Thread(target=body, args=(p,)) for p in range(PARTICIPANTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for err in errors:
        if err is not None:
            raise err
    return results


def _mlp_inputs(suite: str, seed: int = 3):
    rng = np.random.default_rng(seed)
    fp = FixedPoint()
    secrets = {
        "x": rng.normal(size=(6, 40)),
        "w1": rng.normal(size=(40, 24)) * 0.2,
        "b1": rng.normal(size=24) * 0.1,
        "w2": rng.normal(size=(24, 5)) * 0.2,
        "b2": rng.normal(size=5) * 0.1,
    }
    prg = PRG(bytes(range(16)))
    split = {name: suite_class(suite).split(fp.encode(v), prg) for name, v in secrets.items()}
    parties = 2 if suite == "2pc" else 3
    shares = [{name: s[p] for name, s in split.items()} for p in range(parties)]
    shapes = {name: v.shape for name, v in secrets.items()}
    return secrets, shares, shapes


@pytest.mark.parametrize("suite", ["2pc", "3pc"])
@pytest.mark.parametrize("activation", ["relu", "cos"])
def test_grpc_shares_identical_to_in_process(mesh_factory, suite, activation):
    """Same seeds, same inputs: every participant's output share is bit-identical over gRPC (chunked)."""
    seed = b"transport-test"
    params = f'{{"activation": "{activation}"}}'
    secrets, shares, shapes = _mlp_inputs(suite)
    reference = run_in_process(suite, "mlp", params, shares, shapes, test_seed=seed)
    mesh = mesh_factory(LinkSettings(max_message_bytes=16 * 1024, recv_timeout_s=20))  # forces chunking
    program = get_program("mlp")

    def party(p: int):
        ctx = start_context(p, suite, mesh.transport(p), 16, seed)
        own = shares[p] if p < len(shares) and not ctx.is_dealer else None
        out = run_program(ctx, program, program.parse_params(params), own, shapes)
        return out["y"], ctx

    outs = _parallel(party)
    for p in range(len(shares)):
        assert np.array_equal(outs[p][0].data, reference[p]["y"][0]), f"participant {p} differs"
    y = suite_class(suite).combine([outs[p][0].data for p in range(len(shares))])
    h = secrets["x"] @ secrets["w1"] + secrets["b1"]
    h = np.maximum(h, 0) if activation == "relu" else np.cos(2 * np.pi * h / 64.0)
    expected = h @ secrets["w2"] + secrets["b2"]
    assert np.allclose(y.view(np.int64) / 2.0**16, expected, atol=1e-2)


def test_wire_accounting_covers_every_message(mesh_factory):
    mesh = mesh_factory(LinkSettings(max_message_bytes=16 * 1024, recv_timeout_s=20))
    payload = np.arange(10_000, dtype=RING_DTYPE)  # 80,000 bytes: 5 chunks of at most 12,288 + header

    def party(p: int):
        t = mesh.transport(p)
        if p == 0:
            t.send(1, "big", payload)
            t.send(2, "small", np.arange(3, dtype=np.uint8))
            assert np.array_equal(t.recv(1, "ack"), [1])
        elif p == 1:
            assert np.array_equal(t.recv(0, "big"), payload)
            t.send(0, "ack", np.array([1], dtype=np.uint8))
        else:
            assert np.array_equal(t.recv(0, "small"), [0, 1, 2])
        return t

    transports = _parallel(party)
    time.sleep(0.2)  # the writers finish asynchronously
    sent = transports[0].wire_stats()
    chunk = 16 * 1024 - 4096
    assert sent.messages_sent == 2
    assert sent.frames_sent == -(-80_000 // chunk) + 1
    assert 80_003 < sent.bytes_sent < 80_003 + 64 * sent.frames_sent  # payload plus small frame overhead
    got = transports[1].wire_stats()
    assert got.messages_received == 1 and got.bytes_received == transports[0].links[1].stats.bytes_sent


def test_shaper_delays_by_latency_and_bandwidth(mesh_factory):
    shape = NetworkShape("custom", bandwidth_bps=40e6, latency_s=0.02)  # 5 MB/s, 20 ms
    mesh = mesh_factory(LinkSettings(shape=shape, recv_timeout_s=20))
    rounds = 10
    big = np.zeros(125_000, dtype=RING_DTYPE)  # 1 MB: 0.2 s on the emulated wire

    def party(p: int):
        t = mesh.transport(p)
        if p == 2:
            return None
        other = 1 - p
        start = time.perf_counter()
        for r in range(rounds):  # ping-pong: every round trip costs two one-way latencies
            if p == 0:
                t.send(other, f"ping{r}", np.zeros(1, dtype=np.uint8))
                t.recv(other, f"pong{r}")
            else:
                t.recv(other, f"ping{r}")
                t.send(other, f"pong{r}", np.zeros(1, dtype=np.uint8))
        pingpong = time.perf_counter() - start
        start = time.perf_counter()
        if p == 0:
            t.send(1, "big", big)
            t.recv(1, "done")
        else:
            t.recv(0, "big")
            t.send(0, "done", np.zeros(1, dtype=np.uint8))
        bulk = time.perf_counter() - start
        return pingpong, bulk, t.wire_stats().shaping_delay_s

    pingpong, bulk, delayed = _parallel(party)[0]
    assert 2 * rounds * 0.02 <= pingpong < 2 * rounds * 0.02 + 1.0
    assert 0.2 + 2 * 0.02 <= bulk < 0.2 + 2 * 0.02 + 1.0
    assert delayed > 0.3


def test_tag_mismatch_is_a_protocol_error(mesh_factory):
    mesh = mesh_factory()
    t0, t1 = mesh.transport(0), mesh.transport(1)
    t0.send(1, "0->1#1", np.zeros(2, dtype=RING_DTYPE))
    with pytest.raises(ProtocolError, match="expected message '0->1#2'"):
        t1.recv(0, "0->1#2")


def test_abort_reaches_the_peer_with_its_reason(mesh_factory):
    mesh = mesh_factory()
    t0, t1 = mesh.transport(0), mesh.transport(1)
    t0.links[1].close("participant 0 lost its disk", notify=True)
    with pytest.raises(TransportClosed, match="participant 0 aborted the job: participant 0 lost its disk"):
        t1.recv(0, "anything")
    with pytest.raises(TransportClosed):  # and every later receive or send fails the same way
        t1.recv(0, "anything")
    with pytest.raises(TransportClosed):
        t0.send(1, "late", np.zeros(1, dtype=RING_DTYPE))


def test_graceful_close_is_not_a_failure(mesh_factory):
    mesh = mesh_factory()
    failures: list[tuple[int, str]] = []
    link = mesh.links[2][0]
    link._on_failure = lambda peer, reason: failures.append((peer, reason))
    mesh.links[0][2].close("job closed", graceful=True)
    with pytest.raises(TransportClosed, match="participant 0 closed the job"):
        link.recv("x")
    assert failures == []


def test_recv_times_out(mesh_factory):
    mesh = mesh_factory(LinkSettings(recv_timeout_s=0.3))
    start = time.perf_counter()
    with pytest.raises(TransportClosed, match=r"no message from participant 0 within 0\.3 s"):
        mesh.transport(1).recv(0, "never")
    assert time.perf_counter() - start < 2.0


def test_send_is_non_blocking_even_when_nobody_reads(mesh_factory):
    mesh = mesh_factory()
    start = time.perf_counter()
    for i in range(50):
        mesh.transport(0).send(1, f"m{i}", np.zeros(20_000, dtype=RING_DTYPE))
    assert time.perf_counter() - start < 2.0
    assert np.array_equal(mesh.transport(1).recv(0, "m0"), np.zeros(20_000, dtype=RING_DTYPE))


def test_flow_control_holds_a_sender_that_runs_ahead(mesh_factory):
    """With a 1 MiB window, a sender of 64 x 256 KiB that nobody reads stalls after a few MiB (the
    reader's window, gRPC's own window and the sender's), then finishes once the receiver reads."""
    mesh = mesh_factory(LinkSettings(recv_timeout_s=20, window_bytes=1 << 20))
    message = np.arange(32_768, dtype=RING_DTYPE)  # 256 KiB
    sent = []
    sender = threading.Thread(
        target=lambda: [sent.append(mesh.transport(2).send(1, f"m{i}", message + i)) for i in range(64)],
        daemon=True,
    )
    sender.start()
    time.sleep(1.0)
    stalled_at = len(sent)
    assert 4 <= stalled_at < 64, f"sender got {stalled_at} messages out with nobody reading"
    for i in range(64):
        np.testing.assert_array_equal(mesh.transport(1).recv(2, f"m{i}"), message + i)
    sender.join(10)
    assert len(sent) == 64


def test_flow_control_lets_a_lone_message_above_the_window_through(mesh_factory):
    mesh = mesh_factory(LinkSettings(recv_timeout_s=20, window_bytes=64 * 1024))
    big = np.arange(1 << 20, dtype=RING_DTYPE)  # 8 MiB

    def party(p: int):
        t = mesh.transport(p)
        if p == 2:
            return None
        t.send(1 - p, "big", big + p)
        return t.recv(1 - p, "big")

    out = _parallel(party)
    np.testing.assert_array_equal(out[0], big + 1)
    np.testing.assert_array_equal(out[1], big)
