"""Access control of a real cluster: who may call which API, and unsafe credential files.

Complements tests/test_cluster_security.py (which checks individual refusals and their messages) with
the whole matrix: every caller identity (the data owner, each server, a certificate of the cluster's CA
that is not in the configuration, the data owner's name under another CA, an expired and a not yet
valid certificate, no certificate) against every participant and both APIs, under mutual TLS; the same
roles with claimed identities in ``--insecure`` mode; and servers and clients refusing to start with a
private key others may read or a certificate others may write.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from security_report import record

from cluster_ops.certs import create_authority, issue, load_authority, write_private
from cluster_ops.launcher import LocalCluster
from cluster_ops.testing import running_cluster, write_test_cluster
from contract.channels import CredentialError, channel_options
from contract.cluster import load_config
from data_owner.client import ClusterClient
from mpc_core.ring import FixedPoint
from proto.api import party_pb2, party_pb2_grpc, peer_pb2, peer_pb2_grpc
from server.jobs import JobSpec

pytestmark = [pytest.mark.security, pytest.mark.timeout(180)]

Code = grpc.StatusCode
FP = FixedPoint()
SERVERS = {0: "p0", 1: "p1", 2: "dealer"}
# Callers whose certificate the TLS handshake refuses (gRPC reports UNAVAILABLE before any RPC).
UNVERIFIABLE = ("no-certificate", "rogue-owner", "expired-owner", "future-owner")


def _save(certs: Path, label: str, pair: tuple[bytes, bytes]) -> None:
    (certs / f"{label}.pem").write_bytes(pair[0])
    write_private(certs / f"{label}.key", pair[1])


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Iterator[tuple]:
    folder = tmp_path_factory.mktemp("access")
    with running_cluster(folder, "2pc") as (config, _), ClusterClient(config) as client:
        certs = config.tls.dir
        authority = load_authority(certs / "ca.pem", certs / "ca.key")
        owner = config.data_owner.name
        now = dt.datetime.now(dt.UTC)
        _save(certs, "mallory", issue(authority, "mallory"))
        _save(certs, "rogue-owner", issue(create_authority("rogue CA"), owner))
        _save(
            certs,
            "expired-owner",
            issue(authority, owner, server=False, valid_from=now - dt.timedelta(days=30), days=29),
        )
        _save(
            certs,
            "future-owner",
            issue(authority, owner, server=False, valid_from=now + dt.timedelta(days=1), days=29),
        )
        job = client.open_job("affine")
        rng = np.random.default_rng(0)
        x, w, b = rng.normal(size=(2, 3)), rng.normal(size=(3, 2)), rng.normal(size=2)
        for name, value in {"x": x, "w": w, "b": b}.items():
            job.upload(name, FP.encode(value))
        yield config, client, job, x @ w + b


def _channel(config, target: int, caller: str) -> grpc.Channel:
    tls = config.tls
    label = {"owner-name": config.data_owner.name}.get(caller, caller)
    with_cert = caller != "no-certificate"
    creds = grpc.ssl_channel_credentials(
        root_certificates=tls.ca_path().read_bytes(),
        private_key=(tls.dir / f"{label}.key").read_bytes() if with_cert else None,
        certificate_chain=(tls.dir / f"{label}.pem").read_bytes() if with_cert else None,
    )
    return grpc.secure_channel(
        config.party(target).address, creds, options=channel_options(SERVERS[target], 1 << 20)
    )


def _code(call: Callable[[], object]) -> tuple[Code, str]:
    try:
        result = call()
        if hasattr(result, "__iter__") and not isinstance(result, party_pb2.ServerInfoReply):
            for _ in result:
                pass
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return Code.OK, ""


def _expected_party(caller: str) -> Code:
    if caller in UNVERIFIABLE:
        return Code.UNAVAILABLE
    return Code.OK if caller == "owner" else Code.PERMISSION_DENIED


def _expected_peer(caller: str, target: int, claimed: int | None) -> Code:
    """A hello naming an unknown job: NOT_FOUND means the caller was let through to the job lookup."""
    if caller in UNVERIFIABLE:
        return Code.UNAVAILABLE
    number = {"p0": 0, "p1": 1, "dealer": 2}.get(caller)
    if number is None or claimed != number or number == target:
        return Code.PERMISSION_DENIED
    if number > target:
        return Code.INVALID_ARGUMENT  # the lower-numbered participant opens each stream
    return Code.NOT_FOUND


CALLERS = ("owner", "p0", "p1", "dealer", "mallory", *UNVERIFIABLE)


@pytest.mark.slow  # over 20 s: runs in make test, not in make test-fast
def test_every_caller_against_every_server_and_api(env):
    config, client, job, expected = env
    before = {p: info.open_jobs for p, info in client.server_info().items()}
    digest = JobSpec(program="affine", suite="2pc", frac_bits=16).digest("no-such-job")
    wrong: list[str] = []
    cases = 0
    for caller in CALLERS:
        for target in SERVERS:
            channel = _channel(config, target, caller)
            party = party_pb2_grpc.PartyStub(channel)
            calls = {
                "ServerInfo": lambda party=party: party.ServerInfo(party_pb2.ServerInfoRequest(), timeout=5),
                "JobStatus": lambda party=party: party.JobStatus(
                    party_pb2.JobRef(job_id=job.job_id), timeout=5
                ),
                "CloseJob": lambda party=party: party.CloseJob(
                    party_pb2.JobRef(job_id="no-such-job"), timeout=5
                ),
            }
            for method, call in calls.items():
                cases += 1
                code, details = _code(call)
                want = _expected_party(caller)
                if method == "CloseJob" and want == Code.OK:
                    want = Code.NOT_FOUND  # let through, and the job does not exist
                if code != want:
                    wrong.append(
                        f"{caller} -> {target} {method}: {code.name} ({details}), expected {want.name}"
                    )
            peer = peer_pb2_grpc.PeerStub(channel)
            for claimed in (0, 1, 2):
                cases += 1
                hello = peer_pb2.PeerFrame(
                    hello=peer_pb2.Hello(job_id="no-such-job", participant=claimed, spec_digest=digest)
                )
                code, details = _code(lambda peer=peer, hello=hello: peer.Exchange(iter([hello]), timeout=5))
                want = _expected_peer(caller, target, claimed)
                if code != want:
                    wrong.append(
                        f"{caller} -> {target} Exchange as {claimed}: {code.name} ({details}), "
                        f"expected {want.name}"
                    )
            channel.close()
    record("access matrix (callers x servers x APIs, mutual TLS)", cases, len(wrong))
    assert not wrong, "\n".join(wrong)
    assert {p: info.open_jobs for p, info in client.server_info().items()} == before
    job.evaluate()
    assert np.allclose(job.reveal_float("y"), expected, atol=1e-3)


def test_insecure_mode_checks_claimed_identities(tmp_path):
    """Without TLS the caller's claimed name is still checked against the roles (and its absence refused)."""
    with running_cluster(tmp_path, "2pc", insecure=True) as (config, _):
        channel = grpc.insecure_channel(config.party(1).address)
        party, peer = party_pb2_grpc.PartyStub(channel), peer_pb2_grpc.PeerStub(channel)
        hello = peer_pb2.PeerFrame(hello=peer_pb2.Hello(job_id="j", participant=0, spec_digest=b"d"))

        def as_(name: str | None) -> list[tuple[str, str]] | None:
            return None if name is None else [("x-secp-identity", name)]

        cases = {
            ("party", None): (
                Code.UNAUTHENTICATED,
                lambda md: party.ServerInfo(party_pb2.ServerInfoRequest(), timeout=5, metadata=md),
            ),
            ("party", "p0"): (
                Code.PERMISSION_DENIED,
                lambda md: party.ServerInfo(party_pb2.ServerInfoRequest(), timeout=5, metadata=md),
            ),
            ("party", "owner"): (
                Code.OK,
                lambda md: party.ServerInfo(party_pb2.ServerInfoRequest(), timeout=5, metadata=md),
            ),
            ("peer", None): (
                Code.UNAUTHENTICATED,
                lambda md: peer.Exchange(iter([hello]), timeout=5, metadata=md),
            ),
            ("peer", "owner"): (
                Code.PERMISSION_DENIED,
                lambda md: peer.Exchange(iter([hello]), timeout=5, metadata=md),
            ),
            ("peer", "mallory"): (
                Code.PERMISSION_DENIED,
                lambda md: peer.Exchange(iter([hello]), timeout=5, metadata=md),
            ),
            ("peer", "p0"): (Code.NOT_FOUND, lambda md: peer.Exchange(iter([hello]), timeout=5, metadata=md)),
        }
        wrong = []
        for (api, name), (want, call) in cases.items():
            code, details = _code(lambda call=call, name=name: call(as_(name)))
            if code != want:
                wrong.append(f"{api} as {name}: {code.name} ({details}), expected {want.name}")
        channel.close()
    record("access in --insecure mode (claimed identities)", len(cases), len(wrong))
    assert not wrong, "\n".join(wrong)


# ---------------------------------------------------------------------------------------- file permissions
UNSAFE = {
    "key readable by group": ("p0.key", 0o640, "private key", "accessible to other users"),
    "key readable by others": ("p0.key", 0o604, "private key", "accessible to other users"),
    "key writable by group": ("p0.key", 0o620, "private key", "accessible to other users"),
    "certificate writable by others": ("p0.pem", 0o646, "certificate of p0", "writable by other users"),
    "CA certificate writable by group": ("ca.pem", 0o664, "CA certificate", "writable by other users"),
}


def test_servers_refuse_unsafe_credential_files_at_start(tmp_path):
    """Each case: P0 started with one unsafe file exits at once (code 2) saying which file and why."""
    started = {}
    for case, (name, mode, _, _) in UNSAFE.items():
        folder = tmp_path / case.replace(" ", "-")
        path = write_test_cluster(folder, "2pc")
        os.chmod(folder / "certs" / name, mode)
        cluster = LocalCluster(load_config(path), path)
        started[case] = (cluster, cluster.start_one(0), folder / "certs" / name)
    wrong = []
    for case, (cluster, proc, file) in started.items():
        _, mode, what, why = UNSAFE[case]
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            cluster.stop()
            wrong.append(f"{case}: the server started")
            continue
        log = cluster.log_path(0).read_text()
        message = f"cannot start: {what} {file} "
        if code != 2 or message not in log or why not in log or f"mode {mode:o}" not in log:
            wrong.append(f"{case}: exit code {code}, log: {log[-400:]}")
    record("unsafe certificate and key permissions refused at start", len(UNSAFE), len(wrong))
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("case", ["key readable by group", "CA certificate writable by group"])
def test_data_owner_client_refuses_unsafe_credential_files(tmp_path, case):
    name, mode, _, why = UNSAFE[case]
    name = name.replace("p0", "owner")
    config = load_config(write_test_cluster(tmp_path, "2pc"))
    os.chmod(config.tls.dir / name, mode)
    with pytest.raises(CredentialError, match=why):
        ClusterClient(config)
    os.chmod(config.tls.dir / name, 0o600)
    ClusterClient(config).close()  # safe again: accepted
