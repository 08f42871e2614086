"""Mutual TLS credentials, channel options and caller identities for every cluster process.

Identity is the name in a certificate (CN and DNS SAN), issued by the cluster's CA.  A TLS server here
always requires and verifies a client certificate (gRPC refuses the handshake otherwise, before any
RPC reaches the application); the application then checks the verified name against the configured
role (:mod:`server.authz`).  Clients pin the server's identity with ``grpc.ssl_target_name_override``:
the server must present the certificate of the participant configured at that position, whatever
its address.

``insecure`` mode (development only) has no TLS; callers then *claim* a name in the
``x-secp-identity`` header, which nothing verifies.  It is logged loudly by every process using it.
"""

from __future__ import annotations

import json
import logging
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from contract.cluster import ClusterConfig

IDENTITY_HEADER = "x-secp-identity"
#: Room for a frame's fields besides its tensor bytes (tags, shapes, ids are all short).
FRAME_OVERHEAD = 4096

log = logging.getLogger(__name__)


class CredentialError(RuntimeError):
    """A certificate or key file is missing, unreadable or unsafe."""


@dataclass(frozen=True)
class Credentials:
    """PEM bytes of the CA certificate and of one identity's certificate and key."""

    name: str
    ca: bytes
    cert: bytes
    key: bytes


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CredentialError(
            f"cannot read the {what} {path}: {exc.strerror} (create certificates with `secp-cluster certs`)"
        ) from None


def check_key_permissions(path: Path) -> None:
    """Refuse a private key that group or others may read or write."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise CredentialError(f"cannot read the private key {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CredentialError(
            f"private key {path} is accessible to other users (mode {stat.S_IMODE(mode):o}); "
            "run `chmod 600` on it"
        )


def check_public_file_permissions(path: Path, what: str) -> None:
    """Refuse a certificate that group or others may write: whoever can replace the CA certificate (or
    an identity's certificate) can make this process trust, or present, a certificate of their own."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return  # reading it reports the problem with its own message
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise CredentialError(
            f"{what} {path} is writable by other users (mode {stat.S_IMODE(mode):o}); run `chmod 644` on it"
        )


def load_credentials(
    config: ClusterConfig, name: str, cert: Path | None = None, key: Path | None = None
) -> Credentials:
    """The credentials of identity ``name`` from the configured TLS folder (or explicit files)."""
    cert = cert or config.tls.cert_path(name)
    key = key or config.tls.key_path(name)
    check_key_permissions(key)
    check_public_file_permissions(config.tls.ca_path(), "CA certificate")
    check_public_file_permissions(cert, f"certificate of {name}")
    return Credentials(
        name=name,
        ca=_read(config.tls.ca_path(), "CA certificate"),
        cert=_read(cert, f"certificate of {name}"),
        key=_read(key, f"private key of {name}"),
    )


def server_credentials(creds: Credentials) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(creds.key, creds.cert)], root_certificates=creds.ca, require_client_auth=True
    )


def channel_credentials(creds: Credentials) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=creds.ca, private_key=creds.key, certificate_chain=creds.cert
    )


def message_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


#: Calls that change nothing on a server, so that a second attempt is always safe: gRPC's own retry
#: policy resends them when the connection failed (UNAVAILABLE), with exponential backoff.
IDEMPOTENT_METHODS = (
    ("secp.party.v1.Party", "ServerInfo"),
    ("secp.party.v1.Party", "JobStatus"),
    ("secp.party.v1.Party", "FetchResult"),
    ("grpc.health.v1.Health", "Check"),
)
RETRY_POLICY = {
    "maxAttempts": 5,
    "initialBackoff": "0.2s",
    "maxBackoff": "5s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": service, "method": method} for service, method in IDEMPOTENT_METHODS],
                "retryPolicy": RETRY_POLICY,
            }
        ]
    }
)
#: A connection attempt may take this long (TCP, TLS and HTTP/2 settings: several round trips, and
#: slower still under a connection storm). gRPC reads it from ``grpc.min_reconnect_backoff_ms``, which is
#: therefore NOT set low for fast reconnects: at 100 ms every peer more than ~20 ms away was unreachable.
MIN_CONNECT_TIMEOUT_MS = 20_000
#: Keepalive: a ping every 10 s on an idle or busy link; the answer may queue behind a full socket
#: buffer on a slow WAN link, so it gets 20 s before the connection is declared dead.
KEEPALIVE_TIME_MS = 10_000
KEEPALIVE_TIMEOUT_MS = 20_000


def channel_options(server_name: str | None, max_message_bytes: int) -> list[tuple[str, object]]:
    """Options of a channel to a cluster server: identity pinning, message limits, connect timeout,
    keepalive, reconnect backoff and retries of idempotent calls (see the constants above)."""
    options: list[tuple[str, object]] = [
        *message_options(max_message_bytes),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", SERVICE_CONFIG),
        # reconnect quickly to a restarted server (the default backoff grows to 120 s), but give each
        # connection attempt its full time
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
        ("grpc.min_reconnect_backoff_ms", MIN_CONNECT_TIMEOUT_MS),
    ]
    if server_name is not None:
        options.append(("grpc.ssl_target_name_override", server_name))
    return options


def server_options(max_message_bytes: int) -> list[tuple[str, object]]:
    return [
        *message_options(max_message_bytes),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.http2.max_ping_strikes", 0),
    ]


def identity_metadata(name: str, insecure: bool) -> Sequence[tuple[str, str]] | None:
    """Call metadata: the claimed identity in insecure mode, nothing under TLS."""
    return ((IDENTITY_HEADER, name),) if insecure else None


def caller_names(context: grpc.ServicerContext | grpc.aio.ServicerContext, insecure: bool) -> list[str]:
    """The caller's verified certificate names (or, in insecure mode, its claimed name)."""
    if insecure:
        return [value for key, value in context.invocation_metadata() or () if key == IDENTITY_HEADER][:1]
    auth = context.auth_context() or {}
    if auth.get("transport_security_type") != [b"ssl"]:
        return []
    sans = auth.get("x509_subject_alternative_name") or []
    names = sans or auth.get("x509_common_name") or []
    return [n.decode("ascii", "replace") for n in names]


def warn_insecure(process: str) -> None:
    banner = "!" * 78
    log.warning(
        "\n%s\n%s runs WITHOUT TLS (--insecure): traffic is in the clear and caller identities are\n"
        "unverified claims. Use this only for local development, never with real data or models.\n%s",
        banner,
        process,
        banner,
    )
