"""Throw-away local clusters for tests and benchmarks: free ports, a fresh CA, real server processes.

    with running_cluster(tmp_path, "2pc") as (config, cluster):
        with ClusterClient(config) as client: ...

Every cluster lives in its own folder (configuration, certificates, logs); the context manager stops
all its processes (process groups, SIGTERM then SIGKILL) whatever happens.  Fixed test seeds are
allowed by default here: that is what lets tests compare a cluster's shares with an in-process run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cluster_ops.certs import write_cluster_certs
from cluster_ops.launcher import LocalCluster
from contract.cluster import ClusterConfig, load_config
from mpc_core.prg import system_prg
from mpc_core.ring import FixedPoint
from mpc_core.suites import suite_class


def free_ports(count: int) -> list[int]:
    """Ports that were free a moment ago on 127.0.0.1 (bound together, so they are distinct)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def cluster_dict(suite: str, ports: list[int], **overrides: Any) -> dict[str, Any]:
    """A cluster configuration (as YAML data) on 127.0.0.1 with the given ports."""
    third = suite_class(suite).role(2)
    config: dict[str, Any] = {
        "name": f"test-{suite}",
        "suite": suite,
        "parties": [
            {"participant": 0, "name": "p0", "address": f"127.0.0.1:{ports[0]}"},
            {"participant": 1, "name": "p1", "address": f"127.0.0.1:{ports[1]}"},
            {
                "participant": 2,
                "name": "dealer" if third == "dealer" else "p2",
                "address": f"127.0.0.1:{ports[2]}",
                "role": third,
            },
        ],
        "data_owner": {"name": "owner"},
        "tls": {"dir": "certs"},
        "run_dir": "run",
        "limits": {"connect_timeout_s": 10, "peer_timeout_s": 30, "call_deadline_s": 60},
        "development": {"allow_fixed_seeds": True},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def write_test_cluster(folder: Path, suite: str, *, certs: bool = True, **overrides: Any) -> Path:
    """Write ``folder/cluster.yaml`` (free ports) and, unless told otherwise, its certificates."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cluster.yaml"
    path.write_text(yaml.safe_dump(cluster_dict(suite, free_ports(3), **overrides), sort_keys=False))
    if certs:
        write_cluster_certs(load_config(path))
    return path


@contextlib.contextmanager
def running_cluster(
    folder: Path, suite: str, *, insecure: bool = False, timeout_s: float = 60.0, **overrides: Any
) -> Iterator[tuple[ClusterConfig, LocalCluster]]:
    """Start a fresh cluster's processes; stop them all on exit."""
    path = write_test_cluster(folder, suite, certs=not insecure, **overrides)
    config = load_config(path)
    cluster = LocalCluster(config, path, insecure=insecure)
    try:
        cluster.start(timeout_s=timeout_s)
        yield config, cluster
    finally:
        cluster.stop()


def write_test_model(folder: Path, suite: str, tensors: Mapping[str, np.ndarray], frac_bits: int = 16) -> str:
    """A shared-model folder as ``secp-share-model`` writes it (manifest + one share file per party).

    Returns the manifest's SHA-256 (what a job names as ``model_digest``).
    """
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    fp = FixedPoint(frac_bits)
    cls = suite_class(suite)
    prg = system_prg()
    split = {
        name: cls.split(fp.encode(np.asarray(value, dtype=np.float64)), prg)
        for name, value in tensors.items()
    }
    parties = len(cls.compute_parties)
    files = []
    for p in range(parties):
        path = folder / f"party{p}.safetensors"
        save_file({name: np.ascontiguousarray(shares[p]) for name, shares in split.items()}, str(path))
        data = path.read_bytes()
        files.append(
            {"party": p, "file": path.name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        )
    manifest = {
        "format": "secp-shares/1",
        "suite": suite,
        "fixed_point": {"ring_bits": 64, "frac_bits": frac_bits},
        "tensors": {name: list(np.shape(value)) for name, value in tensors.items()},
        "party_files": files,
    }
    raw = json.dumps(manifest, indent=2).encode()
    (folder / "manifest.json").write_bytes(raw)
    return hashlib.sha256(raw).hexdigest()
