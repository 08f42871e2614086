"""Fuzzing the party API (data owner -> server) of a real 2pc cluster.

Two fuzzers share one cluster (module fixture):

* property-based (hypothesis): sequences of 1-4 calls built field by field: truncated, oversized and
  inconsistent shares (shape, byte count, dtype, slot axis of the other suite), unknown, reused and
  malformed job ids, batches out of order, wrong suite and fixed point, unknown programs, invalid JSON
  and huge strings in every string field, in any order;
* random mutation: valid serialized requests with random byte edits (invalid UTF-8, corrupt wire format,
  replayed fields, extreme varints), sent as raw bytes over a gRPC channel.

Every case must get a clear status code with a short message, every server must stay up, a reference
job (never a fuzz target for writes) must keep its uploads and still evaluate correctly, and every
server's resident memory may grow by at most ``RSS_GROWTH_BOUND`` over the whole run.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest
from fuzz_helpers import (
    FUZZ_SEED,
    FuzzTally,
    finish_fuzz,
    mutate,
    mutate_field,
    outcome_of,
    raw_channel,
    rss_bytes,
)
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from security_report import record, scale

from cluster_ops.testing import running_cluster
from data_owner.client import ClusterClient, RemoteJob
from mpc_core.ring import FixedPoint
from proto.api import party_pb2, party_pb2_grpc

pytestmark = [pytest.mark.security, pytest.mark.timeout(900)]

FP = FixedPoint()
MAX_MESSAGE = 256 * 1024
MAX_UPLOAD = 1 << 20
LIMITS = {
    "max_message_bytes": MAX_MESSAGE,
    "max_upload_bytes": MAX_UPLOAD,
    "max_job_bytes": 4 * MAX_UPLOAD,
    "max_jobs": 16,
    "max_params_bytes": 4096,
    "connect_timeout_s": 2,
}
CALL_TIMEOUT_S = 10.0
VERIFY_EVERY = 50


# ---------------------------------------------------------------------------------------- cluster
@dataclass
class Reference:
    """A legitimate job on every participant that fuzz cases may read but never write."""

    job: RemoteJob
    expected: np.ndarray
    uploads: dict[int, list[tuple[str, tuple[int, ...]]]] = field(default_factory=dict)

    def snapshot(self) -> dict[int, list[tuple[str, tuple[int, ...]]]]:
        return {p: sorted((t.name, tuple(t.shape)) for t in s.uploaded) for p, s in self.job.status().items()}

    def verify(self) -> None:
        assert self.snapshot() == self.uploads, "a fuzz case changed the reference job's uploads"
        self.job.evaluate()
        assert np.allclose(self.job.reveal_float("y"), self.expected, atol=1e-3)


@dataclass
class Env:
    config: object
    cluster: object
    client: ClusterClient
    reference: Reference
    stub: party_pb2_grpc.PartyStub
    channel: grpc.Channel
    dealer_channel: grpc.Channel
    counter: int = 0

    def fresh_id(self) -> str:
        self.counter += 1
        return f"fz-{self.counter}"

    def alive(self) -> bool:
        return all(proc.poll() is None for proc in self.cluster.procs.values())

    def rss(self) -> dict[int, int]:
        return {p: rss_bytes(proc.pid) for p, proc in self.cluster.procs.items()}


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Iterator[Env]:
    folder = tmp_path_factory.mktemp("fuzz-party")
    with running_cluster(folder, "2pc", limits=LIMITS) as (config, cluster), ClusterClient(config) as client:
        rng = np.random.default_rng(0)
        x, w, b = rng.normal(size=(3, 4)), rng.normal(size=(4, 2)), rng.normal(size=2)
        job = client.open_job("affine", job_id="reference")
        for name, value in {"x": x, "w": w, "b": b}.items():
            job.upload(name, FP.encode(value))
        reference = Reference(job, x @ w + b)
        reference.uploads = reference.snapshot()
        reference.verify()
        channel = raw_channel(config, 0, config.data_owner.name)
        dealer_channel = raw_channel(config, 2, config.data_owner.name)
        yield Env(
            config, cluster, client, reference, party_pb2_grpc.PartyStub(channel), channel, dealer_channel
        )
        channel.close()
        dealer_channel.close()


# ---------------------------------------------------------------------------------------- strategies
HUGE = [65, 1_000, 70_000, 300_000]  # 300 kB is above the cluster's message limit
huge_text = st.sampled_from(HUGE).map(lambda n: "é" * (n // 2))
any_text = st.one_of(st.text(max_size=40), huge_text)
uint64 = st.one_of(st.integers(0, 16), st.integers(0, 2**64 - 1), st.sampled_from([2**63, 2**64 - 1]))
uint32 = st.one_of(st.integers(0, 40), st.integers(0, 2**32 - 1))
# Job ids are tokens resolved at run time: the case's own sandbox job, the reference job (reads only),
# a fresh well-formed id, or something malformed.
tokens = st.sampled_from(["@sandbox", "@sandbox", "@reference", "@fresh", "@closed"])
job_ids = st.one_of(
    tokens,
    tokens,
    tokens,
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", fullmatch=True),
    any_text,
)
#: Control characters around otherwise valid names: a trailing newline once passed the checks (a regex
#: `$` matches before a final newline) and split the servers' log lines.
CONTROL_CHARACTERS = ["\n", "\r", "\t", "\x00", "\x1b", "\x7f", "\u2028"]
with_control = st.tuples(
    st.sampled_from(["a", "x", "b" * 64, "job-1"]), st.sampled_from(CONTROL_CHARACTERS), st.booleans()
).map(lambda t: t[0] + t[1] if t[2] else t[1] + t[0])
job_ids = st.one_of(job_ids, with_control)
names = st.one_of(st.sampled_from(["x", "w", "b", "y", "z"]), any_text, with_control)
shapes = st.one_of(
    st.sampled_from([[1, 3, 4], [1, 4, 2], [1, 2], [2, 3, 4], [1], [], [1, 0, 3]]),
    st.lists(uint64, max_size=12),
)
dtypes = st.one_of(st.sampled_from(["<u8", "<f8", "|u1", ">u8", ""]), any_text)
specs = st.builds(
    dict,
    program=st.one_of(
        st.sampled_from(
            ["affine", "mlp", "rounds", "model_linear", "prompt_tuning", "decoder_tuning", "gradient_tuning"]
        ),
        any_text,
    ),
    suite=st.one_of(st.sampled_from(["2pc", "2pc", "3pc", ""]), any_text),
    frac_bits=st.one_of(st.just(16), uint32),
    model_digest=st.one_of(st.just(""), any_text),
    test_seed=st.one_of(st.just(b""), st.binary(max_size=80)),
)
params = st.one_of(
    st.sampled_from(["{}", "", "null", "[]", '{"integer": true}', '{"integer": "maybe"}', "{", '{"a":1}']),
    st.dictionaries(st.text(max_size=10), st.one_of(st.integers(), st.text(max_size=10)), max_size=3).map(
        json.dumps
    ),
    any_text,
)
# nbytes: consistent with the shape, zero, or anything; data: as declared, short, long, or random
nbytes_modes = st.one_of(st.sampled_from(["consistent", "consistent", "zero"]), uint64)
data_modes = st.one_of(
    st.sampled_from(["declared", "declared", "short", "long", "oversized"]), st.binary(max_size=64)
)
extra_chunks = st.lists(st.tuples(st.booleans(), st.binary(max_size=24)), max_size=3)

upload_calls = st.tuples(
    st.just("upload"), job_ids, names, dtypes, shapes, nbytes_modes, data_modes, extra_chunks, st.booleans()
)
calls = st.one_of(
    st.tuples(st.just("open"), job_ids, specs),
    upload_calls,
    upload_calls,
    st.tuples(st.just("evaluate"), job_ids, uint64, st.lists(st.tuples(names, shapes), max_size=5), params),
    st.tuples(st.just("fetch"), job_ids, uint64, names),
    st.tuples(st.just("status"), job_ids),
    st.tuples(st.just("close"), job_ids),
    st.tuples(st.just("info")),
)


# ---------------------------------------------------------------------------------------- execution
def job_state(env: Env, job_id: str) -> tuple:
    """What a refused call must leave as it was: a job's uploads, batches and state on P0."""
    try:
        reply = env.stub.JobStatus(party_pb2.JobRef(job_id=job_id), timeout=5, metadata=env.client.metadata)
    except grpc.RpcError as exc:
        return (exc.code().name,)
    uploads = sorted((t.name, tuple(t.shape)) for t in reply.uploaded)
    return (reply.state, reply.batches_done, tuple(uploads))


class Case:
    """One hypothesis example: a sandbox job on P0 (with valid uploads), then the generated calls."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.sandbox = env.fresh_id()
        self.closed = env.fresh_id()
        self.opened: list[str] = []
        md = env.client.metadata
        spec = party_pb2.JobSpec(program="affine", suite="2pc", frac_bits=16)
        for job_id in (self.sandbox, self.closed):
            env.stub.OpenJob(party_pb2.OpenJobRequest(job_id=job_id, spec=spec), timeout=5, metadata=md)
        env.stub.CloseJob(party_pb2.JobRef(job_id=self.closed), timeout=5, metadata=md)
        for name, shape in {"x": (1, 3, 4), "w": (1, 4, 2), "b": (1, 2)}.items():
            share = np.arange(np.prod(shape), dtype="<u8").reshape(shape)
            header = party_pb2.ShareHeader(
                job_id=self.sandbox, name=name, dtype="<u8", shape=shape, nbytes=share.nbytes
            )
            chunk = party_pb2.UploadChunk(header=header, data=share.tobytes())
            env.stub.Upload(iter([chunk]), timeout=5, metadata=md)

    def resolve(self, token: str, write: bool) -> str:
        if token == "@sandbox" or (token == "@reference" and write):
            return self.sandbox
        if token == "@reference":
            return self.env.reference.job.job_id
        if token == "@fresh":
            return self.env.fresh_id()
        if token == "@closed":
            return self.closed
        return token

    def call(self, spec: tuple) -> tuple[str, Callable[[], object]]:
        stub, md, t = self.env.stub, self.env.client.metadata, CALL_TIMEOUT_S
        kind = spec[0]
        if kind == "open":
            job_id = self.resolve(spec[1], write=False)
            self.opened.append(job_id)
            request = party_pb2.OpenJobRequest(job_id=job_id, spec=party_pb2.JobSpec(**spec[2]))
            return kind, lambda: stub.OpenJob(request, timeout=t, metadata=md)
        if kind == "upload":
            chunks = self._upload_chunks(*spec[1:])
            target = (
                party_pb2_grpc.PartyStub(self.env.dealer_channel) if spec[8] and len(chunks) < 3 else stub
            )
            return kind, lambda: target.Upload(iter(chunks), timeout=t, metadata=md)
        if kind == "evaluate":
            _, token, batch, inputs, params_json = spec
            request = party_pb2.EvaluateRequest(
                job_id=self.resolve(token, write=True),
                batch=batch if batch > 3 else batch % 2,
                inputs=[party_pb2.TensorInfo(name=n, shape=s) for n, s in inputs]
                or [
                    party_pb2.TensorInfo(name=n, shape=s)
                    for n, s in (("x", [3, 4]), ("w", [4, 2]), ("b", [2]))
                ],
                params_json=params_json,
            )
            return kind, lambda: stub.Evaluate(request, timeout=t, metadata=md)
        if kind == "fetch":
            _, token, batch, name = spec
            request = party_pb2.FetchRequest(
                job_id=self.resolve(token, write=False), batch=batch % 4, name=name
            )
            return kind, lambda: stub.FetchResult(request, timeout=t, metadata=md)
        if kind == "status":
            ref = party_pb2.JobRef(job_id=self.resolve(spec[1], write=False))
            return kind, lambda: stub.JobStatus(ref, timeout=t, metadata=md)
        if kind == "close":
            ref = party_pb2.JobRef(job_id=self.resolve(spec[1], write=True))
            return kind, lambda: stub.CloseJob(ref, timeout=t, metadata=md)
        return kind, lambda: stub.ServerInfo(party_pb2.ServerInfoRequest(), timeout=t, metadata=md)

    def _upload_chunks(self, token, name, dtype, shape, nbytes_mode, data_mode, extra, _dealer) -> list:
        declared = int(np.prod([min(d, 2**40) for d in shape], dtype=object)) * 8 if shape else 0
        if nbytes_mode == "consistent":
            nbytes = declared if declared < 2**64 else 0
        elif nbytes_mode == "zero":
            nbytes = 0
        else:
            nbytes = nbytes_mode
        size = min(nbytes, MAX_UPLOAD + 8)
        if data_mode == "declared":
            data = bytes(size)
        elif data_mode == "short":
            data = bytes(max(0, size - 8))
        elif data_mode == "long":
            data = bytes(size + 8)
        elif data_mode == "oversized":
            data = bytes(MAX_MESSAGE + 16)
        else:
            data = data_mode
        header = party_pb2.ShareHeader(
            job_id=self.resolve(token, write=True), name=name, dtype=dtype, shape=shape, nbytes=nbytes
        )
        step = MAX_MESSAGE - 4096
        chunks = [party_pb2.UploadChunk(header=header, data=data[:step])]
        chunks += [party_pb2.UploadChunk(data=data[i : i + step]) for i in range(step, len(data), step)]
        for with_header, more in extra:
            chunks.append(party_pb2.UploadChunk(header=header if with_header else None, data=more))
        return chunks

    def sandbox_state(self) -> tuple:
        return job_state(self.env, self.sandbox)

    def cleanup(self) -> None:
        md = self.env.client.metadata
        for job_id in {self.sandbox, *self.opened} - {self.env.reference.job.job_id}:
            outcome_of(
                lambda job_id=job_id: self.env.stub.CloseJob(
                    party_pb2.JobRef(job_id=job_id), timeout=5, metadata=md
                )
            )


# ---------------------------------------------------------------------------------------- tests
HYPOTHESIS_CASES = scale(100, 1000)
MUTATION_CASES = scale(300, 1000)


def _finish(env: Env, tally: FuzzTally, rss_before: dict[int, int], seconds: float) -> None:
    verify = env.reference.verify
    finish_fuzz("party", tally, rss_before, seconds, verify=verify, rss=env.rss, client=env.client)


def test_party_api_property_fuzzing(env: Env) -> None:
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
    @given(sequence=st.lists(calls, min_size=1, max_size=4))
    def run(sequence: list[tuple]) -> None:
        case = Case(env)
        try:
            for spec in sequence:
                kind, call = case.call(spec)
                before = case.sandbox_state()
                outcome = outcome_of(call)
                tally.check(kind, outcome)
                if outcome.code != grpc.StatusCode.OK:
                    tally.unchanged(kind, outcome, before, case.sandbox_state())
            assert env.alive(), f"a server died: {sequence!r:.500}"
        finally:
            case.cleanup()
        tally.cases += 1
        if tally.cases % VERIFY_EVERY == 0:
            env.reference.verify()

    run()
    _finish(env, tally, rss_before, time.monotonic() - start)


def _valid_requests(job_id: str) -> list[tuple[str, str, bytes | list[bytes]]]:
    """(method, kind, serialized request or chunks) of well-formed calls on a sandbox job."""
    share = np.arange(12, dtype="<u8").reshape(1, 3, 4)
    header = party_pb2.ShareHeader(
        job_id=job_id, name="x", dtype="<u8", shape=share.shape, nbytes=share.nbytes
    )
    first = party_pb2.UploadChunk(header=header, data=share.tobytes()[:40]).SerializeToString()
    rest = party_pb2.UploadChunk(data=share.tobytes()[40:]).SerializeToString()
    spec = party_pb2.JobSpec(program="affine", suite="2pc", frac_bits=16)
    evaluate = party_pb2.EvaluateRequest(
        job_id=job_id,
        batch=0,
        inputs=[party_pb2.TensorInfo(name="x", shape=[3, 4]), party_pb2.TensorInfo(name="w", shape=[4, 2])],
        params_json='{"integer": false}',
    )
    return [
        ("OpenJob", "unary", party_pb2.OpenJobRequest(job_id=job_id, spec=spec).SerializeToString()),
        ("Upload", "upload", [first, rest]),
        ("Evaluate", "unary", evaluate.SerializeToString()),
        (
            "FetchResult",
            "fetch",
            party_pb2.FetchRequest(job_id=job_id, batch=0, name="y").SerializeToString(),
        ),
        ("JobStatus", "unary", party_pb2.JobRef(job_id=job_id).SerializeToString()),
        ("CloseJob", "unary", party_pb2.JobRef(job_id=job_id).SerializeToString()),
        ("ServerInfo", "unary", b""),
    ]


def test_party_api_mutation_fuzzing(env: Env) -> None:
    """Random byte edits of valid requests, sent raw (the server parses them itself)."""
    tally = FuzzTally("mutation")
    rng = random.Random(FUZZ_SEED)
    md = env.client.metadata
    rss_before = env.rss()
    start = time.monotonic()
    for i in range(MUTATION_CASES):
        sandbox = env.fresh_id()
        env.stub.OpenJob(
            party_pb2.OpenJobRequest(
                job_id=sandbox, spec=party_pb2.JobSpec(program="affine", suite="2pc", frac_bits=16)
            ),
            timeout=5,
            metadata=md,
        )
        method, kind, template = rng.choice(_valid_requests(sandbox))
        edit = mutate_field if rng.random() < 0.5 else mutate  # half structure-aware, half raw bytes
        channel = env.dealer_channel if rng.random() < 0.2 and method != "Evaluate" else env.channel
        path = f"/secp.party.v1.Party/{method}"
        before = job_state(env, sandbox)
        if kind == "upload":
            chunks = list(template)
            j = rng.randrange(len(chunks))
            chunks[j] = edit(chunks[j], rng)
            if rng.random() < 0.3:  # a replayed chunk
                chunks.insert(rng.randrange(len(chunks) + 1), rng.choice(chunks))
            call = channel.stream_unary(path)
            outcome = outcome_of(
                lambda call=call, chunks=chunks: call(iter(chunks), timeout=CALL_TIMEOUT_S, metadata=md)
            )
        else:
            raw = edit(template, rng)
            call = channel.unary_stream(path) if kind == "fetch" else channel.unary_unary(path)
            outcome = outcome_of(lambda call=call, raw=raw: call(raw, timeout=CALL_TIMEOUT_S, metadata=md))
        tally.check(method, outcome)
        if outcome.code != grpc.StatusCode.OK:
            tally.unchanged(method.lower(), outcome, before, job_state(env, sandbox))
        opened = {sandbox}
        if method == "OpenJob" and outcome.code == grpc.StatusCode.OK:  # the edit may have renamed the job
            opened.add(party_pb2.OpenJobRequest.FromString(raw).job_id)
        for job_id in opened:
            outcome_of(
                lambda job_id=job_id, channel=channel: party_pb2_grpc.PartyStub(channel).CloseJob(
                    party_pb2.JobRef(job_id=job_id), timeout=5, metadata=md
                )
            )
            if channel is not env.channel:
                outcome_of(
                    lambda job_id=job_id: env.stub.CloseJob(
                        party_pb2.JobRef(job_id=job_id), timeout=5, metadata=md
                    )
                )
        tally.cases += 1
        assert env.alive(), f"a server died at case {i} ({method})"
        if tally.cases % VERIFY_EVERY == 0:
            env.reference.verify()
    _finish(env, tally, rss_before, time.monotonic() - start)


def test_names_with_control_characters_are_refused_everywhere(env: Env) -> None:
    """Job ids and tensor names are matched whole: a trailing newline (or any control character) is
    INVALID_ARGUMENT on OpenJob, JobStatus, CloseJob, Upload, Evaluate and FetchResult, and no job or
    upload appears."""
    md = env.client.metadata
    bad_ids = [*(f"a{c}" for c in CONTROL_CHARACTERS), "b" * 64 + "\n", "\njob"]
    bad_names = [*(f"x{c}" for c in CONTROL_CHARACTERS), "\nx"]
    before = job_state(env, env.reference.job.job_id)
    spec = party_pb2.JobSpec(program="affine", suite=env.config.suite, frac_bits=FP.frac_bits)
    calls = []
    for job_id in bad_ids:
        calls += [
            lambda j=job_id: env.stub.OpenJob(
                party_pb2.OpenJobRequest(job_id=j, spec=spec), timeout=5, metadata=md
            ),
            lambda j=job_id: env.stub.JobStatus(party_pb2.JobRef(job_id=j), timeout=5, metadata=md),
            lambda j=job_id: env.stub.CloseJob(party_pb2.JobRef(job_id=j), timeout=5, metadata=md),
        ]
    ref = env.reference.job.job_id
    next_batch = before[1]  # the names, not the batch number, must be what is refused
    for name in bad_names:
        header = party_pb2.ShareHeader(job_id=ref, name=name, dtype="<u8", shape=[1, 1], nbytes=8)
        calls += [
            lambda h=header: env.stub.Upload(
                iter([party_pb2.UploadChunk(header=h, data=bytes(8))]), timeout=5, metadata=md
            ),
            lambda n=name: env.stub.Evaluate(
                party_pb2.EvaluateRequest(
                    job_id=ref,
                    batch=next_batch,
                    inputs=[party_pb2.TensorInfo(name=n, shape=[1])],
                    params_json="{}",
                ),
                timeout=5,
                metadata=md,
            ),
            lambda n=name: list(
                env.stub.FetchResult(
                    party_pb2.FetchRequest(job_id=ref, batch=next_batch - 1, name=n), timeout=5, metadata=md
                )
            ),
        ]
    failures = 0
    for call in calls:
        outcome = outcome_of(call)
        if outcome.code != grpc.StatusCode.INVALID_ARGUMENT:
            failures += 1
        assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, outcome
        assert "\n" not in outcome.details, "a refusal must not echo a newline into logs"
    record("party API: names with control characters", len(calls), failures)
    assert job_state(env, env.reference.job.job_id) == before
    for job_id in bad_ids:
        assert job_state(env, job_id) == ("INVALID_ARGUMENT",)
    env.reference.verify()


def test_invalid_utf8_in_every_string_field_is_invalid_argument(env: Env) -> None:
    """proto3 strings must be UTF-8: each party-API string field carrying bad bytes gets INVALID_ARGUMENT."""
    md = env.client.metadata
    bad = b"\xff\xfe\xc0"
    cases = {
        "OpenJob job_id": ("OpenJob", b"\x0a" + bytes([len(bad)]) + bad),
        "OpenJob spec.program": ("OpenJob", b"\x12\x05\x0a\x03" + bad),
        "JobStatus job_id": ("JobStatus", b"\x0a\x03" + bad),
        "CloseJob job_id": ("CloseJob", b"\x0a\x03" + bad),
        "Evaluate params_json": ("Evaluate", b"\x0a\x09reference\x22\x03" + bad),
    }
    failures = 0
    for what, (method, raw) in cases.items():
        outcome = outcome_of(
            lambda method=method, raw=raw: env.channel.unary_unary(f"/secp.party.v1.Party/{method}")(
                raw, timeout=5, metadata=md
            )
        )
        if outcome.code != grpc.StatusCode.INVALID_ARGUMENT or "UTF-8" not in outcome.details:
            failures += 1
        assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, (what, outcome)
        assert "not a valid secp.party.v1" in outcome.details and "UTF-8" in outcome.details
    stream = env.channel.stream_unary("/secp.party.v1.Party/Upload")
    outcome = outcome_of(lambda: stream(iter([b"\x0a\x05\x12\x03" + bad]), timeout=5, metadata=md))
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT and "UploadChunk" in outcome.details
    record("party API: invalid UTF-8 in string fields", len(cases) + 1, failures)
    env.reference.verify()
