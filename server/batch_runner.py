"""A server's batch runner: check an evaluation, run it with the peers, keep its result shares.

Evaluations run one at a time per job, in batch order, in a worker thread; the event loop keeps
serving other jobs and calls meanwhile.  :meth:`BatchRunner.plan` validates without changing state;
a failure *during* a batch aborts the job (see :meth:`server.job_registry.JobRegistry.abort`) and
raises an :class:`~server.errors.RpcError` whose message names the cause, never a value.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING

import grpc
import numpy as np
from pydantic import BaseModel

from mpc_core.ring import RING_DTYPE
from mpc_core.transport.base import ProtocolError, TransportClosed
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
from server.job_state import MAX_NDIM, BatchResult, Job, check_tensor_name
from server.programs import PlanError

if TYPE_CHECKING:
    from server.job_registry import JobRegistry
    from server.peer_mesh import PeerMesh
    from server.resources import ResourceGuard

log = logging.getLogger(__name__)


class BatchRunner:
    """Plans, runs and keeps the results of every job's batches on one server."""

    def __init__(self, registry: JobRegistry, mesh: PeerMesh, resources: ResourceGuard) -> None:
        self.registry = registry
        self.mesh = mesh
        self.resources = resources
        self.config = registry.config
        self.me = registry.me
        self.is_dealer = registry.is_dealer
        self.executor = ThreadPoolExecutor(
            max_workers=registry.config.limits.max_jobs, thread_name_prefix="job"
        )

    def plan(
        self,
        job: Job,
        batch: int,
        inputs: Mapping[str, tuple[int, ...]],
        params_json: str,
        staged: Mapping[str, np.ndarray] | None = None,
    ):
        """Validate an evaluation (no state changes): returns (params, output shapes).

        ``staged`` holds shares that arrived with the evaluation (``Generate``) and are not stored yet:
        they count as uploaded (and replace a stored share of the same name) for this check only.
        """
        staged = staged or {}
        self.registry.accepting("batches")
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
                share = staged[name] if name in staged else job.uploads.get(name)
                if share is None:
                    raise invalid(f"input {name!r} was not uploaded to job {job.job_id!r}")
                if share.shape[1:] != shape:
                    raise invalid(
                        f"input {name!r} is declared {shape} but its uploaded share has {share.shape[1:]}"
                    )
        try:
            params = job.program.parse_params(params_json)
            outputs = job.program.plan(dict(inputs), params, self.registry.model)
            keeps = job.program.state_bytes(dict(inputs), params, self.registry.model)
        except PlanError as exc:
            raise invalid(str(exc)) from None
        if keeps:
            self._check_kept_state(job, inputs, keeps)
        self.resources.check_memory("batch")
        return params, outputs

    def _check_kept_state(self, job: Job, inputs: Mapping[str, tuple[int, ...]], keeps: int) -> None:
        """Refuse a batch whose kept state (a cache) and inputs would exceed ``limits.max_job_bytes``.

        Counted from the declared shapes (a compute party's share bytes), so that every participant, the
        dealer included, reaches the same answer before anything runs.
        """
        from mpc_core.suites import suite_class

        elements = sum(int(np.prod(shape)) for shape in inputs.values())
        held = suite_class(job.spec.suite).share_bytes(elements)
        limit = self.config.limits.max_job_bytes
        if held + keeps > limit:
            raise exhausted(
                f"job {job.job_id!r} would keep {keeps} bytes of shares (its {job.program.name} cache) "
                f"beside its {held} bytes of inputs, above limits.max_job_bytes = {limit}"
            )

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
                await self.mesh.connect(job)
            loop = asyncio.get_running_loop()
            run = partial(self._run_batch, job, batch, dict(inputs), shares, params, dict(outputs))
            result = await loop.run_in_executor(self.executor, run)
        except asyncio.CancelledError:
            self.registry.abort(
                job.job_id, "the data owner's evaluate call was cancelled (deadline exceeded or client gone)"
            )
            raise
        except RpcError as exc:
            self.registry.abort(job.job_id, exc.message)
            raise
        except TransportClosed as exc:
            reason = job.aborted or str(exc)
            self.registry.abort(job.job_id, reason)
            raise unavailable(f"job {job.job_id!r} aborted on participant {self.me}: {reason}") from None
        except ProtocolError as exc:
            self.registry.abort(job.job_id, f"participants diverged: {exc}")
            raise RpcError(
                grpc.StatusCode.ABORTED, f"job {job.job_id!r} aborted: participants diverged: {exc}"
            ) from None
        except Exception as exc:
            detail = f"{type(exc).__name__}: {str(exc)[:300]}"
            log.exception("job %s failed in batch %d", job.job_id, batch)
            self.registry.abort(job.job_id, f"the computation failed on participant {self.me} ({detail})")
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
                job.model_tensors = self.registry.model.wrap(ctx)
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
