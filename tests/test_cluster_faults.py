"""A server killed in the middle of a job: the data owner gets UNAVAILABLE with a clear message within
its deadline, the surviving servers drop the job's state, and a restarted server serves a new job."""

from __future__ import annotations

import signal
import threading
import time

import grpc
import numpy as np
import pytest

from cluster_ops.testing import running_cluster
from data_owner.client import ClusterClient, ClusterError, wait_until_serving
from mpc_core.ring import FixedPoint
from proto.api import party_pb2

pytestmark = pytest.mark.timeout(180)

FP = FixedPoint()
DEADLINE_S = 30.0


def _wait_for(predicate, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _job_gone(client: ClusterClient, participant: int, job_id: str) -> bool:
    try:
        client.unary("JobStatus", party_pb2.JobRef(job_id=job_id), 5.0)(participant)
    except grpc.RpcError as exc:
        return exc.code() == grpc.StatusCode.NOT_FOUND and "aborted" in (exc.details() or "")
    return False


@pytest.mark.parametrize(("suite", "victim"), [("2pc", 1), ("3pc", 2), ("2pc", 2)])
def test_kill_a_server_mid_job(tmp_path, suite, victim):
    with (
        running_cluster(tmp_path, suite) as (config, cluster),
        ClusterClient(config, deadline_s=DEADLINE_S) as client,
    ):
        job = client.open_job("rounds")
        job.upload("x", FP.encode(np.full(4, 0.5)))
        outcome: dict = {}

        def evaluate() -> None:
            start = time.monotonic()
            try:
                job.evaluate(params={"rounds": 200_000})  # minutes of rounds: it will not finish
            except ClusterError as exc:
                outcome["error"] = exc
            outcome["seconds"] = time.monotonic() - start

        worker = threading.Thread(target=evaluate)
        worker.start()
        assert _wait_for(lambda: all(s.state == "running" for s in job.status().values()), 10)
        time.sleep(0.3)
        killed_at = time.monotonic()
        cluster.kill_one(victim)
        worker.join(DEADLINE_S + 5)
        assert not worker.is_alive()
        error = outcome["error"]
        assert error.code == grpc.StatusCode.UNAVAILABLE
        assert outcome["seconds"] < DEADLINE_S and time.monotonic() - killed_at < 10
        victim_name = config.party(victim).name
        assert (
            f"participant {victim} ({victim_name} at {config.party(victim).address}) is unreachable"
            in str(error)
        )
        assert victim in error.failures and error.unreachable == [victim]
        survivors = [p for p in range(3) if p != victim]
        for p in survivors:  # they say why: the victim's stream broke
            code, details = error.failures[p]
            assert code == grpc.StatusCode.UNAVAILABLE and f"participant {victim}" in details

        # the survivors dropped the job's state (shares, results, links)
        for p in survivors:
            assert _wait_for(lambda p=p: _job_gone(client, p, job.job_id), 10), (
                f"participant {p} kept the job"
            )
        infos = {p: client.unary("ServerInfo", party_pb2.ServerInfoRequest())(p) for p in survivors}
        assert all(info.open_jobs == 0 for info in infos.values())

        # a restarted server serves a new job with the same survivors
        cluster.start_one(victim)
        cluster.wait_serving([victim], timeout_s=30)
        wait_until_serving(client, timeout_s=10)
        rng = np.random.default_rng(1)
        x, w, b = rng.normal(size=(2, 3)), rng.normal(size=(3, 2)), rng.normal(size=2)
        fresh = client.open_job("affine")
        for name, value in {"x": x, "w": w, "b": b}.items():
            fresh.upload(name, FP.encode(value))
        fresh.evaluate()
        assert np.allclose(fresh.reveal_float("y"), x @ w + b, atol=1e-3)
        fresh.close()


def test_idle_job_is_dropped_when_a_peer_dies(tmp_path):
    """Between batches too: a peer's death aborts the job on the others at once (not at the next call)."""
    with (
        running_cluster(tmp_path, "3pc") as (config, cluster),
        ClusterClient(config, deadline_s=DEADLINE_S) as client,
    ):
        job = client.open_job("rounds")
        job.upload("x", FP.encode(np.full(2, 0.5)))
        job.evaluate(params={"rounds": 3})
        cluster.kill_one(0)
        for p in (1, 2):
            assert _wait_for(lambda p=p: _job_gone(client, p, job.job_id), 10)
        with pytest.raises(ClusterError) as info:
            job.evaluate(params={"rounds": 3})
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        assert info.value.failures[1][0] == grpc.StatusCode.NOT_FOUND
        assert "aborted" in info.value.failures[1][1]


def test_a_dead_dealer_is_named_by_a_call_it_was_not_part_of(tmp_path):
    """Killed between batches, the dealer is first noticed by the compute parties ("aborted: the
    stream with participant 2 broke") on an upload that only goes to them: the error still names it."""
    with (
        running_cluster(tmp_path, "2pc") as (config, cluster),
        ClusterClient(config, deadline_s=DEADLINE_S) as client,
    ):
        job = client.open_job("rounds")
        job.upload("x", FP.encode(np.full(2, 0.5)))
        job.evaluate(params={"rounds": 3})
        cluster.kill_one(2)
        assert _wait_for(lambda: _job_gone(client, 0, job.job_id), 10)
        start = time.monotonic()
        with pytest.raises(ClusterError) as info:
            job.upload("x", FP.encode(np.full(2, 0.25)))
        print(f"\ndead dealer named after {time.monotonic() - start:.2f} s")
        assert 2 not in info.value.failures  # the upload went to the compute parties only
        assert info.value.unreachable == [2] and info.value.code == grpc.StatusCode.UNAVAILABLE
        assert f"participant 2 ({config.party(2).name} at {config.party(2).address}) is unreachable" in str(
            info.value
        )


def test_an_input_cannot_be_replaced_while_its_batch_waits_for_peers(tmp_path):
    """Evaluate reaches P1 first; replacing x (another shape) on P1 meanwhile is refused with
    FAILED_PRECONDITION; once P0 and the dealer join, the batch computes on the x it was planned with."""
    with (
        running_cluster(tmp_path, "2pc") as (config, cluster),
        ClusterClient(config, deadline_s=DEADLINE_S) as client,
    ):
        rng = np.random.default_rng(5)
        x, w, b = rng.normal(size=(2, 3)), rng.normal(size=(3, 2)), rng.normal(size=2)
        job = client.open_job("affine")
        for name, value in {"x": x, "w": w, "b": b}.items():
            job.upload(name, FP.encode(value))
        request = party_pb2.EvaluateRequest(
            job_id=job.job_id,
            batch=0,
            inputs=[party_pb2.TensorInfo(name=n, shape=v.shape) for n, v in {"x": x, "w": w, "b": b}.items()],
            params_json="{}",
        )
        call = client.unary("Evaluate", request)
        first = client._pool.submit(call, 1)
        assert _wait_for(lambda: job.status()[1].state == "running", 10)
        other = FP.encode(np.zeros((5, 3)))
        header = party_pb2.ShareHeader(
            job_id=job.job_id, name="x", dtype="<u8", shape=[1, 5, 3], nbytes=other.nbytes
        )
        with pytest.raises(grpc.RpcError) as refused:
            client.stub(1).Upload(
                iter([party_pb2.UploadChunk(header=header, data=other.tobytes())]),
                timeout=10,
                metadata=client.metadata,
            )
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "used by batch 0" in refused.value.details()
        rest = [client._pool.submit(call, p) for p in (0, 2)]
        for future in [first, *rest]:
            future.result(timeout=30)
        job.next_batch = 1
        assert np.allclose(job.reveal_float("y"), x @ w + b, atol=1e-3)
        assert "Traceback" not in cluster.tail(1, lines=10_000)
        job.close()


def test_deadline_expiry_aborts_the_job_everywhere(tmp_path):
    """A data owner's deadline that expires mid-evaluation cancels and drops the job on every server."""
    with (
        running_cluster(tmp_path, "2pc") as (config, _),
        ClusterClient(config, deadline_s=DEADLINE_S) as client,
    ):
        job = client.open_job("rounds")
        job.upload("x", FP.encode(np.full(2, 0.5)))
        start = time.monotonic()
        with pytest.raises(ClusterError) as info:
            job.evaluate(params={"rounds": 200_000}, timeout_s=1.0)
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - start < 5
        for p in range(3):
            assert _wait_for(lambda p=p: _job_gone(client, p, job.job_id), 10)


def test_a_paused_server_is_reported_long_before_the_call_deadline(tmp_path):
    """A SIGSTOPped compute party: its peers give up after ``peer_timeout_s``, and the data owner reports
    the failure ``FAILURE_GRACE_S`` later without waiting out its own (long) call deadline."""
    from data_owner.client import FAILURE_GRACE_S

    peer_timeout_s, deadline_s = 3.0, 300.0
    limits = {"peer_timeout_s": peer_timeout_s, "call_deadline_s": deadline_s}
    with (
        running_cluster(tmp_path, "2pc", limits=limits) as (config, cluster),
        ClusterClient(config) as client,
    ):
        assert client.deadline_s == deadline_s
        job = client.open_job("rounds")
        job.upload("x", FP.encode(np.full(4, 0.5)))
        outcome: dict = {}

        def evaluate() -> None:
            try:
                job.evaluate(params={"rounds": 200_000})  # minutes of rounds: it will not finish
            except ClusterError as exc:
                outcome["error"] = exc

        worker = threading.Thread(target=evaluate)
        worker.start()
        assert _wait_for(lambda: all(s.state == "running" for s in job.status().values()), 10)
        paused_at = time.monotonic()
        cluster.signal_one(1, signal.SIGSTOP)
        try:
            worker.join(peer_timeout_s + FAILURE_GRACE_S + 30)
            reported_after = time.monotonic() - paused_at
        finally:
            cluster.signal_one(1, signal.SIGCONT)
        assert not worker.is_alive(), "the data owner waited for its call deadline"
        assert reported_after < peer_timeout_s + FAILURE_GRACE_S + 30 < deadline_s
        error = outcome["error"]
        assert error.unreachable == [1], str(error)
        assert error.code == grpc.StatusCode.UNAVAILABLE
        assert error.failures[1] == (
            grpc.StatusCode.CANCELLED,
            f"no answer {FAILURE_GRACE_S:g} s after another participant failed",
        )
        assert "participant 1" in error.failures[0][1]  # P0 says whom it stopped waiting for


class _Refused(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.RESOURCE_EXHAUSTED

    def details(self) -> str:
        return "limits.max_job_bytes = 1 exceeded"


def test_a_slow_participant_beside_a_refusal_is_not_blamed(tmp_path, monkeypatch):
    """One participant refuses at once while the others are still busy (alive, just slow): the client stops
    waiting after the grace, reports the refusal's code, and does not call the slow ones unreachable."""
    import data_owner.client as client_module

    monkeypatch.setattr(client_module, "FAILURE_GRACE_S", 0.5)

    def call(p: int) -> str:
        if p == 0:
            raise _Refused()
        time.sleep(5)
        return "late"

    with running_cluster(tmp_path, "2pc") as (config, _), ClusterClient(config) as client:
        start = time.monotonic()
        with pytest.raises(ClusterError) as info:
            client.call_all("uploading x", call)
        assert time.monotonic() - start < 4
    error = info.value
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and error.unreachable == []
    assert error.failures[0] == (grpc.StatusCode.RESOURCE_EXHAUSTED, "limits.max_job_bytes = 1 exceeded")
    for p in (1, 2):
        assert error.failures[p] == (
            grpc.StatusCode.CANCELLED,
            "no answer 0.5 s after another participant failed",
        )
