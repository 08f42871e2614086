"""One server process: load its own model share, serve the party, peer and health APIs until stopped.

``serve`` runs on an asyncio event loop (gRPC's asyncio API: about 0.33 ms per round trip on a long-lived
stream here, half the synchronous API's); each job's computation runs in a worker thread.  SIGTERM or
SIGINT stop it gracefully: health turns NOT_SERVING, new jobs, uploads and batches are refused, running
batches get ``limits.shutdown_grace_s`` to finish (and their results to be fetched), then every open job
is aborted (peers are told why; the log names each job and whether it finished or was aborted), and the
server stops after a short grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from contract.channels import load_credentials, server_credentials, server_options, warn_insecure
from contract.cluster import ClusterConfig
from mpc_core.transport.grpc_transport import LinkSettings, network_shape
from proto.api import party_pb2, peer_pb2
from server.authz import Authorizer
from server.jobs import JobManager, PeerChannels
from server.model_store import LoadedModel, load_model
from server.party_service import PartyService
from server.peer_service import PeerService
from server.wire import add_service

log = logging.getLogger(__name__)

SERVICES = ("secp.party.v1.Party", "secp.peer.v1.Peer")
REAP_INTERVAL_S = 30.0


def link_settings(config: ClusterConfig) -> LinkSettings:
    net = config.network
    return LinkSettings(
        max_message_bytes=config.limits.max_message_bytes,
        max_tensor_bytes=config.limits.max_peer_tensor_bytes,
        recv_timeout_s=config.limits.peer_timeout_s,
        shape=network_shape(net.profile, net.bandwidth_mbps, net.latency_ms),
    )


def load_own_model(config: ClusterConfig, participant: int) -> LoadedModel | None:
    if config.model is None:
        return None
    holds_shares = config.party(participant).role != "dealer"
    return load_model(
        config.model,
        participant=participant,
        holds_shares=holds_shares,
        suite=config.suite,
        frac_bits=config.frac_bits,
    )


async def serve(
    config: ClusterConfig, participant: int, *, insecure: bool = False, stop: asyncio.Event | None = None
) -> None:
    """Run participant ``participant``'s server until ``stop`` is set or a signal arrives."""
    me = config.party(participant)
    if insecure:
        warn_insecure(f"secp-server {me.name}")
        credentials = None
    else:
        credentials = load_credentials(config, me.name)
    model = load_own_model(config, participant)
    if model is not None:
        kind = "manifest only" if model.shares is None else f"{len(model.shares)} share tensors"
        log.info("model %s loaded (%s, manifest sha256 %s)", config.model, kind, model.digest[:16])
    settings = link_settings(config)
    if settings.shape.active:
        log.info(
            "peer traffic shaped as %s: %s bit/s, %.3f ms",
            settings.shape.name,
            settings.shape.bandwidth_bps,
            settings.shape.latency_s * 1e3,
        )

    channels = PeerChannels(config, participant, credentials, insecure)
    manager = JobManager(
        config, participant, model=model, channels=channels, insecure=insecure, link_settings=settings
    )
    authz = Authorizer(config, participant, insecure)
    server = grpc.aio.server(options=server_options(config.limits.max_message_bytes))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    add_service(server, party_pb2.DESCRIPTOR.services_by_name["Party"], PartyService(manager, authz))
    add_service(server, peer_pb2.DESCRIPTOR.services_by_name["Peer"], PeerService(manager, authz, settings))
    try:
        if insecure:
            port = server.add_insecure_port(me.bind)
        else:
            port = server.add_secure_port(me.bind, server_credentials(credentials))
    except RuntimeError:  # grpc's "Failed to bind"
        port = 0
    if port == 0:
        raise OSError(f"cannot listen on {me.bind} (address in use or not local)")
    await server.start()
    for service in ("", *SERVICES):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    role = "dealer" if me.role == "dealer" else f"party {participant}"
    log.info(
        "%s (%s) serving %s cluster %r on %s%s",
        me.name,
        role,
        config.suite,
        config.name,
        me.bind,
        " WITHOUT TLS" if insecure else " with mutual TLS",
    )

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    reaper = loop.create_task(_reap(manager, stop))
    try:
        await stop.wait()
    finally:
        log.info("%s stopping: %d open job(s)", me.name, len(manager.jobs))
        await health_servicer.enter_graceful_shutdown()
        await manager.drain(config.limits.shutdown_grace_s)
        manager.shutdown("the server is shutting down")
        reaper.cancel()
        await asyncio.sleep(0.2)  # let the abort frames reach the peers
        await server.stop(grace=2.0)
        await channels.close()
        log.info("%s stopped", me.name)


async def _reap(manager: JobManager, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await asyncio.sleep(REAP_INTERVAL_S)
        manager.registry.reap_idle()
