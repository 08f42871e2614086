"""One server's jobs, split along their seams and put together here.

:class:`JobManager` owns one of each: the :class:`~server.job_registry.JobRegistry` (open, find, close,
abort, tombstones), the :class:`~server.uploads.Uploads` desk (header checks, reservations, storing a
share), the :class:`~server.peer_mesh.PeerMesh` (peer channels and each job's links) and the
:class:`~server.batch_runner.BatchRunner` (plan, run and keep a batch's results).  The party and peer
services call those parts; the manager itself only does what spans them: the shutdown drain.

A job is opened by the data owner on every participant with the same id and spec.  Its peer links are
set up at the first evaluation and kept for the job's lifetime, as is its
:class:`~mpc_core.context.Context` (so a weight's opened Beaver mask is reused by every batch).
Validation comes first and changes nothing; a failure *during* a computation aborts the job on this
server, tells the peers why, and drops all its state.  Nothing here logs or reports a share or a
result value.
"""

from __future__ import annotations

import asyncio
import logging
import time

from contract.cluster import ClusterConfig
from mpc_core.transport.grpc_transport import LinkSettings
from server.batch_runner import BatchRunner
from server.job_registry import JobRegistry
from server.job_state import BatchResult, Job, JobSpec
from server.model_store import LoadedModel
from server.peer_mesh import PeerChannels, PeerMesh
from server.resources import ResourceGuard
from server.uploads import Uploads

log = logging.getLogger(__name__)


class JobManager:
    """All jobs of one server process (participant ``me``): registry, uploads, peer mesh, batch runner."""

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
        self.insecure = insecure
        self.resources = ResourceGuard(config.limits, me)
        self.registry = JobRegistry(config, me, model=model, resources=self.resources)
        self.uploads = Uploads(self.registry, self.resources)
        self.mesh = PeerMesh(self.registry, channels, link_settings)
        self.runner = BatchRunner(self.registry, self.mesh, self.resources)

    @property
    def jobs(self) -> dict[str, Job]:
        return self.registry.jobs

    async def drain(self, grace_s: float, poll_s: float = 0.05) -> None:
        """Begin a shutdown: refuse new work and give running batches up to ``grace_s`` to finish and
        their results to be fetched.  Says in the log which jobs finished; :meth:`shutdown` aborts the rest.
        """
        self.registry.stopping = True
        running = {job.job_id: job.next_batch for job in self.registry.jobs.values() if job.running}
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
            jobs = [self.registry.jobs.get(job_id) for job_id in running]
            return any(job is not None and (job.running or job.unfetched) for job in jobs)

        while busy() and time.monotonic() < deadline:
            await asyncio.sleep(poll_s)
        for job_id, batch in running.items():
            job = self.registry.jobs.get(job_id)
            if job is not None and not job.running and job.next_batch > batch:
                log.info("shutdown: job %s finished batch %d before the server stopped", job_id, batch)

    def shutdown(self, reason: str) -> None:
        """Abort every job still open (peers are told why); each is named in the log."""
        grace = self.config.limits.shutdown_grace_s
        for job_id in list(self.registry.jobs):
            job = self.registry.jobs[job_id]
            if job.running:
                self.registry.abort(
                    job_id,
                    f"{reason}: batch {job.next_batch} did not finish within "
                    f"limits.shutdown_grace_s = {grace:g} s",
                )
            else:
                self.registry.abort(job_id, reason)
        self.runner.executor.shutdown(wait=False, cancel_futures=True)


__all__ = ["BatchResult", "Job", "JobManager", "JobSpec", "PeerChannels"]
