"""A server's job registry: open a job, find it, close or abort it, and remember why it ended.

Validation comes first and changes nothing: every refusal (malformed id, reused id, wrong suite or
fixed point, unknown program, wrong model, too many jobs) leaves the registry as it was.  An aborted
or closed job drops all its state (shares, results, links); a tombstone keeps only the reason, so a
later call on that job gets NOT_FOUND naming it.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

import grpc

from contract.cluster import JOB_ID_PATTERN, ClusterConfig
from mpc_core.suites import suite_class
from server.errors import RpcError, exhausted, invalid, not_found, precondition, shown, unavailable
from server.job_state import Job, JobSpec
from server.model_store import LoadedModel
from server.programs import PlanError, get_program
from server.resources import ResourceGuard
from server.seeding import MAX_TEST_SEED_BYTES

log = logging.getLogger(__name__)

MAX_TOMBSTONES = 256
JOB_ID_RULE = "job ids are 1-64 characters from [A-Za-z0-9_.-], starting with a letter or digit"


class JobRegistry:
    """The open jobs of one server process (participant ``me``) and the tombstones of ended ones."""

    def __init__(
        self, config: ClusterConfig, me: int, *, model: LoadedModel | None, resources: ResourceGuard
    ) -> None:
        self.config = config
        self.me = me
        self.model = model
        self.resources = resources
        self.is_dealer = config.party(me).role == "dealer"
        self.slots = suite_class(config.suite).slots
        self.jobs: dict[str, Job] = {}
        self._tombstones: OrderedDict[str, str] = OrderedDict()
        self.stopping = False
        #: this server's own folder (checkpoints of its shares); created by the programs that write there
        self.state_dir = config.party_state_dir(me)

    def accepting(self, what: str) -> None:
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
        self.accepting("jobs")
        if len(self.jobs) >= self.config.limits.max_jobs:
            limit = self.config.limits.max_jobs
            raise exhausted(f"this server already runs {len(self.jobs)} jobs (limits.max_jobs = {limit})")
        self.resources.check_memory("job")
        program = program.for_job(job_id, self.state_dir)
        job = Job(job_id=job_id, spec=spec, digest=spec.digest(job_id), program=program)
        self.jobs[job_id] = job
        log.info("job %s opened: program %s", job_id, spec.program)
        if spec.test_seed:
            log.warning("job %s uses FIXED TEST SEEDS: its masks are predictable (development only)", job_id)
        return job

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
