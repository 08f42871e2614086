"""``secp-cluster up|status|down|health`` and ``secp-server`` start-up checks, as real commands."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml

from cluster_ops.launcher import LocalCluster, is_our_server, read_state
from cluster_ops.testing import (
    cluster_dict,
    free_ports,
    running_cluster,
    write_test_cluster,
    write_test_model,
)
from contract.channels import IDENTITY_HEADER
from contract.cluster import load_config
from data_owner.client import ClusterClient, ClusterError
from mpc_core.ring import FixedPoint
from proto.api import party_pb2, party_pb2_grpc

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str, timeout: float = 90.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.mark.slow  # over 20 s: runs in make test, not in make test-fast
def test_up_status_health_down(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(cluster_dict("3pc", free_ports(3))))  # no certificates yet
    state = None
    try:
        up = _run("cluster_ops.cli", "up", "--config", str(path))
        assert up.returncode == 0, up.stderr + up.stdout
        assert "created a local CA" in up.stdout and "3pc cluster 'test-3pc' is up" in up.stdout
        state = read_state(tmp_path / "run")
        assert [r.name for r in state.processes] == ["p0", "p1", "p2"]
        assert all(is_our_server(r.pid, state.config) for r in state.processes)
        assert all((tmp_path / "run/logs" / f"{n}.log").exists() for n in ("p0", "p1", "p2"))
        again = _run("cluster_ops.cli", "up", "--config", str(path))
        assert again.returncode != 0 and "already up" in again.stderr

        status = _run("cluster_ops.cli", "status", "--config", str(path))
        assert status.returncode == 0, status.stdout + status.stderr
        assert status.stdout.count("SERVING") == 3 and status.stdout.count("jobs 0") == 3
        health = _run("cluster_ops.cli", "health", "--config", str(path), "--party", "1")
        assert health.returncode == 0 and "p1 SERVING" in health.stdout

        down = _run("cluster_ops.cli", "down", "--config", str(path))
        assert down.returncode == 0 and "stopped p0, p1, p2" in down.stdout
        assert not any(is_our_server(r.pid, state.config) for r in state.processes)
        after = _run("cluster_ops.cli", "status", "--config", str(path))
        assert after.returncode == 1 and after.stdout.count("UNREACHABLE") == 3
    finally:
        if state is not None:  # never leave servers behind, whatever failed
            for record in state.processes:
                if is_our_server(record.pid, state.config):
                    os.killpg(record.pid, signal.SIGKILL)


def _server_exit(config_path: Path, *args: str) -> subprocess.CompletedProcess:
    return _run("server.cli", "--config", str(config_path), *args, timeout=60)


def test_server_refuses_a_share_file_that_fails_its_hash(tmp_path):
    write_test_model(tmp_path / "model", "2pc", {"head.weight": np.ones((2, 2))})
    share = tmp_path / "model" / "party1.safetensors"
    data = bytearray(share.read_bytes())
    data[-1] ^= 1
    share.write_bytes(bytes(data))
    (tmp_path / "model" / "party0.safetensors").rename(tmp_path / "elsewhere.safetensors")
    path = write_test_cluster(tmp_path, "2pc", model="model")
    result = _server_exit(path, "--party", "1")
    assert result.returncode == 2
    assert "does not match the SHA-256 in the manifest" in result.stderr
    result = _server_exit(path, "--party", "0")
    assert result.returncode == 2 and "party0.safetensors for participant 0 is missing" in result.stderr
    # the dealer reads the manifest only: neither share file matters to it
    cluster = LocalCluster(load_config(path), path)
    try:
        cluster.start_one(2)
        cluster.wait_serving([2], timeout_s=30)
        assert "manifest only" in cluster.log_path(2).read_text()
    finally:
        cluster.stop()


def test_server_refuses_unsafe_key_and_wrong_role(tmp_path):
    path = write_test_cluster(tmp_path, "2pc")
    os.chmod(tmp_path / "certs" / "p0.key", 0o644)
    result = _server_exit(path, "--party", "0")
    assert result.returncode == 2 and "accessible to other users" in result.stderr
    result = _server_exit(path, "--party", "2")
    assert result.returncode == 2 and "start it with --role dealer" in result.stderr


def test_server_refuses_a_busy_port(tmp_path):
    import socket

    path = write_test_cluster(tmp_path, "2pc")
    port = int(yaml.safe_load(path.read_text())["parties"][1]["address"].rsplit(":", 1)[1])
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        result = _server_exit(path, "--party", "1")
    assert result.returncode == 2 and "cannot listen" in result.stderr


def test_insecure_mode_is_loud_and_still_checks_claimed_identities(tmp_path):
    with running_cluster(tmp_path, "2pc", insecure=True, development={"allow_fixed_seeds": False}) as (
        config,
        c,
    ):
        log = c.log_path(0).read_text()
        assert "WITHOUT TLS (--insecure)" in log
        channel = grpc.insecure_channel(config.party(0).address)
        stub = party_pb2_grpc.PartyStub(channel)
        request = party_pb2.ServerInfoRequest()
        with pytest.raises(grpc.RpcError) as info:
            stub.ServerInfo(request, timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as info:
            stub.ServerInfo(request, timeout=5, metadata=((IDENTITY_HEADER, "p1"),))
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert stub.ServerInfo(request, timeout=5, metadata=((IDENTITY_HEADER, "owner"),)).participant == 0
        with ClusterClient(config, insecure=True) as client:
            with pytest.raises(ClusterError) as refused:
                client.open_job("affine", test_seed=b"fixed")
            assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
            assert "fixed test seeds are disabled" in str(refused.value)
            job = client.open_job("affine")
            fp = FixedPoint()
            for name, value in {"x": np.ones((2, 2)), "w": np.eye(2), "b": np.ones(2)}.items():
                job.upload(name, fp.encode(value))
            job.evaluate()
            assert np.allclose(job.reveal_float("y"), 2.0, atol=1e-3)
            job.close()
    channel.close()


def test_stop_is_graceful_and_tells_the_peers(tmp_path):
    """SIGTERM: health goes NOT_SERVING, open jobs are aborted and the peers hear why."""
    with running_cluster(tmp_path, "2pc") as (config, cluster), ClusterClient(config) as client:
        job = client.open_job("rounds")
        job.upload("x", FixedPoint().encode(np.full(2, 0.5)))
        job.evaluate(params={"rounds": 2})
        cluster.stop_one(1)
        deadline = time.monotonic() + 10
        message = ""
        while time.monotonic() < deadline and "server is shutting down" not in message:
            message = cluster.log_path(0).read_text()
            time.sleep(0.1)
        assert "participant 1 aborted the job" in message and "the server is shutting down" in message
        assert "p1 stopped" in cluster.log_path(1).read_text()
