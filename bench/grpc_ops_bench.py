"""The ``ops`` section over the gRPC transport: every participant a real server process on loopback.

The same op catalogue as the in-process rows (:data:`server.programs.ops.OPS`, inputs from
:func:`bench.ops_bench.op_cases`), run as a cluster job: the data owner shares the inputs, asks for one
batch, and reads the servers' own per-op metrics (wall seconds inside each server, bytes and rounds
on the wire).  Per-party CPU seconds are read from each server process (/proc) around the batch, so
they include gRPC's threads.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from bench.ops_bench import case_inputs, op_cases
from cluster_ops.launcher import LocalCluster
from cluster_ops.testing import running_cluster
from data_owner.client import ClusterClient
from mpc_core.ring import FixedPoint
from server.programs.ops import OPS

_CLOCK = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK


def cluster_cpu_seconds(cluster: LocalCluster) -> list[float]:
    """CPU seconds of every server process of a local cluster, in participant order."""
    return [process_cpu_seconds(cluster.procs[p].pid) for p in sorted(cluster.procs)]


def bench_grpc_ops(suites: tuple[str, ...] = ("2pc", "3pc"), only: set[str] | None = None) -> list[dict]:
    fp = FixedPoint()
    rows = []
    for suite in suites:
        with tempfile.TemporaryDirectory() as tmp, running_cluster(Path(tmp), suite) as (config, cluster):
            client = ClusterClient(config, deadline_s=600)
            try:
                for case in op_cases():
                    if only and case.op not in only:
                        continue
                    rows.append(_one(client, cluster, suite, case, fp))
            finally:
                client.close()
    return rows


def _one(client: ClusterClient, cluster: LocalCluster, suite: str, case, fp: FixedPoint) -> dict:
    inputs = case_inputs(case)
    expected = case.reference(*inputs)
    job = client.open_job("op")
    try:
        for name, value in zip(OPS[case.op].inputs, inputs, strict=True):
            job.upload(name, fp.encode(value))
        if case.prepare is not None:  # the fixed weight's mask is opened by a first, untimed batch
            job.evaluate(params={"op": case.op})
        before, cpu_before = job.metrics(), cluster_cpu_seconds(cluster)
        job.evaluate(params={"op": case.op})
        after, cpu_after = job.metrics(), cluster_cpu_seconds(cluster)
        output = job.reveal_float("y")
    finally:
        job.close()
    key = f"op:{case.op}"

    def delta(p: int, field: str) -> float:
        return after[p]["ops"].get(key, {}).get(field, 0) - before[p]["ops"].get(key, {}).get(field, 0)

    parties = list(client.compute_parties)
    dealer = [p for p in client.participants if p not in parties]
    row = {
        "suite": suite,
        "op": case.op,
        "shape": case.shape,
        "transport": "grpc",
        "seconds": round(max(delta(p, "seconds") for p in parties), 4),
        "party_cpu_seconds": [round(b - a, 3) for a, b in zip(cpu_before, cpu_after, strict=True)],
        "bytes": int(sum(delta(p, "bytes") for p in parties)),
        "dealer_bytes": int(sum(delta(p, "bytes") for p in dealer)),
        "rounds": int(max(delta(p, "rounds") for p in parties)),
        "max_abs_err": float(np.max(np.abs(output - expected))),
        "notes": case.notes,
    }
    print(
        f"  ops/grpc {suite} {case.op}: {row['seconds']:.3f} s, {row['bytes'] / 2**20:.2f} MiB, "
        f"{row['rounds']} rounds",
        flush=True,
    )
    return row
