"""The party API (``secp.party.v1.Party``): the data owner's calls into one server.

Every handler first checks the caller (only the registered data owner), then validates the request
completely, and only then touches state (:mod:`server.jobs`).  Errors end the call with the status
code of the :class:`~server.errors.RpcError`; the server keeps serving everything else.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Callable

import grpc
import grpc.aio

from proto.api import party_pb2, party_pb2_grpc
from proto.shares import ShareAssembler, ShareStreamError, share_chunks
from server.authz import Authorizer
from server.errors import RpcError, exhausted, invalid, shown
from server.job_state import JobSpec
from server.jobs import JobManager
from server.programs import PROGRAMS
from server.wire import MalformedMessage

log = logging.getLogger(__name__)


def _guard(method: Callable) -> Callable:
    """Turn RpcError into the call's status (unary handlers)."""

    @functools.wraps(method)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        try:
            if isinstance(request, MalformedMessage):
                self.authz.data_owner(context)
                raise request.error()
            return await method(self, request, context)
        except RpcError as exc:
            await context.abort(exc.code, exc.message)

    return wrapper


def _shape(values) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


class PartyService(party_pb2_grpc.PartyServicer):
    def __init__(self, manager: JobManager, authz: Authorizer) -> None:
        self.manager = manager
        self.authz = authz
        self.config = manager.config

    @_guard
    async def ServerInfo(self, request, context):  # noqa: N802 - gRPC's name
        self.authz.data_owner(context)
        registry = self.manager.registry
        return party_pb2.ServerInfoReply(
            cluster=self.config.name,
            suite=self.config.suite,
            participant=registry.me,
            role="dealer" if registry.is_dealer else "party",
            model_digest=registry.model.digest if registry.model else "",
            open_jobs=len(registry.jobs),
            programs=sorted(PROGRAMS),
            max_message_bytes=self.config.limits.max_message_bytes,
        )

    @_guard
    async def OpenJob(self, request, context):  # noqa: N802 - gRPC's name
        self.authz.data_owner(context)
        spec = request.spec
        job = self.manager.registry.open(
            request.job_id,
            JobSpec(
                program=spec.program,
                suite=spec.suite,
                frac_bits=spec.frac_bits,
                model_digest=spec.model_digest,
                test_seed=spec.test_seed,
            ),
        )
        return party_pb2.OpenJobReply(job_id=job.job_id, participant=self.manager.me)

    async def Upload(self, request_iterator: AsyncIterator, context):  # noqa: N802 - gRPC's name
        assembler: ShareAssembler | None = None
        job = None
        reserved = 0  # bytes counted against the limits while this upload is received
        try:
            self.authz.data_owner(context)
            async for chunk in request_iterator:
                if isinstance(chunk, MalformedMessage):
                    raise chunk.error()
                if assembler is None:
                    if not chunk.HasField("header"):
                        raise invalid("the first upload chunk must carry a header")
                    h = chunk.header
                    job = self.manager.uploads.check_header(
                        h.job_id, h.name, h.dtype, _shape(h.shape), h.nbytes
                    )
                    self.manager.uploads.reserve(job, h.nbytes)
                    reserved = h.nbytes
                    try:
                        assembler = ShareAssembler(h)
                    except MemoryError:  # a host with strict overcommit cannot even reserve the buffer
                        raise exhausted(
                            f"participant {self.manager.me} cannot allocate {h.nbytes} bytes for this upload"
                        ) from None
                elif chunk.HasField("header"):
                    raise invalid("only the first upload chunk may carry a header")
                try:
                    assembler.feed(chunk.data)
                except ShareStreamError as exc:
                    raise invalid(str(exc)) from None
            if assembler is None:
                raise invalid("an upload needs at least one chunk with a header")
            try:
                share = assembler.finish()
            except ShareStreamError as exc:
                raise invalid(str(exc)) from None
            self.manager.uploads.release(job, reserved)
            reserved = 0
            self.manager.uploads.store(job, assembler.header.name, share)
            return party_pb2.UploadReply(name=assembler.header.name, bytes_received=share.nbytes)
        except RpcError as exc:
            if assembler is not None:  # before the abort: its traceback would keep the buffer alive
                assembler.discard()
                assembler = None
            if job is not None and reserved:
                self.manager.uploads.release(job, reserved)
                reserved = 0
            await context.abort(exc.code, exc.message)
        finally:
            if assembler is not None and reserved:  # cancelled or failed otherwise mid-stream
                assembler.discard()
            if job is not None and reserved:
                self.manager.uploads.release(job, reserved)

    @_guard
    async def Evaluate(self, request, context):  # noqa: N802 - gRPC's name
        self.authz.data_owner(context)
        job = self.manager.registry.get(request.job_id)
        inputs = _declared_inputs(request)
        params, outputs = self.manager.runner.plan(job, request.batch, inputs, request.params_json)
        start = time.perf_counter()
        result = await self.manager.runner.evaluate(job, request.batch, inputs, params, outputs)
        log.info("job %s batch %d done in %.3f s", job.job_id, request.batch, time.perf_counter() - start)
        return _evaluate_reply(result)

    async def FetchResult(self, request, context):  # noqa: N802 - gRPC's name
        try:
            self.authz.data_owner(context)
            if isinstance(request, MalformedMessage):
                raise request.error()
            job = self.manager.registry.get(request.job_id)
            share, scale = self.manager.runner.fetch(job, request.batch, request.name)
        except RpcError as exc:
            await context.abort(exc.code, exc.message)
            return
        header = party_pb2.ShareHeader(
            job_id=job.job_id,
            name=request.name,
            dtype="<u8",
            shape=share.shape,
            nbytes=share.nbytes,
            batch=request.batch,
            scale=scale,
        )
        for chunk in share_chunks(header, share, self.config.limits.max_message_bytes, party_pb2.ShareChunk):
            await context.write(chunk)
        self.manager.runner.fetched(job, request.batch, request.name)

    @_guard
    async def JobStatus(self, request, context):  # noqa: N802 - gRPC's name
        self.authz.data_owner(context)
        return _status_reply(self.manager.registry.get(request.job_id))

    @_guard
    async def CloseJob(self, request, context):  # noqa: N802 - gRPC's name
        self.authz.data_owner(context)
        self.manager.registry.close(request.job_id)
        return party_pb2.CloseJobReply(job_id=request.job_id)

    async def Generate(self, request_iterator: AsyncIterator, context):  # noqa: N802 - gRPC's name
        """One generation in one call: inline shares, then the evaluation; replies with the evaluation,
        this party's result shares and the job's statistics.  Every share header and the whole
        evaluation are checked before anything is stored, so a refusal leaves the job as it was."""
        staged: dict[str, object] = {}
        job = None
        reserved = 0
        try:
            self.authz.data_owner(context)
            job, request, reserved = await self._receive_generation(request_iterator, staged)
            inputs = _declared_inputs(request)
            params, outputs = self.manager.runner.plan(
                job, request.batch, inputs, request.params_json, staged=staged
            )
            self.manager.uploads.release(job, reserved)
            reserved = 0
            for name, share in staged.items():
                self.manager.uploads.store(job, name, share)
            staged.clear()
            start = time.perf_counter()
            result = await self.manager.runner.evaluate(job, request.batch, inputs, params, outputs)
            log.info("job %s batch %d done in %.3f s", job.job_id, request.batch, time.perf_counter() - start)
        except RpcError as exc:
            staged.clear()
            if job is not None and reserved:
                self.manager.uploads.release(job, reserved)
                reserved = 0
            await context.abort(exc.code, exc.message)
            return
        finally:
            staged.clear()
            if job is not None and reserved:
                self.manager.uploads.release(job, reserved)
        await context.write(party_pb2.GenerateReply(evaluated=_evaluate_reply(result)))
        limit = self.config.limits.max_message_bytes
        for name, share in result.shares.items():
            header = party_pb2.ShareHeader(
                job_id=job.job_id,
                name=name,
                dtype="<u8",
                shape=share.shape,
                nbytes=share.nbytes,
                batch=result.batch,
                scale=result.outputs[name][1],
            )
            for chunk in share_chunks(header, share, limit, party_pb2.ShareChunk):
                await context.write(party_pb2.GenerateReply(result=chunk))
            self.manager.runner.fetched(job, result.batch, name)
        await context.write(party_pb2.GenerateReply(status=_status_reply(job)))

    async def _receive_generation(self, request_iterator: AsyncIterator, staged: dict):
        """Read a Generate request: (job, evaluation, reserved bytes); the shares go to ``staged``."""
        uploads = self.manager.uploads
        job = None
        assembler: ShareAssembler | None = None
        evaluate = None
        reserved = 0

        def finish() -> None:
            try:
                staged[assembler.header.name] = assembler.finish()
            except ShareStreamError as exc:
                raise invalid(str(exc)) from None

        try:
            async for message in request_iterator:
                if isinstance(message, MalformedMessage):
                    raise message.error()
                if evaluate is not None:
                    raise invalid("the evaluation must be the last message of a generation")
                part = message.WhichOneof("part")
                if part == "evaluate":
                    evaluate = message.evaluate
                    if assembler is not None:
                        finish()
                        assembler = None
                    continue
                if part != "share":
                    raise invalid("a generation message must carry a share chunk or the evaluation")
                chunk = message.share
                if chunk.HasField("header"):
                    if assembler is not None:
                        finish()
                    h = chunk.header
                    if job is not None and h.job_id != job.job_id:
                        raise invalid("every share of a generation must name the same job")
                    if h.name in staged or (assembler is not None and assembler.header.name == h.name):
                        raise invalid(f"share {shown(h.name)} is sent twice in one generation")
                    job = uploads.check_header(h.job_id, h.name, h.dtype, _shape(h.shape), h.nbytes)
                    uploads.reserve(job, h.nbytes)
                    reserved += h.nbytes
                    try:
                        assembler = ShareAssembler(h)
                    except MemoryError:
                        raise exhausted(
                            f"participant {self.manager.me} cannot allocate {h.nbytes} bytes for this share"
                        ) from None
                elif assembler is None:
                    raise invalid("the first chunk of each share must carry its header")
                try:
                    assembler.feed(chunk.data)
                except ShareStreamError as exc:
                    raise invalid(str(exc)) from None
            if evaluate is None:
                raise invalid("a generation must end with its evaluation")
            if job is None:
                job = self.manager.registry.get(evaluate.job_id)
            elif evaluate.job_id != job.job_id:
                raise invalid("the evaluation must name the job its shares were sent to")
            return job, evaluate, reserved
        except BaseException:
            if assembler is not None:  # a refused stream must not keep its buffer alive through a traceback
                assembler.discard()
            staged.clear()
            if job is not None and reserved:
                uploads.release(job, reserved)
            raise


def _declared_inputs(request) -> dict[str, tuple[int, ...]]:
    inputs: dict[str, tuple[int, ...]] = {}
    for info in request.inputs:
        if info.name in inputs:
            raise invalid(f"input {shown(info.name)} is declared twice")
        inputs[info.name] = _shape(info.shape)
    return inputs


def _evaluate_reply(result) -> party_pb2.EvaluateReply:
    return party_pb2.EvaluateReply(
        batch=result.batch,
        outputs=[
            party_pb2.TensorInfo(name=name, shape=shape, scale=scale)
            for name, (shape, scale) in result.outputs.items()
        ],
        seconds=result.seconds,
    )


def _status_reply(job) -> party_pb2.JobStatusReply:
    """The job's state and statistics: per-op traffic and time, and what the wire carried."""
    reply = party_pb2.JobStatusReply(
        job_id=job.job_id,
        state="running" if job.running else ("idle" if job.next_batch else "open"),
        batches_done=job.next_batch,
        uploaded=[party_pb2.TensorInfo(name=n, shape=s.shape[1:]) for n, s in job.uploads.items()],
        evaluate_seconds=job.evaluate_seconds,
    )
    if job.ctx is not None:
        for name, stats in job.ctx.stats.snapshot().items():
            reply.ops.append(
                party_pb2.OpMetrics(
                    name=name,
                    bytes=int(stats["bytes"]),
                    messages=int(stats["messages"]),
                    rounds=int(stats["rounds"]),
                    seconds=float(stats["seconds"]),
                )
            )
    if job.transport is not None:
        wire = job.transport.wire_stats()
        reply.wire.CopyFrom(
            party_pb2.WireMetrics(
                bytes_sent=wire.bytes_sent,
                bytes_received=wire.bytes_received,
                frames_sent=wire.frames_sent,
                frames_received=wire.frames_received,
                messages_sent=wire.messages_sent,
                shaping_delay_s=wire.shaping_delay_s,
            )
        )
    return reply
