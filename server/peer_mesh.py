"""A server's peer mesh: one channel per peer server, and each job's links to its peers.

A job's links are set up at its first evaluation (the lower-numbered participant opens each stream)
and kept for the job's lifetime.  An incoming stream's hello is checked against the job's spec digest
before it is attached; a link that fails aborts its job on this server (the peers are told why).
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import TYPE_CHECKING

import grpc

from contract.cluster import ClusterConfig
from mpc_core.context import PARTICIPANTS
from mpc_core.transport.grpc_transport import (
    GrpcTransport,
    LinkRefusedError,
    LinkSettings,
    PeerLink,
    open_link,
)
from server.errors import RpcError, invalid, precondition
from server.job_state import Job

if TYPE_CHECKING:
    from server.job_registry import JobRegistry

log = logging.getLogger(__name__)


class PeerMesh:
    """Every job's peer links on one server (participant ``registry.me``)."""

    def __init__(self, registry: JobRegistry, channels: PeerChannels, link_settings: LinkSettings) -> None:
        self.registry = registry
        self.config = registry.config
        self.me = registry.me
        self.channels = channels
        self.link_settings = link_settings

    async def connect(self, job: Job) -> None:
        timeout = self.config.limits.connect_timeout_s
        on_failure = partial(self.link_failed, job.job_id)
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
        job = self.registry.get(job_id)
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
        if job.aborted or self.registry.jobs.get(job.job_id) is not job:
            link.close(f"job {job.job_id!r} was aborted on participant {self.me}", notify=True)
            return
        waiter = job.incoming.setdefault(link.peer, asyncio.get_running_loop().create_future())
        if waiter.done():
            link.close("duplicate stream", notify=True)
            return
        waiter.set_result(link)

    def link_failed(self, job_id: str, peer: int, reason: str) -> None:
        """A peer stream of ``job_id`` broke (either side's handler): abort the job if still open."""
        if job_id in self.registry.jobs:
            log.warning("job %s: link to participant %d failed: %s", job_id, peer, reason)
            self.registry.abort(job_id, reason)


class PeerChannels:
    """One gRPC channel per peer server, created on first use and shared by all jobs' streams."""

    def __init__(self, config: ClusterConfig, me: int, credentials, insecure: bool) -> None:
        from contract.channels import channel_credentials, channel_options, identity_metadata

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
