"""Fuzzing the peer API (server <-> server ``Exchange`` streams) of a real 2pc cluster.

The fuzzer holds real certificates of the cluster (P0's mostly, so that its streams get past the
identity checks and reach the frame parsing) and opens streams to P1 and the dealer:

* property-based (hypothesis): a hello (right or wrong job, participant, spec digest; unknown, reused and
  malformed job ids) followed by generated frames: tensor headers with wrong dtypes, byte counts and
  shapes, oversized tensors, truncated and overlong data, data without a header, duplicated hellos and
  headers, Abort and Close frames, frames above the message limit;
* random mutation: a valid stream (hello, a tensor over two frames) with random byte edits to one frame,
  and frames replayed or duplicated, sent as raw bytes.

Each stream gets a target job of its own (a sandbox opened on P1 and the dealer) and may abort it; a
reference job whose streams are established (one evaluation done) is the target of replayed hellos and
must keep working.  Every stream must end with a clear status, no server may die, and resident memory
may grow by at most ``RSS_GROWTH_BOUND``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from fuzz_helpers import (
    FUZZ_SEED,
    FuzzTally,
    Outcome,
    finish_fuzz,
    mutate,
    mutate_field,
    raw_channel,
    rss_bytes,
)
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from security_report import record, scale

from cluster_ops.testing import running_cluster
from data_owner.client import ClusterClient, RemoteJob
from mpc_core.ring import FixedPoint
from proto.api import party_pb2, peer_pb2
from server.jobs import JobSpec

pytestmark = [pytest.mark.security, pytest.mark.timeout(900)]

FP = FixedPoint()
MAX_MESSAGE = 128 * 1024
MAX_TENSOR = 1 << 20
LIMITS = {
    "max_message_bytes": MAX_MESSAGE,
    "max_peer_tensor_bytes": MAX_TENSOR,
    "max_jobs": 16,
    "connect_timeout_s": 2,
}
STREAM_TIMEOUT_S = 10.0
VERIFY_EVERY = 50
IDENTITIES = ("p0", "p1", "dealer", "owner")
EXCHANGE = "/secp.peer.v1.Peer/Exchange"
REFUSED_AT_HELLO = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
    }
)
AFFINE = JobSpec(program="affine", suite="2pc", frac_bits=16)


@dataclass
class Env:
    config: object
    cluster: object
    client: ClusterClient
    reference: RemoteJob
    expected: np.ndarray
    channels: dict[tuple[str, int], grpc.Channel]
    counter: int = 0

    def fresh_id(self) -> str:
        self.counter += 1
        return f"pz-{self.counter}"

    def alive(self) -> bool:
        return all(proc.poll() is None for proc in self.cluster.procs.values())

    def rss(self) -> dict[int, int]:
        return {p: rss_bytes(proc.pid) for p, proc in self.cluster.procs.items()}

    def verify(self) -> None:
        """The reference job (its peer streams long established) still evaluates correctly."""
        self.reference.evaluate()
        assert np.allclose(self.reference.reveal_float("y"), self.expected, atol=1e-3)

    def open_sandbox(self) -> str:
        """A job on P1 and the dealer only: a stream the fuzzer opens becomes its link from P0."""
        job_id = self.fresh_id()
        request = party_pb2.OpenJobRequest(
            job_id=job_id, spec=party_pb2.JobSpec(program="affine", suite="2pc", frac_bits=16)
        )
        for p in (1, 2):
            self.client.stub(p).OpenJob(request, timeout=5, metadata=self.client.metadata)
        return job_id

    def close_sandbox(self, job_id: str) -> None:
        for p in (1, 2):
            try:
                self.client.stub(p).CloseJob(
                    party_pb2.JobRef(job_id=job_id), timeout=5, metadata=self.client.metadata
                )
            except grpc.RpcError as exc:  # the fuzz stream may have aborted it: that is allowed
                assert exc.code() == grpc.StatusCode.NOT_FOUND, exc

    def check_untouched(self, tally: FuzzTally, outcome: Outcome, target: int, sandbox: str) -> None:
        """A stream refused at its hello (identity, job, spec, order, duplicate) must leave the job open
        and untouched; one accepted and then broken or malformed aborts it by design."""
        at_hello = outcome.code in REFUSED_AT_HELLO and "aborted on participant" not in outcome.details
        if not at_hello:
            return
        try:
            reply = self.client.stub(target).JobStatus(
                party_pb2.JobRef(job_id=sandbox), timeout=5, metadata=self.client.metadata
            )
        except grpc.RpcError as exc:
            tally.problems.append(f"refused with {outcome.code.name}, yet the job is gone: {exc.details()}")
            return
        if reply.state != "open" or reply.batches_done:
            tally.problems.append(f"refused with {outcome.code.name}, yet the job is {reply.state}")

    def exchange(self, identity: str, target: int, frames: list[bytes]) -> Outcome:
        call = self.channels[(identity, target)].stream_stream(EXCHANGE)
        try:
            for _ in call(iter(frames), timeout=STREAM_TIMEOUT_S):
                pass
            return Outcome(grpc.StatusCode.OK, "")
        except grpc.RpcError as exc:
            return Outcome(exc.code(), exc.details() or "")


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Iterator[Env]:
    folder = tmp_path_factory.mktemp("fuzz-peer")
    with running_cluster(folder, "2pc", limits=LIMITS) as (config, cluster), ClusterClient(config) as client:
        rng = np.random.default_rng(0)
        x, w, b = rng.normal(size=(3, 4)), rng.normal(size=(4, 2)), rng.normal(size=2)
        job = client.open_job("affine", job_id="reference")
        for name, value in {"x": x, "w": w, "b": b}.items():
            job.upload(name, FP.encode(value))
        channels = {(who, p): raw_channel(config, p, who) for who in IDENTITIES for p in (0, 1, 2)}
        environment = Env(config, cluster, client, job, x @ w + b, channels)
        environment.verify()
        yield environment
        for channel in channels.values():
            channel.close()


# ---------------------------------------------------------------------------------------- strategies
DTYPES = ["<u8", "<i8", "|u1", "<f8", "<u4", ">u8", "object", "", "<U8"]
ITEMSIZES = {"<u8": 8, "<i8": 8, "|u1": 1, "<f8": 8, "<u4": 4, ">u8": 8, "<U8": 32}
huge_text = st.sampled_from([300, 70_000, 200_000]).map(lambda n: "é" * (n // 2))
any_text = st.one_of(st.text(max_size=30), huge_text)
uint64 = st.one_of(st.integers(0, 16), st.integers(0, 2**64 - 1), st.sampled_from([2**63, 2**64 - 1]))
shapes = st.one_of(
    st.sampled_from([[3, 4], [4], [], [0], [1, 1, 1], [MAX_TENSOR // 8 + 1], [2**32, 2**32]]),
    st.lists(uint64, max_size=40),
)
hellos = st.fixed_dictionaries(
    {
        "job": st.one_of(
            st.sampled_from(["@sandbox"] * 4 + ["@reference", "@unknown"]),
            # a real job's id with a control character after it (a trailing newline once passed the check)
            st.tuples(st.sampled_from(["@sandbox", "@reference"]), st.sampled_from(["\n", "\r", "\x00"])).map(
                "".join
            ),
            any_text,
        ),
        "participant": st.one_of(st.sampled_from([0, 0, 0, 1, 2]), st.integers(0, 2**32 - 1)),
        "digest": st.one_of(st.sampled_from(["@right"] * 4 + ["@other"]), st.binary(max_size=40)),
    }
)
frames = st.one_of(
    st.tuples(
        st.just("tensor"),
        st.one_of(st.just("0->1#0"), any_text),
        st.one_of(st.sampled_from(DTYPES), st.text(max_size=8)),
        shapes,
        st.one_of(st.sampled_from(["consistent", "consistent", "short", "long"]), uint64),
        st.booleans(),  # split the data over two frames
    ),
    st.tuples(st.just("data"), st.binary(max_size=64)),
    st.tuples(st.just("abort"), any_text),
    st.tuples(st.just("close")),
    st.tuples(st.just("hello")),
    st.tuples(st.just("empty")),
    st.tuples(st.just("oversized")),
)
streams = st.fixed_dictionaries(
    {
        "identity": st.sampled_from(["p0"] * 8 + ["p1", "dealer", "owner"]),
        "target": st.sampled_from([1, 1, 1, 2]),
        "hello": st.one_of(hellos, st.none()),
        "frames": st.lists(frames, max_size=5),
    }
)


def _hello_frame(env: Env, hello: dict, sandbox: str) -> peer_pb2.PeerFrame:
    tokens = {"@sandbox": sandbox, "@reference": env.reference.job_id, "@unknown": env.fresh_id()}
    stem, tail = hello["job"][:-1], hello["job"][-1:]
    job = tokens[stem] + tail if stem in tokens else tokens.get(hello["job"], hello["job"])
    digest = hello["digest"]
    if digest == "@right":
        digest = AFFINE.digest(job)
    elif digest == "@other":
        digest = JobSpec(program="mlp", suite="2pc", frac_bits=16).digest(job)
    return peer_pb2.PeerFrame(
        hello=peer_pb2.Hello(job_id=job, participant=hello["participant"], spec_digest=digest)
    )


def _tensor_frames(
    tag: str, dtype: str, shape: list[int], nbytes_mode, split: bool
) -> list[peer_pb2.PeerFrame]:
    itemsize = ITEMSIZES.get(dtype, 8)
    declared = itemsize * int(np.prod([min(d, 2**40) for d in shape], dtype=object)) if shape else itemsize
    nbytes = declared if isinstance(nbytes_mode, str) else nbytes_mode
    nbytes = nbytes if nbytes < 2**64 else 0
    size = min(nbytes, 3 * MAX_MESSAGE)
    size = (
        {"short": max(0, size - 1), "long": size + 8}.get(nbytes_mode, size)
        if isinstance(nbytes_mode, str)
        else 16
    )
    data = bytes(size)
    header = peer_pb2.TensorHeader(tag=tag, dtype=dtype, shape=shape, nbytes=nbytes)
    step = MAX_MESSAGE - 4096
    first = len(data) // 2 if split else step
    out = [peer_pb2.PeerFrame(header=header, data=data[:first])]
    out += [peer_pb2.PeerFrame(data=data[i : i + step]) for i in range(first, len(data), step)]
    return out


def _frames(env: Env, stream: dict, sandbox: str) -> list[bytes]:
    out: list[peer_pb2.PeerFrame] = []
    hello = _hello_frame(env, stream["hello"], sandbox) if stream["hello"] is not None else None
    if hello is not None:
        out.append(hello)
    for spec in stream["frames"]:
        kind = spec[0]
        if kind == "tensor":
            out += _tensor_frames(*spec[1:])
        elif kind == "data":
            out.append(peer_pb2.PeerFrame(data=spec[1]))
        elif kind == "abort":
            out.append(peer_pb2.PeerFrame(abort=peer_pb2.Abort(reason=spec[1])))
        elif kind == "close":
            out.append(peer_pb2.PeerFrame(close=peer_pb2.Close()))
        elif kind == "hello":
            out.append(
                hello or _hello_frame(env, {"job": "@sandbox", "participant": 0, "digest": "@right"}, sandbox)
            )
        elif kind == "empty":
            out.append(peer_pb2.PeerFrame())
        else:
            out.append(peer_pb2.PeerFrame(data=bytes(MAX_MESSAGE + 16)))
    return [f.SerializeToString() for f in out]


# ---------------------------------------------------------------------------------------- tests
HYPOTHESIS_CASES = scale(150, 1000)
MUTATION_CASES = scale(300, 1000)


def _finish(env: Env, tally: FuzzTally, rss_before: dict[int, int], seconds: float) -> None:
    finish_fuzz("peer", tally, rss_before, seconds, verify=env.verify, rss=env.rss, client=env.client)


def test_peer_api_property_fuzzing(env: Env) -> None:
    tally = FuzzTally("hypothesis")
    rss_before = env.rss()
    start = time.monotonic()

    @settings(
        max_examples=HYPOTHESIS_CASES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @seed(FUZZ_SEED)
    @given(stream=streams)
    def run(stream: dict) -> None:
        sandbox = env.open_sandbox()
        try:
            outcome = env.exchange(stream["identity"], stream["target"], _frames(env, stream, sandbox))
            tally.check(f"{stream['identity']}->{stream['target']}", outcome)
            env.check_untouched(tally, outcome, stream["target"], sandbox)
            assert env.alive(), f"a server died: {stream!r:.500}"
        finally:
            env.close_sandbox(sandbox)
        tally.cases += 1
        if tally.cases % VERIFY_EVERY == 0:
            env.verify()

    run()
    _finish(env, tally, rss_before, time.monotonic() - start)


def _valid_stream(sandbox: str) -> list[bytes]:
    """A well-formed stream from P0: hello, then one 8x8 uint64 tensor over two frames."""
    hello = peer_pb2.PeerFrame(
        hello=peer_pb2.Hello(job_id=sandbox, participant=0, spec_digest=AFFINE.digest(sandbox))
    )
    data = np.arange(64, dtype="<u8").tobytes()
    header = peer_pb2.TensorHeader(tag="0->1#0", dtype="<u8", shape=[8, 8], nbytes=len(data))
    return [
        hello.SerializeToString(),
        peer_pb2.PeerFrame(header=header, data=data[:200]).SerializeToString(),
        peer_pb2.PeerFrame(data=data[200:]).SerializeToString(),
    ]


def test_peer_api_mutation_fuzzing(env: Env) -> None:
    tally = FuzzTally("mutation")
    rng = random.Random(FUZZ_SEED + 1)
    rss_before = env.rss()
    start = time.monotonic()
    for i in range(MUTATION_CASES):
        sandbox = env.open_sandbox()
        stream = _valid_stream(sandbox)
        j = rng.randrange(len(stream))
        stream[j] = (mutate_field if rng.random() < 0.5 else mutate)(stream[j], rng)  # structure-aware or raw
        if rng.random() < 0.3:  # a replayed or duplicated frame
            stream.insert(rng.randrange(1, len(stream) + 1), rng.choice(stream))
        target = 2 if rng.random() < 0.2 else 1
        outcome = env.exchange("p0", target, stream)
        tally.check(f"p0->{target}", outcome)
        env.check_untouched(tally, outcome, target, sandbox)
        env.close_sandbox(sandbox)
        tally.cases += 1
        assert env.alive(), f"a server died at case {i}"
        if tally.cases % VERIFY_EVERY == 0:
            env.verify()
    _finish(env, tally, rss_before, time.monotonic() - start)


def test_replayed_hellos_and_frames_change_nothing(env: Env) -> None:
    """A hello replayed for a job whose streams exist is ALREADY_EXISTS, and the job keeps working; a stream
    whose frames are replayed inside it (a second hello, a header twice) is refused as malformed."""
    job_id = env.reference.job_id
    hello = peer_pb2.PeerFrame(
        hello=peer_pb2.Hello(job_id=job_id, participant=0, spec_digest=AFFINE.digest(job_id))
    )
    failures = 0
    for target in (1, 2):
        outcome = env.exchange("p0", target, [hello.SerializeToString()] * 2)
        failures += outcome.code != grpc.StatusCode.ALREADY_EXISTS
        assert outcome.code == grpc.StatusCode.ALREADY_EXISTS and "already has a stream" in outcome.details
    env.verify()
    for duplicate in (0, 1):
        sandbox = env.open_sandbox()
        stream = _valid_stream(sandbox)
        stream.insert(duplicate + 1, stream[duplicate])
        outcome = env.exchange("p0", 1, stream)
        failures += outcome.code != grpc.StatusCode.INVALID_ARGUMENT
        assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT and "malformed traffic" in outcome.details
        code = _status_code(env, sandbox)
        assert code == grpc.StatusCode.NOT_FOUND  # the job the bad stream was for is aborted, with its reason
        env.close_sandbox(sandbox)
    record("peer API: replayed hellos and frames", 4, failures)
    env.verify()


def _status_code(env: Env, job_id: str) -> grpc.StatusCode:
    try:
        env.client.stub(1).JobStatus(party_pb2.JobRef(job_id=job_id), timeout=5, metadata=env.client.metadata)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_unparsable_frame_inside_an_accepted_stream_is_refused(env: Env) -> None:
    """After a valid hello, a frame that is not protobuf (or has invalid UTF-8 in its tag) aborts the job
    it was for and ends the stream with INVALID_ARGUMENT naming the problem."""
    failures = 0
    bad_frames = {
        "corrupt wire format": b"\x12\xff\xff\xff",
        "invalid UTF-8 in a tag": b"\x12\x05\x0a\x03\xff\xfe\xc0",
    }
    for what, frame in bad_frames.items():
        sandbox = env.open_sandbox()
        stream = [*_valid_stream(sandbox)[:1], frame]
        outcome = env.exchange("p0", 1, stream)
        ok = (
            outcome.code == grpc.StatusCode.INVALID_ARGUMENT
            and "not a valid secp.peer.v1.PeerFrame" in outcome.details
            and _status_code(env, sandbox) == grpc.StatusCode.NOT_FOUND
        )
        failures += not ok
        assert ok, (what, outcome)
        env.close_sandbox(sandbox)
    record("peer API: unparsable frames in an accepted stream", len(bad_frames), failures)
    env.verify()
