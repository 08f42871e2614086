"""A server's uploads: validate a share's header before its bytes are read, count it, store it.

Every check comes before any state changes (a refused upload leaves the job as it was); the bytes of
an accepted header are reserved against the job's and the server's limits until the share is stored
or the stream fails.  Nothing here reads or logs a share's value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from server.errors import exhausted, invalid, not_found, precondition, shown_shape
from server.job_state import MAX_NDIM, Job, check_tensor_name

if TYPE_CHECKING:
    from server.job_registry import JobRegistry
    from server.resources import ResourceGuard


class Uploads:
    """The upload desk of one server: header checks, byte reservations, storing a finished share."""

    def __init__(self, registry: JobRegistry, resources: ResourceGuard) -> None:
        self.registry = registry
        self.config = registry.config
        self.is_dealer = registry.is_dealer
        self.slots = registry.slots
        self.resources = resources

    def check_header(self, job_id: str, name: str, dtype: str, shape: tuple[int, ...], nbytes: int) -> Job:
        """Validate an upload before reading its data; returns the job (no state changes)."""
        job = self.registry.get(job_id)
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
        self.registry.accepting("uploads")
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

    def reserve(self, job: Job, nbytes: int) -> None:
        """Count an accepted upload header against the server's limits until :meth:`release`."""
        self.resources.check_server_bytes(self.registry.held_bytes, nbytes)
        in_flight = sum(j.in_flight_bytes for j in self.registry.jobs.values())
        self.resources.check_memory("upload", adding=nbytes, reserved=in_flight)
        job.in_flight_bytes += nbytes

    def release(self, job: Job, nbytes: int) -> None:
        job.in_flight_bytes = max(0, job.in_flight_bytes - nbytes)

    @staticmethod
    def _not_in_running_batch(job: Job, name: str) -> None:
        """An input of the batch that runs (or waits for its peers) cannot be replaced until it ends."""
        if job.running and name in job.batch_inputs:
            raise precondition(
                f"input {name!r} of job {job.job_id!r} is used by batch {job.next_batch}, which is running "
                "or waiting for the other participants; upload it again after that batch"
            )

    def store(self, job: Job, name: str, share: np.ndarray) -> None:
        if job.aborted:
            raise not_found(f"job {job.job_id!r} was aborted during the upload: {job.aborted}")
        self._not_in_running_batch(job, name)  # a batch may have started while the data arrived
        replaced = job.uploads.get(name)
        job.upload_bytes += share.nbytes - (replaced.nbytes if replaced is not None else 0)
        job.uploads[name] = share
