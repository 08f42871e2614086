"""One CMA-ES generation in one request, before and after multi-part requests (issue 18 point 2).

On one 2pc cluster of the bundled all-MiniLM-L6-v2 (gRPC on loopback, mutual TLS), two tuning jobs hold
the 32 SST-2 training rows: ``one part`` shares them as one part padded to the longest row (the earlier
default, ``max_padding`` = inf), ``multi-part`` in the length-sorted parts :func:`plan_parts` picks under
``max_padding`` 1.15.  The same candidates (a first CMA-ES generation: p = A z, z ~ N(0, sigma0^2 I)) go
to both, in the order one, multi, multi, one (ABBA) when ``repeats`` is 2, so that drift in the machine's
load touches both alike; each job's first request also opens the fixed weights' masks, as a real run's
first generation does.

Per request: the data owner's wall seconds, the servers' peer bytes (all participants, the dealer's
included) and online rounds (the busiest party), both as deltas of the job's own metrics; each server's CPU
seconds; padded and real tokens; the load average before and after.  The losses are compared with the
plaintext backend's on the same candidates.

    OMP_NUM_THREADS=1 nice -n 10 python -m bench.multipart_bench --popsize 4 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from bench.cluster_bench import ROOT, _prompts, _session, minilm_cluster
from bench.grpc_ops_bench import cluster_cpu_seconds
from data_owner.config import DEFAULT_MAX_PADDING

TUNING = {"prompt_length": 5, "intrinsic_dim": 50, "attention": "softmax"}
RESULT = ROOT / "bench" / "results" / "multipart_generation.json"


def _open(path: Path, popsize: int, max_padding: float):
    """A secure session whose training split is shared under ``max_padding`` (the run's own setting)."""
    return _session("sst2", "secure", "2pc", path, popsize=popsize, max_padding=max_padding, **TUNING)


def _request(session, cluster, prompts: np.ndarray) -> tuple[dict, np.ndarray]:
    oracle = session.oracle
    bytes0, rounds0 = oracle.cost.server_bytes, oracle.cost.server_rounds
    load0 = os.getloadavg()
    cpu0, wall = cluster_cpu_seconds(cluster), time.perf_counter()
    losses = oracle.losses(prompts)
    wall = time.perf_counter() - wall
    cpu = [round(b - a, 2) for a, b in zip(cpu0, cluster_cpu_seconds(cluster), strict=True)]
    padded, real = oracle.tokens["train"]
    return {
        "seconds": round(wall, 2),
        "bytes": int(oracle.cost.server_bytes - bytes0),
        "rounds": int(oracle.cost.server_rounds - rounds0),
        "party_cpu_seconds": cpu,
        "parts": [len(rows) for rows in oracle.parts["train"]],
        "part_tokens": [
            int(session.splits["train"].attention_mask[rows].sum(1).max()) for rows in oracle.parts["train"]
        ],
        "padded_tokens": padded,
        "real_tokens": real,
        "padded_per_real": round(padded / real, 3),
        "loadavg_before": [round(v, 2) for v in load0],
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
    }, losses


def main(popsize: int, repeats: int, max_padding: float) -> dict:
    import torch

    plain = _session("sst2", "plain", "2pc", None, popsize=popsize, **TUNING)
    prompts = _prompts(plain, popsize, seed=7)
    reference = plain.oracle.losses(prompts)
    plain.close()
    rows = []
    with minilm_cluster("2pc") as (path, cluster):
        sessions = {
            "one part": _open(path, popsize, float("inf")),
            "multi-part": _open(path, popsize, max_padding),
        }
        try:
            order = ["one part", "multi-part", "multi-part", "one part"][: 2 * repeats]
            for i, kind in enumerate(order):
                try:
                    row, losses = _request(sessions[kind], cluster, prompts)
                except Exception as exc:  # a loaded machine can break a stream: keep the rows so far
                    rows.append({"request": kind, "failed": f"{type(exc).__name__}: {str(exc)[:300]}"})
                    print(json.dumps(rows[-1]), flush=True)
                    break
                row = {
                    "request": kind,
                    "job_request": sum(1 for k in order[: i + 1] if k == kind),
                    **row,
                    "max_abs_loss_err_vs_plain": float(np.max(np.abs(losses - reference))),
                    "losses": [round(float(v), 5) for v in losses],
                }
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "losses"}), flush=True)
        finally:
            for session in sessions.values():
                session.close()  # after a failure: only where a server still answers (SecureOracle.close)
    return {
        "what": "one CMA-ES generation (first generation's candidates) as ONE request: the 32 SST-2 "
        "training rows as one part padded to the longest row, vs length-sorted parts each padded to its own",
        "model": "all-MiniLM-L6-v2 (bundled)",
        "task": "sst2",
        "suite": "2pc",
        "transport": "gRPC on loopback, mutual TLS, network shaping none",
        "examples": 32,
        "popsize": popsize,
        **TUNING,
        "max_padding": max_padding,
        "plaintext_losses": [round(float(v), 5) for v in reference],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rows": rows,
    }


if __name__ == "__main__":  # pragma: no cover - manual runs
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    parser = argparse.ArgumentParser()
    parser.add_argument("--popsize", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=1, choices=(1, 2))
    parser.add_argument("--max-padding", type=float, default=DEFAULT_MAX_PADDING)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    result = main(args.popsize, args.repeats, args.max_padding)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
