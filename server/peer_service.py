"""The peer API (``secp.peer.v1.Peer``): accepting a job's stream from a lower-numbered participant.

The caller must present the certificate of a configured server, its Hello must name that same
participant, a job open here with the same spec digest, and no stream may exist yet for that pair and
job.  Then the stream becomes the job's link to that participant and the handler stays alive for as
long as the link does.  A stream that breaks or is cancelled aborts the job here (survivors drop state).
"""

from __future__ import annotations

import asyncio
import logging

import grpc
import grpc.aio

from contract.cluster import JOB_ID_PATTERN
from mpc_core.transport.grpc_transport import LinkSettings, accept_link
from proto.api import peer_pb2_grpc
from server.authz import Authorizer
from server.errors import RpcError, invalid
from server.jobs import JobManager
from server.wire import MalformedMessage

log = logging.getLogger(__name__)


class PeerService(peer_pb2_grpc.PeerServicer):
    def __init__(self, manager: JobManager, authz: Authorizer, settings: LinkSettings) -> None:
        self.manager = manager
        self.authz = authz
        self.settings = settings

    async def Exchange(self, request_iterator, context: grpc.aio.ServicerContext):  # noqa: N802 - gRPC's name
        try:
            peer = self.authz.peer(context)
            timeout = self.manager.config.limits.connect_timeout_s
            try:
                first = await asyncio.wait_for(context.read(), timeout)
            except TimeoutError:
                raise RpcError(grpc.StatusCode.DEADLINE_EXCEEDED, f"no hello within {timeout:g} s") from None
            if isinstance(first, MalformedMessage):
                raise first.error()
            if first is grpc.aio.EOF or not first.HasField("hello"):
                raise invalid("a peer stream must start with a hello frame")
            hello = first.hello
            if hello.participant != peer:
                raise RpcError(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"participant {peer}'s certificate may not speak for participant {hello.participant}",
                )
            if not JOB_ID_PATTERN.fullmatch(hello.job_id):
                raise invalid("malformed job id in hello")
            job = self.manager.mesh.accept_target(hello.job_id, peer, hello.spec_digest)
        except RpcError as exc:
            await context.abort(exc.code, exc.message)
            return
        on_failure = self._on_failure(hello.job_id)
        link = await accept_link(
            context, hello, me=self.manager.me, settings=self.settings, on_failure=on_failure
        )
        self.manager.mesh.attach_incoming(job, link)
        log.info("job %s: stream from participant %d accepted", hello.job_id, peer)
        try:
            await link.wait_closed()
        except asyncio.CancelledError:
            # The RPC ended under us (the peer's process or connection went away).
            self.manager.mesh.link_failed(hello.job_id, peer, f"participant {peer} disconnected")
            link.close(f"participant {peer} disconnected", notify=False)
            raise
        reason = link.closed_reason or ""
        if link.malformed:
            # The caller sent frames that are not a well-formed tensor stream: say so in the status
            # (otherwise the call would end OK after the job was aborted here).
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"job {hello.job_id!r} aborted on participant {self.manager.me}: {reason}",
            )

    def _on_failure(self, job_id: str):
        def failed(peer: int, reason: str) -> None:
            self.manager.mesh.link_failed(job_id, peer, reason)

        return failed
