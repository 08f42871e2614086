"""The data owner's gRPC client of a cluster: open a job, upload shares, evaluate, fetch and reconstruct.

    with ClusterClient.from_file("cluster.yaml") as cluster:
        job = cluster.open_job("affine")
        job.upload("x", fp.encode(x)); job.upload("w", fp.encode(w)); job.upload("b", fp.encode(b))
        job.evaluate()                       # every participant runs the program together
        y = job.reveal_float("y")            # the compute parties' shares, combined here only
        gen = job.generate({"x": fp.encode(x2)}, ["x", "w", "b"], reveal=["y"])   # all of it, one call

The client talks to every participant at once (one thread per call), with mutual TLS under the data
owner's certificate and each server pinned to its configured identity.  Every call has a deadline.
A failure on any participant raises :class:`ClusterError` carrying the most telling gRPC status code
(UNAVAILABLE when a server is gone) and one line per participant that failed.  Secrets are split here
(``suite.split``) and combined here (``suite.combine``); no server ever sees more than its share.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
from pydantic import BaseModel

from contract.channels import channel_credentials, channel_options, identity_metadata, load_credentials
from contract.cluster import ClusterConfig, load_config
from mpc_core.prg import PRG, system_prg
from mpc_core.ring import RING_DTYPE
from mpc_core.suites import suite_class
from proto.api import party_pb2, party_pb2_grpc
from proto.shares import ShareAssembler, ShareStreamError, share_chunks

T = TypeVar("T")
PROBE_TIMEOUT_S = 2.0
#: Once one participant's call has failed, how long the others' calls may still take before the client
#: stops waiting for them.  The call deadline (``limits.call_deadline_s``) is sized for a whole secure
#: generation (up to an hour); a paused server would otherwise hold the failure back that long although its
#: peers abort the job after ``limits.peer_timeout_s``.
FAILURE_GRACE_S = 10.0
CALL_THREADS = 32


class ClusterError(RuntimeError):
    """A call failed on at least one participant.

    ``code`` is the status that best explains it (UNAVAILABLE when a server is gone), ``failures`` maps
    each failed participant to its (code, details), and ``unreachable`` lists the participants that did
    not answer a probe right after the failure (the likely cause; the others report its consequences).
    """

    def __init__(
        self,
        what: str,
        failures: Mapping[int, tuple[grpc.StatusCode, str]],
        describe: Callable[[int], str],
        unreachable: Sequence[int] = (),
    ) -> None:
        self.failures = dict(failures)
        self.unreachable = sorted(unreachable)
        self.code = self._pick_code(self.failures, self.unreachable)
        lines = [
            f"{describe(p)} is unreachable ("
            + (self.failures[p][1] if p in self.failures else "it did not answer a probe after the failure")
            + ")"
            for p in self.unreachable
        ]
        lines += [
            f"{describe(p)}: {code.name}: {details}"
            for p, (code, details) in sorted(self.failures.items())
            if p not in self.unreachable
        ]
        super().__init__(f"{what} failed ({self.code.name}): " + "; ".join(lines))

    @staticmethod
    def _pick_code(
        failures: Mapping[int, tuple[grpc.StatusCode, str]], unreachable: Sequence[int]
    ) -> grpc.StatusCode:
        """A server gone explains everything; else an expired deadline; else the others' first code."""
        if unreachable:
            return grpc.StatusCode.UNAVAILABLE
        # a call the client stopped waiting for (CANCELLED) explains nothing by itself
        codes = [code for code, _ in failures.values() if code != grpc.StatusCode.CANCELLED]
        if not codes:
            return grpc.StatusCode.CANCELLED
        for preferred in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
            if preferred in codes:
                return preferred
        return codes[0]


@dataclass(frozen=True)
class OutputInfo:
    shape: tuple[int, ...]
    scale: int  # fractional bits (0: ring integer)


@dataclass(frozen=True)
class Generation:
    """What one ``Generate`` call returned: the outputs, the revealed ones, every participant's statistics."""

    outputs: dict[str, OutputInfo]
    values: dict[str, np.ndarray]  # revealed ring elements (uint64) of the outputs asked for
    metrics: dict[int, dict[str, Any]]  # per participant, as RemoteJob.metrics()
    seconds: float  # the slowest participant's evaluation time

    def reveal_float(self, name: str) -> np.ndarray:
        """A revealed output decoded with its fixed-point scale."""
        return self.values[name].view(np.int64).astype(np.float64) / float(1 << self.outputs[name].scale)


class ClusterClient:
    """Connections to every participant of one cluster, as its registered data owner."""

    def __init__(
        self,
        config: ClusterConfig,
        *,
        insecure: bool = False,
        cert: Path | None = None,
        key: Path | None = None,
        deadline_s: float | None = None,
    ) -> None:
        self.config = config
        self.insecure = insecure
        self.deadline_s = deadline_s or config.limits.call_deadline_s
        self.max_message_bytes = config.limits.max_message_bytes
        name = config.data_owner.name
        #: Call metadata for a raw stub call (the claimed identity in insecure mode; None under TLS).
        self.metadata = identity_metadata(name, insecure)
        creds = None if insecure else channel_credentials(load_credentials(config, name, cert, key))
        self._channels: dict[int, grpc.Channel] = {}
        self._stubs: dict[int, party_pb2_grpc.PartyStub] = {}
        for party in config.parties:
            options = channel_options(None if insecure else party.name, self.max_message_bytes)
            channel = (
                grpc.insecure_channel(party.address, options=options)
                if insecure
                else grpc.secure_channel(party.address, creds, options=options)
            )
            self._channels[party.participant] = channel
            self._stubs[party.participant] = party_pb2_grpc.PartyStub(channel)
        # One thread per call and participant: several calls from different threads (an evaluation
        # running while another thread polls status or evaluates another job) must not queue behind
        # each other; with 6 threads two concurrent evaluations blocked every other call until done.
        self._pool = ThreadPoolExecutor(max_workers=CALL_THREADS, thread_name_prefix="cluster-client")

    @classmethod
    def from_file(cls, path: str | Path, **kwargs: Any) -> ClusterClient:
        return cls(load_config(path), **kwargs)

    # ------------------------------------------------------------------ plumbing
    @property
    def participants(self) -> tuple[int, ...]:
        return tuple(sorted(self._stubs))

    @property
    def compute_parties(self) -> tuple[int, ...]:
        return self.config.compute_parties

    def describe(self, participant: int) -> str:
        party = self.config.party(participant)
        return f"participant {participant} ({party.name} at {party.address})"

    def stub(self, participant: int) -> party_pb2_grpc.PartyStub:
        return self._stubs[participant]

    def call_all(
        self, what: str, call: Callable[[int], T], participants: Iterable[int] | None = None
    ) -> dict[int, T]:
        """Run ``call(p)`` for every participant concurrently; raise ClusterError if any failed."""
        targets = tuple(self.participants if participants is None else participants)
        futures = {p: self._pool.submit(call, p) for p in targets}
        _wait_unless_one_fails(list(futures.values()), FAILURE_GRACE_S)
        results: dict[int, T] = {}
        failures: dict[int, tuple[grpc.StatusCode, str]] = {}
        for p, future in futures.items():
            if not future.done():  # still busy after another participant failed (hung, or just slow)
                failures[p] = (
                    grpc.StatusCode.CANCELLED,
                    f"no answer {FAILURE_GRACE_S:g} s after another participant failed",
                )
                continue
            try:
                results[p] = future.result()
            except grpc.RpcError as exc:
                failures[p] = (exc.code(), exc.details() or "")
            except ShareStreamError as exc:
                failures[p] = (grpc.StatusCode.DATA_LOSS, str(exc))
        if failures:
            raise ClusterError(what, failures, self.describe, self._probe_unreachable())
        return results

    def _probe_unreachable(self) -> list[int]:
        """Which participants do not answer a probe right after a failure.

        Every participant is probed, not only those whose own call failed: a dead dealer is often seen
        first by the compute parties ("the stream with participant 2 broke") in a call the dealer was not
        part of, and the error must still name it.
        """
        probe = self.unary("ServerInfo", party_pb2.ServerInfoRequest(), PROBE_TIMEOUT_S)
        futures = {p: self._pool.submit(probe, p) for p in self.participants}
        down = []
        for p, future in futures.items():
            try:
                future.result()
            except grpc.RpcError as exc:
                if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    down.append(p)
        return down

    def unary(self, method: str, request: Any, timeout: float | None = None) -> Callable[[int], Any]:
        """``call(p)``: the party API's unary ``method`` on participant ``p``, as the data owner, with a
        deadline (the configured call deadline unless ``timeout``); give it to :meth:`call_all`."""

        def call(p: int) -> Any:
            return getattr(self._stubs[p], method)(
                request, timeout=timeout or self.deadline_s, metadata=self.metadata
            )

        return call

    # ------------------------------------------------------------------ cluster
    def server_info(self) -> dict[int, party_pb2.ServerInfoReply]:
        return self.call_all("server info", self.unary("ServerInfo", party_pb2.ServerInfoRequest(), 10.0))

    def open_job(
        self, program: str, *, job_id: str | None = None, model_digest: str = "", test_seed: bytes = b""
    ) -> RemoteJob:
        """Open the same job on every participant (if one refuses, the others close it again)."""
        job_id = job_id or secrets.token_hex(16)
        spec = party_pb2.JobSpec(
            program=program,
            suite=self.config.suite,
            frac_bits=self.config.frac_bits,
            model_digest=model_digest,
            test_seed=test_seed,
        )
        request = party_pb2.OpenJobRequest(job_id=job_id, spec=spec)
        try:
            self.call_all(f"opening job {job_id}", self.unary("OpenJob", request))
        except ClusterError as exc:
            opened = [p for p in self.participants if p not in exc.failures]
            self.close_quietly(job_id, opened)
            raise
        return RemoteJob(self, job_id, program)

    def close_quietly(self, job_id: str, participants: Iterable[int], timeout_s: float = 5.0) -> None:
        """Close ``job_id`` on each participant, ignoring failures (cleanup after a refusal or a fault)."""
        for p in participants:
            with contextlib.suppress(grpc.RpcError):
                self.unary("CloseJob", party_pb2.JobRef(job_id=job_id), timeout_s)(p)

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        for channel in self._channels.values():
            channel.close()

    def __enter__(self) -> ClusterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RemoteJob:
    """One job open on every participant."""

    def __init__(self, client: ClusterClient, job_id: str, program: str) -> None:
        self.client = client
        self.job_id = job_id
        self.program = program
        self.suite = client.config.suite
        self.next_batch = 0
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.outputs: dict[str, OutputInfo] = {}

    # ------------------------------------------------------------------ uploads
    def upload(self, name: str, secret: np.ndarray, prg: PRG | None = None) -> None:
        """Secret-share a ring array (uint64, e.g. ``fp.encode(x)``) and send each party its share."""
        secret = np.asarray(secret)
        if secret.dtype != RING_DTYPE:
            raise TypeError(f"upload ring elements (uint64, e.g. FixedPoint.encode), got {secret.dtype}")
        self.upload_shares(name, suite_class(self.suite).split(secret, prg or system_prg()))

    def upload_shares(self, name: str, shares: Sequence[np.ndarray]) -> None:
        """Send ``shares[i]`` to compute party ``i`` (shares as produced by the suite's split)."""
        parties = self.client.compute_parties
        if len(shares) != len(parties):
            raise ValueError(f"a {self.suite} secret has {len(parties)} shares, got {len(shares)}")
        max_bytes = self.client.max_message_bytes

        def call(p: int) -> party_pb2.UploadReply:
            share = np.ascontiguousarray(shares[p], dtype=RING_DTYPE)
            header = party_pb2.ShareHeader(
                job_id=self.job_id, name=name, dtype="<u8", shape=share.shape, nbytes=share.nbytes
            )
            chunks = share_chunks(header, share, max_bytes, party_pb2.UploadChunk)
            return self.client.stub(p).Upload(
                chunks, timeout=self.client.deadline_s, metadata=self.client.metadata
            )

        self.client.call_all(f"uploading {name!r} to job {self.job_id}", call, parties)
        self.shapes[name] = tuple(np.shape(shares[0])[1:])

    # ------------------------------------------------------------------ one generation, one call
    def generate(
        self,
        secrets: Mapping[str, np.ndarray],
        inputs: Sequence[str],
        params: BaseModel | Mapping | None = None,
        reveal: Sequence[str] = (),
        prg: PRG | None = None,
        timeout_s: float | None = None,
    ) -> Generation:
        """Share ``secrets`` (ring arrays) inline, run the next batch and get the results: one call per
        participant (``Generate``) instead of upload, evaluate, fetch and status.

        Each compute party gets its shares of ``secrets`` (they replace earlier uploads of the same
        names once the servers accept the evaluation); the dealer gets the evaluation only.  The outputs
        named in ``reveal`` are combined here; every participant's statistics come back with the call.
        """
        cls = suite_class(self.suite)
        split: dict[str, list[np.ndarray]] = {}
        for name, secret in secrets.items():
            secret = np.asarray(secret)
            if secret.dtype != RING_DTYPE:
                raise TypeError(f"share ring elements (uint64, e.g. FixedPoint.encode), got {secret.dtype}")
            split[name] = cls.split(secret, prg or system_prg())
        shapes = {**self.shapes, **{name: tuple(np.shape(s)) for name, s in secrets.items()}}
        missing = [n for n in inputs if n not in shapes]
        if missing:
            raise KeyError(f"inputs {missing} were neither uploaded to job {self.job_id} nor sent with it")
        request = self._evaluate_request(list(inputs), shapes, params)
        parties = self.client.compute_parties
        max_bytes = self.client.max_message_bytes
        limit = self.client.config.limits.max_upload_bytes

        def requests(p: int) -> Iterable[party_pb2.GenerateRequest]:
            for name, shares in split.items() if p in parties else ():
                share = np.ascontiguousarray(shares[parties.index(p)], dtype=RING_DTYPE)
                header = party_pb2.ShareHeader(
                    job_id=self.job_id, name=name, dtype="<u8", shape=share.shape, nbytes=share.nbytes
                )
                for chunk in share_chunks(header, share, max_bytes, party_pb2.UploadChunk):
                    yield party_pb2.GenerateRequest(share=chunk)
            yield party_pb2.GenerateRequest(evaluate=request)

        def call(p: int):
            stream = self.client.stub(p).Generate(
                requests(p), timeout=timeout_s or self.client.deadline_s, metadata=self.client.metadata
            )
            evaluated, status, results = None, None, {}
            assembler = None
            for reply in stream:
                part = reply.WhichOneof("part")
                if part == "evaluated" and evaluated is None:
                    evaluated = reply.evaluated
                elif part == "result" and evaluated is not None and status is None:
                    chunk = reply.result
                    if chunk.HasField("header"):
                        if assembler is not None:
                            results[assembler.header.name] = assembler.finish()
                        if chunk.header.nbytes > limit:
                            raise ShareStreamError(f"participant {p} sent a result larger than allowed")
                        assembler = ShareAssembler(chunk.header)
                    elif assembler is None:
                        raise ShareStreamError(f"participant {p} sent a result without a valid header")
                    assembler.feed(chunk.data)
                elif part == "status" and evaluated is not None and status is None:
                    status = reply.status
                else:
                    raise ShareStreamError(f"participant {p} answered a generation out of order")
            if assembler is not None:
                results[assembler.header.name] = assembler.finish()
            if evaluated is None or status is None:
                raise ShareStreamError(f"participant {p} ended a generation without its results")
            return evaluated, results, status

        what = f"generation {self.next_batch} of job {self.job_id}"
        replies = self.client.call_all(what, call)
        evaluated = replies[parties[0]][0]
        outputs = {o.name: OutputInfo(tuple(o.shape), o.scale) for o in evaluated.outputs}
        values = {}
        for name in reveal:
            shares = [replies[p][1].get(name) for p in parties]
            if any(share is None for share in shares):
                raise ClusterError(
                    what,
                    {p: (grpc.StatusCode.DATA_LOSS, f"no share of {name!r}") for p in parties},
                    self.client.describe,
                )
            values[name] = cls.combine(shares)
        self.shapes.update({name: tuple(np.shape(s)) for name, s in secrets.items()})
        self.outputs = outputs
        self.last_seconds = max(r[0].seconds for r in replies.values())
        self.next_batch += 1
        metrics = {p: _metrics_of(r[2]) for p, r in replies.items()}
        return Generation(outputs=outputs, values=values, metrics=metrics, seconds=self.last_seconds)

    # ------------------------------------------------------------------ evaluate and results
    def _evaluate_request(
        self, names: list[str], shapes: Mapping[str, tuple[int, ...]], params: BaseModel | Mapping | None
    ) -> party_pb2.EvaluateRequest:
        if isinstance(params, BaseModel):
            params_json = params.model_dump_json()
        else:
            params_json = json.dumps(dict(params or {}))
        return party_pb2.EvaluateRequest(
            job_id=self.job_id,
            batch=self.next_batch,
            inputs=[party_pb2.TensorInfo(name=n, shape=shapes[n]) for n in names],
            params_json=params_json,
        )

    def evaluate(
        self,
        inputs: Sequence[str] | None = None,
        params: BaseModel | Mapping | None = None,
        timeout_s: float | None = None,
    ) -> dict[str, OutputInfo]:
        """Run the next batch on every participant; returns the outputs' shapes and scales."""
        names = list(self.shapes) if inputs is None else list(inputs)
        missing = [n for n in names if n not in self.shapes]
        if missing:
            raise KeyError(f"inputs {missing} were not uploaded to job {self.job_id}")
        request = self._evaluate_request(names, self.shapes, params)
        what = f"evaluating batch {self.next_batch} of job {self.job_id}"
        replies = self.client.call_all(what, self.client.unary("Evaluate", request, timeout_s))
        reply = replies[self.client.compute_parties[0]]
        self.outputs = {o.name: OutputInfo(tuple(o.shape), o.scale) for o in reply.outputs}
        self.last_seconds = max(r.seconds for r in replies.values())
        self.next_batch += 1
        return dict(self.outputs)

    def fetch_shares(self, name: str) -> list[np.ndarray]:
        """Every compute party's share of output ``name`` of the latest batch."""
        batch = self.next_batch - 1
        request = party_pb2.FetchRequest(job_id=self.job_id, batch=batch, name=name)
        limit = self.client.config.limits.max_upload_bytes

        def call(p: int) -> np.ndarray:
            stream = self.client.stub(p).FetchResult(
                request, timeout=self.client.deadline_s, metadata=self.client.metadata
            )
            assembler = None
            for chunk in stream:
                if assembler is None:
                    if not chunk.HasField("header") or chunk.header.nbytes > limit:
                        raise ShareStreamError(f"participant {p} sent a result without a valid header")
                    assembler = ShareAssembler(chunk.header)
                assembler.feed(chunk.data)
            if assembler is None:
                raise ShareStreamError(f"participant {p} sent no result data")
            return assembler.finish()

        shares = self.client.call_all(
            f"fetching {name!r} of job {self.job_id}", call, self.client.compute_parties
        )
        return [shares[p] for p in self.client.compute_parties]

    def reveal(self, name: str) -> np.ndarray:
        """Reconstruct output ``name`` as ring elements (uint64); only the data owner can do this."""
        return suite_class(self.suite).combine(self.fetch_shares(name))

    def reveal_float(self, name: str) -> np.ndarray:
        """Reconstruct and decode output ``name`` with its fixed-point scale."""
        scale = self.outputs[name].scale if name in self.outputs else self.client.config.frac_bits
        return self.reveal(name).view(np.int64).astype(np.float64) / float(1 << scale)

    # ------------------------------------------------------------------ status and close
    def status(self) -> dict[int, party_pb2.JobStatusReply]:
        return self.client.call_all(
            f"status of job {self.job_id}",
            self.client.unary("JobStatus", party_pb2.JobRef(job_id=self.job_id), 10.0),
        )

    def metrics(self) -> dict[int, dict[str, Any]]:
        """Per participant: traffic and time per named operation, and what the wire carried."""
        return {p: _metrics_of(reply) for p, reply in self.status().items()}

    def close(self) -> None:
        self.client.call_all(
            f"closing job {self.job_id}",
            self.client.unary("CloseJob", party_pb2.JobRef(job_id=self.job_id), 10.0),
        )

    def __enter__(self) -> RemoteJob:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(ClusterError):
            self.close()


def wait_until_serving(client: ClusterClient, timeout_s: float = 30.0) -> None:
    """Block until every participant answers ServerInfo (or raise the last ClusterError)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.server_info()
            return
        except ClusterError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _metrics_of(reply: party_pb2.JobStatusReply) -> dict[str, Any]:
    """One participant's statistics: traffic and time per named operation, and what the wire carried."""
    return {
        "ops": {
            op.name: {"bytes": op.bytes, "messages": op.messages, "rounds": op.rounds, "seconds": op.seconds}
            for op in reply.ops
        },
        "wire": {f.name: getattr(reply.wire, f.name) for f in reply.wire.DESCRIPTOR.fields},
        "batches": reply.batches_done,
        "evaluate_seconds": reply.evaluate_seconds,
    }


def _wait_unless_one_fails(futures: list[Future], grace_s: float) -> None:
    """Wait for every future, or, once one has failed, at most ``grace_s`` more for the rest."""
    done, pending = wait(futures, return_when=FIRST_EXCEPTION)
    if pending and any(f.exception() is not None for f in done):
        wait(pending, timeout=grace_s)
