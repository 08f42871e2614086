"""Per-job state of one server and the job lifecycle: open, upload, evaluate, fetch, close, abort.

A job is opened by the data owner on every participant with the same id and spec.  Its peer links are
set up at the first evaluation (the lower-numbered participant opens each stream) and kept for the
job's lifetime, as is its :class:`~mpc_core.context.Context` (so a weight's opened Beaver mask is
reused by every batch).  Evaluations run one at a time, in batch order, in a worker thread; the
event loop keeps serving other jobs and calls meanwhile.

Validation comes first and changes nothing: every refusal (unknown job, bad name, wrong shape, wrong
suite, too large) leaves the job exactly as it was.  A failure *during* a computation (a peer gone, a
stream broken, participants diverging) aborts the job on this server, tells the peers why, and drops
all its state (shares, results, links); a tombstone keeps only the reason, so a later call on that job
gets NOT_FOUND naming it.  Nothing here logs or reports a share or a result value.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import grpc
import numpy as np
from pydantic import BaseModel

from mpc_core.context import PARTICIPANTS, Context
from mpc_core.ring import RING_DTYPE
from mpc_core.tensor import SharedTensor
from mpc_core.transport.base import ProtocolError, TransportClosed
from mpc_core.transport.grpc_transport import (
    GrpcTransport,
    LinkRefusedError,
    LinkSettings,
    PeerLink,
    open_link,
)
from proto.contracts import TENSOR_NAME_PATTERN
from server.code_digest import protocol_code_digest
from server.config import JOB_ID_PATTERN, ClusterConfig
from server.errors import (
    RpcError,
    exhausted,
    invalid,
    not_found,
    precondition,
    shown,
    shown_shape,
    unavailable,
)
from server.execute import run_program, start_context
from server.model_store import SLOTS, LoadedModel
from server.programs import PlanError, Program, get_program
from server.resources import ResourceGuard
from server.seeding import MAX_TEST_SEED_BYTES

log = logging.getLogger(__name__)

MAX_TOMBSTONES = 256
MAX_NDIM = 8
JOB_ID_RULE = "job ids are 1-64 characters from [A-Za-z0-9_.-], starting with a letter or digit"


@dataclass(frozen=True)
class JobSpec:
    """What the data owner asks for; every participant must receive the same spec for a job."""

    program: str
    suite: str
    frac_bits: int
    model_digest: str = ""
    test_seed: bytes = b""

    def digest(self, job_id: str) -> bytes:
        """SHA-256 of the canonical spec: peers compare it when their stream opens."""
        canonical = json.dumps(
            {
                "job_id": job_id,
                "program": self.program,
                "suite": self.suite,
                "frac_bits": self.frac_bits,
                "model_digest": self.model_digest,
                "test_seed": hashlib.sha256(self.test_seed).hexdigest() if self.test_seed else "",
                "protocol_code": protocol_code_digest(),
            },
            sort_keys=True,
        )
        return hashlib.sha256(canonical.encode()).digest()


@dataclass
class BatchResult:
    batch: int
    outputs: dict[str, tuple[tuple[int, ...], int]]  # name -> (logical shape, fixed-point scale)
    shares: dict[str, np.ndarray]  # empty at the dealer
    seconds: float


@dataclass
class Job:
    job_id: str
    spec: JobSpec
    digest: bytes
    program: Program
    uploads: dict[str, np.ndarray] = field(default_factory=dict)
    upload_bytes: int = 0
    in_flight_bytes: int = 0  # uploads being received (reserved against the limits until stored)
    next_batch: int = 0
    result: BatchResult | None = None
    running: bool = False
    batch_inputs: frozenset[str] = frozenset()  # the inputs of the batch running or waiting for peers
    ctx: Context | None = None
    transport: GrpcTransport | None = None
    incoming: dict[int, asyncio.Future] = field(default_factory=dict)
    model_tensors: dict[str, SharedTensor] | None = None
    state: dict = field(default_factory=dict)  # the program's per-job state (same on every participant)
    evaluate_seconds: float = 0.0
    last_used: float = field(default_factory=time.monotonic)
    aborted: str | None = None
    unfetched: set[str] = field(default_factory=set)  # outputs of the latest batch not fetched yet

    def touch(self) -> None:
        self.last_used = time.monotonic()


def check_tensor_name(name: str) -> None:
    """Refuse a malformed tensor name (matched whole: no trailing newline or other control character)."""
    if not TENSOR_NAME_PATTERN.fullmatch(name):
        raise invalid("tensor names must be 1-64 characters from [A-Za-z0-9_.-], starting with a letter or _")


class JobManager:
    """All jobs of one server process (participant ``me``)."""

    def __init__(
        self,
        config: ClusterConfig,
        me: int,
        *,
        model: LoadedModel | None,
        channels: PeerChannels,
        insecure: bool,
        link_settings: LinkSettings,
    ) -> None:
        self.config = config
        self.me = me
        self.model = model
        self.channels = channels
        self.insecure = insecure
        self.link_settings = link_settings
        self.is_dealer = config.party(me).role == "dealer"
        self.slots = SLOTS[config.suite]
        self.jobs: dict[str, Job] = {}
        self._tombstones: OrderedDict[str, str] = OrderedDict()
        self._executor = ThreadPoolExecutor(max_workers=config.limits.max_jobs, thread_name_prefix="job")
        self.resources = ResourceGuard(config.limits, me)
        self.stopping = False

    def _accepting(self, what: str) -> None:
        """Refuse new work once a shutdown has begun (running batches may still finish)."""
        if self.stopping:
            raise unavailable(
                f"participant {self.me} is shutting down: it accepts no new {what} "
                f"(running batches get {self.config.limits.shutdown_grace_s:g} s to finish)"
            )

    @property
    def held_bytes(self) -> int:
        """Bytes of shares all jobs hold or are receiving."""
        return sum(job.upload_bytes + job.in_flight_bytes for job in self.jobs.values())

    # ------------------------------------------------------------------ lookups
    def get(self, job_id: str) -> Job:
        if not JOB_ID_PATTERN.fullmatch(job_id):  # checked first: a request's id is never echoed at length
            raise invalid(f"malformed job id {shown(job_id)}: {JOB_ID_RULE}")
        job = self.jobs.get(job_id)
        if job is None:
            reason = self._tombstones.get(job_id)
            if reason is not None:
                raise not_found(f"job {job_id!r} no longer exists on participant {self.me}: {reason}")
            raise not_found(f"job {job_id!r} is not open on participant {self.me}")
        job.touch()
        return job

    # ------------------------------------------------------------------ open
    def open(self, job_id: str, spec: JobSpec) -> Job:
        if not JOB_ID_PATTERN.fullmatch(job_id):
            raise invalid(f"malformed job_id {shown(job_id)}: {JOB_ID_RULE}")
        if job_id in self.jobs or job_id in self._tombstones:
            raise RpcError(
                grpc.StatusCode.ALREADY_EXISTS, f"job id {job_id!r} was already used on this server"
            )
        if spec.suite != self.config.suite:
            asked = shown(spec.suite) if spec.suite else "(none)"
            raise invalid(f"this cluster runs suite {self.config.suite}, the job asks for {asked}")
        if spec.frac_bits != self.config.frac_bits:
            raise invalid(
                f"this cluster uses {self.config.frac_bits} fractional bits, the job {spec.frac_bits}"
            )
        try:
            program = get_program(spec.program)
        except PlanError as exc:
            raise invalid(str(exc)) from None
        if program.uses_model:
            if self.model is None:
                raise precondition(f"program {spec.program!r} needs a model and this cluster has none loaded")
            if spec.model_digest != self.model.digest:
                raise invalid(
                    "the job names a different model than the one loaded (manifest digest mismatch)"
                )
        elif spec.model_digest and (self.model is None or spec.model_digest != self.model.digest):
            raise invalid("the job names a model that is not loaded here (manifest digest mismatch)")
        if spec.test_seed:
            if not self.config.development.allow_fixed_seeds:
                raise precondition(
                    "fixed test seeds are disabled on this server (development.allow_fixed_seeds)"
                )
            if len(spec.test_seed) > MAX_TEST_SEED_BYTES:
                raise invalid(f"test_seed must be at most {MAX_TEST_SEED_BYTES} bytes")
        self._accepting("jobs")
        if len(self.jobs) >= self.config.limits.max_jobs:
            limit = self.config.limits.max_jobs
            raise exhausted(f"this server already runs {len(self.jobs)} jobs (limits.max_jobs = {limit})")
        self.resources.check_memory("job")
        job = Job(job_id=job_id, spec=spec, digest=spec.digest(job_id), program=program)
        self.jobs[job_id] = job
        log.info("job %s opened: program %s", job_id, spec.program)
        if spec.test_seed:
            log.warning("job %s uses FIXED TEST SEEDS: its masks are predictable (development only)", job_id)
        return job

    # ------------------------------------------------------------------ uploads
    def check_upload_header(
        self, job_id: str, name: str, dtype: str, shape: tuple[int, ...], nbytes: int
    ) -> Job:
        """Validate an upload before reading its data; returns the job (no state changes)."""
        job = self.get(job_id)
        limits = self.config.limits
        if self.is_dealer:
            raise precondition("the dealer holds no shares: upload shares to the compute parties only")
        check_tensor_name(name)
        if dtype != "<u8":
            raise invalid(f"shares are uint64 ring elements (dtype '<u8'), got dtype {dtype[:16]!r}")
        if not 2 <= len(shape) <= MAX_NDIM + 1 or any(d < 1 for d in shape):
            raise invalid(
                f"a share needs a slot axis and 1 to {MAX_NDIM} positive dimensions, "
                f"got shape {shown_shape(shape)}"
            )
        if shape[0] != self.slots:
            raise invalid(
                f"a {self.config.suite} share has {self.slots} slot(s) on axis 0, got {shape[0]}: "
                "a share for another suite?"
            )
        expected = int(np.prod(shape, dtype=object)) * 8
        if nbytes != expected:
            raise invalid(f"shape {shape} of uint64 needs {expected} bytes, the header declares {nbytes}")
        if nbytes > limits.max_upload_bytes:
            raise invalid(
                f"a share of {nbytes} bytes exceeds the upload limit (limits.max_upload_bytes = "
                f"{limits.max_upload_bytes})"
            )
        self._accepting("uploads")
        self._not_in_running_batch(job, name)
        replaced = job.uploads.get(name)
        total = (
            job.upload_bytes + job.in_flight_bytes - (replaced.nbytes if replaced is not None else 0) + nbytes
        )
        if total > limits.max_job_bytes:
            raise exhausted(
                f"the uploads of job {job_id!r} would reach {total} bytes (limits.max_job_bytes = "
                f"{limits.max_job_bytes})"
            )
        if replaced is None and len(job.uploads) >= limits.max_inputs:
            raise exhausted(
                f"job {job_id!r} already holds {len(job.uploads)} named uploads "
                f"(limits.max_inputs = {limits.max_inputs})"
            )
        return job

    def reserve_upload(self, job: Job, nbytes: int) -> None:
        """Count an accepted upload header against the server's limits until :meth:`release_upload`."""
        self.resources.check_server_bytes(self.held_bytes, nbytes)
        in_flight = sum(j.in_flight_bytes for j in self.jobs.values())
        self.resources.check_memory("upload", adding=nbytes, reserved=in_flight)
        job.in_flight_bytes += nbytes

    def release_upload(self, job: Job, nbytes: int) -> None:
        job.in_flight_bytes = max(0, job.in_flight_bytes - nbytes)

    @staticmethod
    def _not_in_running_batch(job: Job, name: str) -> None:
        """An input of the batch that runs (or waits for its peers) cannot be replaced until it ends."""
        if job.running and name in job.batch_inputs:
            raise precondition(
                f"input {name!r} of job {job.job_id!r} is used by batch {job.next_batch}, which is running "
                "or waiting for the other participants; upload it again after that batch"
            )

    def store_upload(self, job: Job, name: str, share: np.ndarray) -> None:
        if job.aborted:
            raise not_found(f"job {job.job_id!r} was aborted during the upload: {job.aborted}")
        self._not_in_running_batch(job, name)  # a batch may have started while the data arrived
        replaced = job.uploads.get(name)
        job.upload_bytes += share.nbytes - (replaced.nbytes if replaced is not None else 0)
        job.uploads[name] = share

    # ------------------------------------------------------------------ evaluate
    def plan(self, job: Job, batch: int, inputs: Mapping[str, tuple[int, ...]], params_json: str):
        """Validate an evaluation (no state changes): returns (params, output shapes)."""
        self._accepting("batches")
        if job.running:
            raise precondition(f"job {job.job_id!r} is already evaluating batch {job.next_batch}")
        if batch != job.next_batch:
            raise invalid(f"job {job.job_id!r} expects batch {job.next_batch} next, got {batch}")
        if len(params_json.encode()) > self.config.limits.max_params_bytes:
            raise invalid(f"params_json exceeds {self.config.limits.max_params_bytes} bytes")
        for name, shape in inputs.items():
            check_tensor_name(name)
            if not 1 <= len(shape) <= MAX_NDIM or any(d < 1 for d in shape):
                raise invalid(f"input {name!r} has an invalid shape {shown_shape(shape)}")
            if not self.is_dealer:
                share = job.uploads.get(name)
                if share is None:
                    raise invalid(f"input {name!r} was not uploaded to job {job.job_id!r}")
                if share.shape[1:] != shape:
                    raise invalid(
                        f"input {name!r} is declared {shape} but its uploaded share has {share.shape[1:]}"
                    )
        try:
            params = job.program.parse_params(params_json)
            outputs = job.program.plan(dict(inputs), params, self.model)
        except PlanError as exc:
            raise invalid(str(exc)) from None
        self.resources.check_memory("batch")
        return params, outputs

    async def evaluate(
        self,
        job: Job,
        batch: int,
        inputs: Mapping[str, tuple[int, ...]],
        params: BaseModel,
        outputs: Mapping[str, tuple[int, ...]],
    ) -> BatchResult:
        """Run one batch with the peers; on any failure the job is aborted and an RpcError raised."""
        job.running = True
        job.batch_inputs = frozenset(inputs)
        # the shares as planned: what the batch computes on cannot change while it waits for its peers
        shares = None if self.is_dealer else {name: job.uploads[name] for name in inputs}
        try:
            if job.transport is None:
                await self._connect(job)
            loop = asyncio.get_running_loop()
            run = partial(self._run_batch, job, batch, dict(inputs), shares, params, dict(outputs))
            result = await loop.run_in_executor(self._executor, run)
        except asyncio.CancelledError:
            self.abort(
                job.job_id, "the data owner's evaluate call was cancelled (deadline exceeded or client gone)"
            )
            raise
        except RpcError as exc:
            self.abort(job.job_id, exc.message)
            raise
        except TransportClosed as exc:
            reason = job.aborted or str(exc)
            self.abort(job.job_id, reason)
            raise unavailable(f"job {job.job_id!r} aborted on participant {self.me}: {reason}") from None
        except ProtocolError as exc:
            self.abort(job.job_id, f"participants diverged: {exc}")
            raise RpcError(
                grpc.StatusCode.ABORTED, f"job {job.job_id!r} aborted: participants diverged: {exc}"
            ) from None
        except Exception as exc:
            detail = f"{type(exc).__name__}: {str(exc)[:300]}"
            log.exception("job %s failed in batch %d", job.job_id, batch)
            self.abort(job.job_id, f"the computation failed on participant {self.me} ({detail})")
            raise RpcError(
                grpc.StatusCode.INTERNAL, f"job {job.job_id!r} failed on participant {self.me}: {detail}"
            ) from None
        finally:
            job.running = False
            job.batch_inputs = frozenset()
        if job.aborted:
            raise unavailable(f"job {job.job_id!r} aborted on participant {self.me}: {job.aborted}")
        job.result = result
        job.unfetched = set(result.shares)
        job.next_batch = batch + 1
        job.evaluate_seconds += result.seconds
        job.touch()
        return result

    def _run_batch(
        self,
        job: Job,
        batch: int,
        inputs: dict,
        shares: dict[str, np.ndarray] | None,
        params: BaseModel,
        outputs: dict,
    ) -> BatchResult:
        """Worker thread: set up the context once, then run the program on this batch."""
        start = time.perf_counter()
        ctx = job.ctx
        if ctx is None:
            ctx = start_context(
                self.me, job.spec.suite, job.transport, job.spec.frac_bits, job.spec.test_seed
            )
            job.ctx = ctx
            if job.program.uses_model:
                job.model_tensors = self.model.wrap(ctx)
        produced = run_program(ctx, job.program, params, shares, inputs, job.model_tensors, job.state)
        if set(produced) != set(outputs):
            raise ProtocolError(
                f"program {job.program.name!r} produced {sorted(produced)}, planned {sorted(outputs)}"
            )
        info, shares = {}, {}
        for name, tensor in produced.items():
            if tensor.shape != tuple(outputs[name]):
                raise ProtocolError(
                    f"output {name!r} has shape {tensor.shape}, planned {tuple(outputs[name])}"
                )
            info[name] = (tensor.shape, tensor.scale)
            if not self.is_dealer:
                shares[name] = np.ascontiguousarray(tensor.data, dtype=RING_DTYPE)
        return BatchResult(batch=batch, outputs=info, shares=shares, seconds=time.perf_counter() - start)

    # ------------------------------------------------------------------ peer links
    async def _connect(self, job: Job) -> None:
        timeout = self.config.limits.connect_timeout_s
        on_failure = partial(self._link_failed, job.job_id)
        tasks: dict[int, asyncio.Future] = {}
        for peer in range(PARTICIPANTS):
            if peer == self.me:
                continue
            if peer > self.me:
                tasks[peer] = asyncio.ensure_future(
                    open_link(
                        self.channels.get(peer),
                        job_id=job.job_id,
                        me=self.me,
                        peer=peer,
                        digest=job.digest,
                        settings=self.link_settings,
                        timeout_s=timeout,
                        metadata=self.channels.metadata,
                        on_failure=on_failure,
                    )
                )
            else:
                waiter = job.incoming.setdefault(peer, asyncio.get_running_loop().create_future())
                tasks[peer] = asyncio.ensure_future(asyncio.wait_for(asyncio.shield(waiter), timeout))
        results = await asyncio.gather(*tasks.values(), return_exceptions=True)
        links: dict[int, PeerLink] = {}
        problems: list[str] = []
        codes: set[grpc.StatusCode] = set()
        for peer, result in zip(tasks, results, strict=True):
            if isinstance(result, PeerLink):
                links[peer] = result
            elif isinstance(result, LinkRefusedError):
                codes.add(result.code)
                problems.append(
                    f"{self._describe(peer)} refused the peer stream: {result.code.name}: {result.details}"
                )
            elif isinstance(result, asyncio.TimeoutError | TimeoutError):
                codes.add(grpc.StatusCode.UNAVAILABLE)
                problems.append(f"{self._describe(peer)} did not connect within {timeout:g} s")
            elif isinstance(result, BaseException):
                codes.add(grpc.StatusCode.UNAVAILABLE)
                problems.append(f"link to {self._describe(peer)} failed: {type(result).__name__}: {result}")
        if job.aborted and not problems:
            problems.append(job.aborted)
            codes.add(grpc.StatusCode.UNAVAILABLE)
        if problems:
            for link in links.values():
                link.close("a peer of this job is unreachable", notify=True)
            transient = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
            code = grpc.StatusCode.UNAVAILABLE if codes <= transient else grpc.StatusCode.FAILED_PRECONDITION
            raise RpcError(
                code, f"job {job.job_id!r} cannot start on participant {self.me}: " + "; ".join(problems)
            )
        job.transport = GrpcTransport(self.me, links)

    def _describe(self, peer: int) -> str:
        party = self.config.party(peer)
        return f"participant {peer} ({party.name} at {party.address})"

    def accept_target(self, job_id: str, peer: int, digest: bytes) -> Job:
        """Validate an incoming peer stream's hello (no state change)."""
        if peer > self.me:
            raise invalid(f"participant {peer} must wait for participant {self.me} to open their stream")
        job = self.get(job_id)
        if digest != job.digest:
            raise precondition(
                f"participant {peer} holds a different spec for job {job_id!r}: program, suite, fixed point, "
                "model or the servers' engine code differ (all servers must run the same release)"
            )
        waiter = job.incoming.get(peer)
        if waiter is not None and waiter.done():
            raise RpcError(
                grpc.StatusCode.ALREADY_EXISTS, f"participant {peer} already has a stream for job {job_id!r}"
            )
        return job

    def attach_incoming(self, job: Job, link: PeerLink) -> None:
        if job.aborted or self.jobs.get(job.job_id) is not job:
            link.close(f"job {job.job_id!r} was aborted on participant {self.me}", notify=True)
            return
        waiter = job.incoming.setdefault(link.peer, asyncio.get_running_loop().create_future())
        if waiter.done():
            link.close("duplicate stream", notify=True)
            return
        waiter.set_result(link)

    def link_failed_from_handler(self, job_id: str, peer: int, reason: str) -> None:
        self._link_failed(job_id, peer, reason)

    def _link_failed(self, job_id: str, peer: int, reason: str) -> None:
        if job_id in self.jobs:
            log.warning("job %s: link to participant %d failed: %s", job_id, peer, reason)
            self.abort(job_id, reason)

    # ------------------------------------------------------------------ results, status, close
    def fetch(self, job: Job, batch: int, name: str) -> tuple[np.ndarray, int]:
        check_tensor_name(name)
        if self.is_dealer:
            raise precondition("the dealer holds no result shares: fetch from the compute parties")
        if job.result is None or job.result.batch != batch:
            latest = "none yet" if job.result is None else str(job.result.batch)
            raise not_found(f"job {job.job_id!r} has no results for batch {batch} (latest batch: {latest})")
        if name not in job.result.shares:
            raise not_found(f"batch {batch} of job {job.job_id!r} has no output {shown(name)}")
        return job.result.shares[name], job.result.outputs[name][1]

    def fetched(self, job: Job, batch: int, name: str) -> None:
        """A result was streamed to the data owner (a shutdown waits for the results of finished batches)."""
        if job.result is not None and job.result.batch == batch:
            job.unfetched.discard(name)

    def close(self, job_id: str) -> None:
        job = self.get(job_id)
        self._drop(job, "closed by the data owner", notify=True, graceful=True)
        log.info("job %s closed", job_id)

    def abort(self, job_id: str, reason: str, notify: bool = True) -> None:
        """Drop a job's state now (links, shares, results), telling the peers why."""
        job = self.jobs.get(job_id)
        if job is None:
            return
        log.warning("job %s aborted on participant %d: %s", job_id, self.me, reason)
        self._drop(job, f"aborted: {reason}", notify=notify)

    def _drop(self, job: Job, reason: str, notify: bool, graceful: bool = False) -> None:
        job.aborted = job.aborted or reason
        self.jobs.pop(job.job_id, None)
        self._tombstones[job.job_id] = reason
        while len(self._tombstones) > MAX_TOMBSTONES:
            self._tombstones.popitem(last=False)
        if job.transport is not None:
            job.transport.close(
                f"job {job.job_id!r} {reason} on participant {self.me}", notify=notify, graceful=graceful
            )
        for waiter in job.incoming.values():
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                waiter.result().close(
                    f"job {job.job_id!r} {reason} on participant {self.me}", notify=notify, graceful=graceful
                )
            elif not waiter.done():
                waiter.cancel()
        job.uploads.clear()
        job.upload_bytes = 0
        job.unfetched = set()
        job.result = None
        job.model_tensors = None
        job.state = {}

    def reap_idle(self) -> list[str]:
        limit = self.config.limits.job_idle_timeout_s
        now = time.monotonic()
        stale = [j.job_id for j in self.jobs.values() if not j.running and now - j.last_used > limit]
        for job_id in stale:
            self.abort(job_id, f"idle for more than {limit:g} s")
        return stale

    async def drain(self, grace_s: float, poll_s: float = 0.05) -> None:
        """Begin a shutdown: refuse new work and give running batches up to ``grace_s`` to finish and
        their results to be fetched.  Says in the log which jobs finished; :meth:`shutdown` aborts the rest.
        """
        self.stopping = True
        running = {job.job_id: job.next_batch for job in self.jobs.values() if job.running}
        if not running:
            return
        log.info(
            "shutdown: waiting up to %g s for %d running batch(es): %s",
            grace_s,
            len(running),
            ", ".join(f"job {j} batch {b}" for j, b in running.items()),
        )
        deadline = time.monotonic() + grace_s

        def busy() -> bool:
            jobs = [self.jobs.get(job_id) for job_id in running]
            return any(job is not None and (job.running or job.unfetched) for job in jobs)

        while busy() and time.monotonic() < deadline:
            await asyncio.sleep(poll_s)
        for job_id, batch in running.items():
            job = self.jobs.get(job_id)
            if job is not None and not job.running and job.next_batch > batch:
                log.info("shutdown: job %s finished batch %d before the server stopped", job_id, batch)

    def shutdown(self, reason: str) -> None:
        """Abort every job still open (peers are told why); each is named in the log."""
        grace = self.config.limits.shutdown_grace_s
        for job_id in list(self.jobs):
            job = self.jobs[job_id]
            if job.running:
                self.abort(
                    job_id,
                    f"{reason}: batch {job.next_batch} did not finish within "
                    f"limits.shutdown_grace_s = {grace:g} s",
                )
            else:
                self.abort(job_id, reason)
        self._executor.shutdown(wait=False, cancel_futures=True)


class PeerChannels:
    """One gRPC channel per peer server, created on first use and shared by all jobs' streams."""

    def __init__(self, config: ClusterConfig, me: int, credentials, insecure: bool) -> None:
        from server.security import channel_credentials, channel_options, identity_metadata

        self.config = config
        self.me = me
        self.insecure = insecure
        self._credentials = None if insecure else channel_credentials(credentials)
        self._options = partial(channel_options, max_message_bytes=config.limits.max_message_bytes)
        self.metadata = identity_metadata(config.party(me).name, insecure)
        self._channels: dict[int, grpc.aio.Channel] = {}

    def get(self, peer: int) -> grpc.aio.Channel:
        channel = self._channels.get(peer)
        if channel is None:
            party = self.config.party(peer)
            if self.insecure:
                channel = grpc.aio.insecure_channel(party.address, options=self._options(None))
            else:
                channel = grpc.aio.secure_channel(
                    party.address, self._credentials, options=self._options(party.name)
                )
            self._channels[peer] = channel
        return channel

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
