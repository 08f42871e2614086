"""Concurrency and limits of a real cluster: several data-owner sessions at once, per-job and global
limits refused with RESOURCE_EXHAUSTED naming the limit and its value, and graceful shutdown.

The cluster configuration has one data-owner identity; "several data owners" here are independent
client sessions (their own channels and threads, their own jobs), which is what a server sees of them.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from security_report import record, scale

from cluster_ops.testing import running_cluster
from data_owner.client import ClusterClient, ClusterError
from mpc_core.prg import PRG
from mpc_core.ring import FixedPoint
from proto.api import party_pb2

pytestmark = [pytest.mark.security, pytest.mark.timeout(300)]

FP = FixedPoint()
KiB = 1024
LIMITS = {
    "max_jobs": 6,
    "max_upload_bytes": 48 * KiB,
    "max_job_bytes": 64 * KiB,
    "max_server_bytes": 160 * KiB,
    "max_inputs": 6,
}
Code = grpc.StatusCode


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[tuple]:
    folder = tmp_path_factory.mktemp("limits")
    with (
        running_cluster(folder, "2pc", limits=LIMITS) as (config, processes),
        ClusterClient(config) as client,
    ):
        yield config, processes, client


def _open_jobs(client: ClusterClient) -> dict[int, int]:
    return {p: info.open_jobs for p, info in client.server_info().items()}


def _seed(i: int) -> bytes:
    return bytes([i + 1]) * 16


# ---------------------------------------------------------------------------------------- concurrency
def _mlp_session(
    config, index: int, batches: int, opened: threading.Barrier | None = None, spans: list | None = None
) -> list[np.ndarray]:
    """One data owner's job: fixed inputs, shares and seeds, so a rerun must give the same ring values."""
    rng = np.random.default_rng(index)
    inputs = {
        "x": rng.normal(size=(16, 32)),
        "w1": rng.normal(size=(32, 32)) / 4,
        "b1": rng.normal(size=32),
        "w2": rng.normal(size=(32, 4)) / 4,
        "b2": rng.normal(size=4),
    }
    prg = PRG(_seed(index))
    out = []
    with ClusterClient(config) as client:
        job = client.open_job("mlp", test_seed=_seed(index))
        for name, value in inputs.items():
            job.upload(name, FP.encode(value), prg=prg)
        if opened is not None:
            opened.wait()
        start = time.monotonic()
        for _ in range(batches):
            job.evaluate(params={"activation": ("relu", "cos")[index % 2]})  # comparison and trig paths
            out.append(job.reveal("y"))
        if spans is not None:
            spans[index] = (start, time.monotonic())
        job.close()
    return out


def test_concurrent_jobs_give_the_same_results_as_alone(cluster):
    config, _, client = cluster
    _check_concurrent_sessions(config, client, "2pc")


def test_concurrent_jobs_give_the_same_results_as_alone_3pc(tmp_path):
    with running_cluster(tmp_path, "3pc") as (config, _), ClusterClient(config) as client:
        _check_concurrent_sessions(config, client, "3pc")


def _check_concurrent_sessions(config, client: ClusterClient, suite: str) -> None:
    sessions = scale(3, 5)
    batches = 2
    alone = [_mlp_session(config, i, batches) for i in range(sessions)]
    together: list = [None] * sessions
    spans: list = [None] * sessions
    barrier = threading.Barrier(sessions, timeout=60)  # every session has its job open before any evaluates
    errors: list = []

    def run(i: int) -> None:
        try:
            together[i] = _mlp_session(config, i, batches, opened=barrier, spans=spans)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    # the sessions' evaluations really ran at the same time: the last to start began before any ended
    assert max(start for start, _ in spans) < min(end for _, end in spans), spans
    mismatches = sum(
        not np.array_equal(a, b) for i in range(sessions) for a, b in zip(alone[i], together[i], strict=True)
    )
    record(f"concurrent data-owner jobs equal solo runs ({suite})", sessions * batches, mismatches)
    assert mismatches == 0
    assert _open_jobs(client) == {0: 0, 1: 0, 2: 0}


# ---------------------------------------------------------------------------------------- limits
def _refusal(call) -> tuple[Code, str]:
    with pytest.raises(ClusterError) as info:
        call()
    codes = {code for code, _ in info.value.failures.values()}
    assert codes == {info.value.code}, info.value.failures
    return info.value.code, str(info.value)


def test_job_count_limit(cluster):
    _, _, client = cluster
    jobs = [client.open_job("affine") for _ in range(LIMITS["max_jobs"])]
    before = _open_jobs(client)
    code, message = _refusal(lambda: client.open_job("affine"))
    assert code == Code.RESOURCE_EXHAUSTED and f"limits.max_jobs = {LIMITS['max_jobs']}" in message
    assert _open_jobs(client) == before
    jobs.pop().close()
    jobs.append(client.open_job("affine"))  # room again after a close
    for job in jobs:
        job.close()
    record("limit: jobs per server", 1, 0)


def test_per_job_byte_and_input_limits(cluster):
    _, _, client = cluster
    job = client.open_job("affine")
    big = np.zeros(40 * KiB // 8, dtype=np.uint64)  # 40 KiB
    job.upload("a", big)
    code, message = _refusal(lambda: job.upload("b", big))
    assert code == Code.RESOURCE_EXHAUSTED and f"limits.max_job_bytes = {LIMITS['max_job_bytes']}" in message
    job.upload("a", big)  # replacing a share does not count twice
    for i in range(LIMITS["max_inputs"] - 1):
        job.upload(f"t{i}", np.zeros(2, dtype=np.uint64))
    code, message = _refusal(lambda: job.upload("one-too-many", np.zeros(2, dtype=np.uint64)))
    assert code == Code.RESOURCE_EXHAUSTED and f"limits.max_inputs = {LIMITS['max_inputs']}" in message
    uploaded = {p: sorted(t.name for t in s.uploaded) for p, s in job.status().items() if p != 2}
    assert uploaded == {p: sorted(["a", *(f"t{i}" for i in range(5))]) for p in (0, 1)}
    job.close()
    record("limit: bytes and inputs per job", 2, 0)


def test_server_byte_limit_counts_uploads_in_flight(cluster):
    """The global budget covers stored shares and uploads still arriving (reserved at their header)."""
    _, _, client = cluster
    jobs = [client.open_job("affine") for _ in range(4)]
    share = np.zeros(40 * KiB // 8, dtype=np.uint64)
    for job in jobs[:3]:
        job.upload("x", share)  # 120 KiB of 160 held
    # an upload that declares 40 KiB more but stalls after its first chunk: reserved, not yet stored
    release = threading.Event()
    header = party_pb2.ShareHeader(
        job_id=jobs[3].job_id, name="x", dtype="<u8", shape=(1, 5 * KiB), nbytes=40 * KiB
    )

    def stalled():
        yield party_pb2.UploadChunk(header=header, data=bytes(8 * KiB))
        release.wait(30)

    stall_call = client.stub(0).Upload.future(stalled(), timeout=30, metadata=client.metadata)
    time.sleep(0.5)
    code, message = _refusal(lambda: jobs[3].upload("y", np.zeros(2 * KiB, dtype=np.uint64)))  # 16 KiB
    # P0 refuses (its budget counts the stalled 40 KiB); P1 has room and accepts
    assert code == Code.RESOURCE_EXHAUSTED
    assert f"limits.max_server_bytes = {LIMITS['max_server_bytes']}" in message
    stall_call.cancel()
    release.set()
    time.sleep(0.3)
    jobs[3].upload("y", np.zeros(2 * KiB, dtype=np.uint64))  # the reservation was released
    for job in jobs:
        job.close()
    record("limit: bytes per server (stored and in flight)", 1, 0)


def test_memory_limit_refuses_new_work(tmp_path):
    limits = {"max_memory_bytes": 16 << 20}  # far below a server's resident memory
    with running_cluster(tmp_path, "2pc", limits=limits) as (config, _), ClusterClient(config) as client:
        assert _open_jobs(client) == {0: 0, 1: 0, 2: 0}  # read-only calls still work
        code, message = _refusal(lambda: client.open_job("affine"))
        assert code == Code.RESOURCE_EXHAUSTED
        assert "above its limit of 16777216 bytes (limits.max_memory_bytes)" in message
        assert _open_jobs(client) == {0: 0, 1: 0, 2: 0}
    record("limit: server memory", 1, 0)


def test_limit_defaults_are_set():
    from contract.cluster import Limits
    from server.resources import ResourceGuard, physical_memory_bytes

    limits = Limits()
    assert (limits.max_jobs, limits.max_job_bytes, limits.max_server_bytes) == (8, 16 << 30, 32 << 30)
    assert limits.shutdown_grace_s == 5.0
    guard = ResourceGuard(limits, 0)
    assert guard.max_memory_bytes == int(0.9 * physical_memory_bytes())


# ---------------------------------------------------------------------------------------- shutdown
# The short batch lasts about this long alone. Beside the long batch it runs several times slower
# (the two jobs' threads share each server's GIL), and it must still end inside the grace below.
SHORT_BATCH_S = 1.0


def _rounds_lasting(job, seconds: float) -> int:
    """How many "rounds" make a batch last about `seconds` on this machine now.

    Timed as the difference of two batch sizes, so the per-batch overhead (which dominates a
    small batch on a loaded machine) does not shrink the estimate: a short batch that ended
    before the test saw it running once made the test fail.
    """

    def timed(rounds: int) -> float:
        start = time.monotonic()
        job.evaluate(params={"rounds": rounds})
        return time.monotonic() - start

    timed(20)  # warm-up: the first batch of a job plans its program
    per_round = max(timed(300) - timed(100), 1e-3) / 200
    return max(100, int(seconds / per_round))


@pytest.mark.slow  # over 20 s: runs in make test, not in make test-fast
def test_sigterm_finishes_short_batches_and_aborts_long_ones(tmp_path):
    grace = 20.0
    limits = {"shutdown_grace_s": grace}
    with (
        running_cluster(tmp_path, "2pc", limits=limits) as (config, processes),
        ClusterClient(config) as client,
    ):
        short, long_, idle = (client.open_job("rounds") for _ in range(3))
        for job in (short, long_, idle):
            job.upload("x", FP.encode(np.full(2, 0.5)))
        short_rounds = _rounds_lasting(idle, SHORT_BATCH_S)
        outcome: dict = {}

        def evaluate(job, rounds: int) -> None:
            try:
                job.evaluate(params={"rounds": rounds})
                outcome[job.job_id] = job.reveal_float("y")
            except ClusterError as exc:
                outcome[job.job_id] = exc

        threads = [
            threading.Thread(target=evaluate, args=(long_, 200_000)),
            threading.Thread(target=evaluate, args=(short, short_rounds)),
        ]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while True:
            states = [s.state for j in (short, long_) for s in j.status().values()]
            if all(state == "running" for state in states):
                break
            assert time.monotonic() < deadline, f"the batches were not both running: {states}"
            time.sleep(0.02)
        processes.signal_one(1, signal.SIGTERM)
        time.sleep(0.5)
        # while it drains, P1 refuses new jobs and batches, saying why
        ref = party_pb2.OpenJobRequest(
            job_id="late", spec=party_pb2.JobSpec(program="rounds", suite="2pc", frac_bits=16)
        )
        with pytest.raises(grpc.RpcError) as late:
            client.stub(1).OpenJob(ref, timeout=5, metadata=client.metadata)
        assert late.value.code() == Code.UNAVAILABLE and "shutting down" in late.value.details()
        with pytest.raises(ClusterError) as batch:
            idle.evaluate(params={"rounds": 2})
        assert batch.value.failures[1][0] == Code.UNAVAILABLE
        assert "accepts no new batches" in batch.value.failures[1][1]
        for t in threads:
            t.join(grace + 20)
        processes.procs[1].wait(20)

        assert isinstance(outcome[short.job_id], np.ndarray), outcome[short.job_id]  # finished and fetched
        error = outcome[long_.job_id]
        assert isinstance(error, ClusterError) and error.code == Code.UNAVAILABLE
        assert "the server is shutting down" in error.failures[1][1]
        assert f"did not finish within limits.shutdown_grace_s = {grace:g} s" in error.failures[1][1]
        log = processes.log_path(1).read_text()
        assert f"job {short.job_id} finished batch 0 before the server stopped" in log
        assert f"job {long_.job_id} aborted on participant 1: the server is shutting down: batch 0" in log
        assert f"job {idle.job_id} aborted on participant 1: the server is shutting down" in log
    record("graceful shutdown (finish / abort, said to client and log)", 3, 0)
