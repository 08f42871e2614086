"""The whole path works across real distances: data owner to servers and server to server, with mutual
TLS, through a proxy adding 20, 80 or 200 ms each way to every byte (handshakes included); and fresh
connections opened all at once on loopback (a connection storm) all succeed.

Issue 16, point 1: gRPC's ``grpc.min_reconnect_backoff_ms`` is also its minimum *connect* timeout, and
the channels had it at 100 ms, so any TLS handshake slower than that (three round trips at 20 ms) failed
with UNAVAILABLE. The control case puts the old option back and must fail where the fixed options pass.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from security_report import record

import contract.channels as security
from cluster_ops.testing import cluster_dict, free_ports, running_cluster
from data_owner.client import ClusterClient, ClusterError
from mpc_core.ring import FixedPoint
from tests.latency_proxy import LatencyProxy

pytestmark = [pytest.mark.timeout(300), pytest.mark.security]


@contextlib.contextmanager
def cluster_behind_proxies(folder, suite: str, delay_s: float) -> Iterator[ClusterClient]:
    """Every participant listens on its own port and is reached by everyone through its proxy."""
    ports = free_ports(6)
    real, proxied = ports[:3], ports[3:]
    parties = cluster_dict(suite, proxied)["parties"]
    for party, port in zip(parties, real, strict=True):
        party["listen"] = f"127.0.0.1:{port}"
    proxies = [LatencyProxy(("127.0.0.1", r), delay_s, port=p) for r, p in zip(real, proxied, strict=True)]
    with contextlib.ExitStack() as stack:
        for proxy in proxies:
            stack.enter_context(proxy)
        config, _ = stack.enter_context(
            running_cluster(
                folder,
                suite,
                parties=parties,
                limits={"connect_timeout_s": 60, "peer_timeout_s": 120, "call_deadline_s": 240},
                timeout_s=120,
            )
        )
        yield stack.enter_context(ClusterClient(config))


def square_rounds(client: ClusterClient, rounds: int) -> np.ndarray:
    """A job over the peer links: x^(2^rounds), one round per squaring."""
    x = np.array([[1.01, -0.99, 0.5]])
    job = client.open_job("rounds")
    job.upload("x", FixedPoint().encode(x))
    job.evaluate(params={"rounds": rounds})
    got = job.reveal_float("y")
    job.close()
    np.testing.assert_allclose(got, x ** (2**rounds), rtol=1e-3, atol=1e-3)
    return got


@pytest.mark.parametrize(
    "delay_ms", [20, pytest.param(80, marks=pytest.mark.slow), pytest.param(200, marks=pytest.mark.slow)]
)
def test_data_owner_and_peers_connect_and_compute_across_latency(tmp_path, delay_ms: int) -> None:
    with cluster_behind_proxies(tmp_path, "2pc", delay_ms / 1000) as client:
        start = time.monotonic()
        info = client.server_info()
        connected = time.monotonic() - start
        assert sorted(info) == [0, 1, 2]
        square_rounds(client, rounds=3)
        total = time.monotonic() - start
    # the job really crossed the proxies: at least a handful of one-way delays
    assert total > 6 * delay_ms / 1000
    print(
        f"\n{delay_ms} ms one way: first server_info {connected:.2f} s, job of 3 rounds done at {total:.2f} s"
    )
    record(
        f"network: connect and compute at {delay_ms} ms one way", 1, 0, note=f"first call {connected:.2f} s"
    )


def test_control_the_old_connect_timeout_fails_behind_latency(tmp_path, monkeypatch) -> None:
    """The same 80 ms path with the old 100 ms minimum connect timeout: the first call is refused."""
    original = security.channel_options

    def old_options(server_name, max_message_bytes):  # type: ignore[no-untyped-def]
        dropped = {"grpc.min_reconnect_backoff_ms", "grpc.enable_retries"}
        options = [o for o in original(server_name, max_message_bytes) if o[0] not in dropped]
        # a distinct user agent keeps gRPC from reusing the connections the fixed client made
        return [
            *options,
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.enable_retries", 0),
            ("grpc.primary_user_agent", "control"),
        ]

    with cluster_behind_proxies(tmp_path, "2pc", 0.08) as client:
        client.close()
        monkeypatch.setattr("data_owner.client.channel_options", old_options)
        with (
            ClusterClient(client.config) as old,
            pytest.raises(ClusterError, match=r"UNAVAILABLE|unreachable"),
        ):
            old.server_info()


@pytest.mark.parametrize("suite", ["2pc", "3pc"])
def test_connection_storm_on_loopback(tmp_path, suite: str) -> None:
    """24 fresh clients calling at once, then 32 concurrent job openings from 4 clients: none fails."""
    with running_cluster(tmp_path, suite, limits={"max_jobs": 32}) as (config, _):
        clients = [ClusterClient(config) for _ in range(24)]
        try:
            with ThreadPoolExecutor(len(clients)) as pool:
                infos = list(pool.map(lambda c: c.server_info(), clients))
            assert all(sorted(i) == [0, 1, 2] for i in infos)
        finally:
            for c in clients:
                c.close()
        openers = [ClusterClient(config) for _ in range(4)]
        try:
            with ThreadPoolExecutor(32) as pool:
                jobs = list(pool.map(lambda i: openers[i % 4].open_job("rounds"), range(32)))
            assert len({j.job_id for j in jobs}) == 32
            for job in jobs:
                job.close()
        finally:
            for c in openers:
                c.close()
