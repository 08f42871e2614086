"""The container cluster for real: build the server image, ``docker compose up``, tune and evaluate from the
host's ``secp-tune``, compare with the same job on the local process cluster, kill a container mid-job,
resume, ``docker compose down``.

Skipped, with the reason, where no Docker daemon can run containers (``.ci/run`` installs and starts one on
these machines).  The cluster file is ``cluster.example.yaml`` with free ports (``data_owner.demo``'s
``cluster_config``, what ``make demo`` runs): ``make cluster``, ``make demo`` and the compose path read
one topology.  All traffic stays on 127.0.0.1 (the containers use the host's network stack).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers_docker import (
    BIN,
    ROOT,
    compose_command,
    container_marks,
    container_of,
    image_size_mb,
    inspect,
    project_containers,
    project_volumes,
    server_image,
    sh,
    wait_healthy,
    wait_reachable,
)
from test_data_owner_common import tiny_config, tiny_setup

from data_owner.demo import cluster_config
from data_owner.runfolder import RunFolder
from model_owner.share import share_model

pytestmark = container_marks(timeout_s=1500)
SERVICES = ["dealer", "p0", "p1"]
#: one generation of the tiny tuning job; the compared job runs 3, the killed one 12 (killed after 2)
POPSIZE = 6
KILLED_GENERATIONS = 12


def tune(config: Path, out: Path, budget: int, *, check: bool = True) -> subprocess.CompletedProcess:
    return sh(
        [BIN / "secp-tune", "run", *job_args(config), "--out", out, "--budget", budget, "--json", "--quiet"],
        check=check,
        timeout=600,
    )


def job_args(config: Path) -> list:
    """``--task`` (required on the command line) and ``--config`` with every other option of the job."""
    return ["--task", yaml.safe_load(config.read_text(encoding="utf-8"))["task"], "--config", config]


def evaluate(run: Path) -> dict:
    import json

    return json.loads(sh([BIN / "secp-tune", "eval", run, "--split", "test", "--json"], timeout=600).stdout)


def loss_rows(run: Path) -> list[tuple[int, str, float]]:
    """Every loss the data owner learnt, per generation: candidates' (min, mean, max) and the dev scores."""
    rows = []
    for h in RunFolder(run).read_history():
        values = {k: h[k] for k in ("loss_min", "loss_mean", "loss_max") if k in h}
        values.update({f"dev.{k}": v for k, v in h.get("dev", {}).items() if k.endswith("loss")})
        rows += [(h["generation"], key, float(value)) for key, value in sorted(values.items())]
    return rows


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Certificates, shares and the tuning job's options, all made on the host; the image built."""
    started = time.perf_counter()
    image = server_image()
    root = tmp_path_factory.mktemp("containers")
    model, data, task = tiny_setup(root)
    shared = root / "shared-model"
    share_model(model, "2pc", shared)
    cluster = cluster_config(root, shared)  # cluster.example.yaml's topology, free ports, certs in root/certs
    sh([BIN / "secp-cluster", "certs", "--config", cluster, "--overwrite"])
    job = tiny_config(
        shared, data, task, backend="secure", suite="2pc", cluster=str(cluster), popsize=POPSIZE, eval_every=6
    )
    run_options = root / "run.yaml"
    run_options.write_text(yaml.safe_dump(job.model_dump(mode="json")), encoding="utf-8")
    return {
        "root": root,
        "cluster": cluster,
        "model": shared,
        "run": run_options,
        "image": image,
        "build_s": time.perf_counter() - started,
    }


def test_compose_cluster_tunes_like_the_process_cluster_survives_a_kill_and_leaves_nothing(world) -> None:
    root, cluster = world["root"], world["cluster"]
    image = world["image"]
    assert image_size_mb(image) < 1500, "the server image grew past 1.5 GB"
    user = inspect(image)["Config"]["User"]
    assert user and not user.startswith(("0", "root")), f"the image runs as {user!r}"

    # 1. The reference: the same job on the local process cluster (secp-cluster up, as make cluster).
    sh([BIN / "secp-cluster", "up", "--config", cluster, "--timeout", "120"])
    try:
        tune(world["run"], root / "local", budget=3 * POPSIZE)
        local_eval = evaluate(root / "local")
    finally:
        sh([BIN / "secp-cluster", "down", "--config", cluster])

    # 2. The same topology in containers: each container mounts only its own staged folder, read-only.
    stage = root / "stage"
    sh(
        [
            sys.executable,
            ROOT / "deploy" / "stage.py",
            "--config",
            cluster,
            "--model",
            world["model"],
            "--out",
            stage,
        ]
    )
    project = f"secp-test-{os.getpid()}"
    uid = "10001" if os.geteuid() == 0 else str(os.getuid())
    env = {**os.environ, "SECP_STAGE": str(stage), "SECP_IMAGE": image, "SECP_UID": uid, "SECP_GID": uid}
    compose = [*compose_command(), "--project-name", project, "--file", ROOT / "docker-compose.yml"]
    try:
        sh([*compose, "up", "--detach", "--no-build"], env=env, timeout=300)
        assert wait_healthy(project, SERVICES) == dict.fromkeys(SERVICES, "healthy")
        wait_reachable(cluster)
        for service in SERVICES:
            info = inspect(container_of(project, service))
            assert info["HostConfig"]["ReadonlyRootfs"] is True
            assert info["Config"]["User"] == f"{uid}:{uid}"
            # Its staged folder read-only, and its own named volume for state_dir (its checkpoints).
            mounts = sorted((m["Destination"], m["Type"], m["RW"]) for m in info["Mounts"])
            assert mounts == [("/srv/secp", "bind", False), ("/var/lib/secp", "volume", True)], (
                service,
                mounts,
            )

        # 3. The host's secp-tune against the containers: the same losses as on the process cluster.
        # (Masks are fresh random values in each run, so the reconstructed values agree to fixed-point
        # precision, not bit for bit.)
        tune(world["run"], root / "compose", budget=3 * POPSIZE)
        compose_eval = evaluate(root / "compose")
        local, contained = loss_rows(root / "local"), loss_rows(root / "compose")
        assert [r[:2] for r in local] == [r[:2] for r in contained]
        assert {g for g, *_ in local} == {0, 1, 2, 3} and len(local) >= 10
        for a, b in zip(local, contained, strict=True):
            assert abs(a[2] - b[2]) < 1e-3, (a, b)
        assert compose_eval["private"] is True and compose_eval["examples"] == local_eval["examples"]
        assert compose_eval["tuned"] == local_eval["tuned"]
        assert compose_eval["zero_shot"] == local_eval["zero_shot"]

        # 4. P1's container killed mid-job: a clear error naming it, then a resume once it is back.
        out = root / "killed"
        budget = KILLED_GENERATIONS * POPSIZE
        cmd = [BIN / "secp-tune", "run", *job_args(world["run"]), "--out", out, "--budget", budget]
        proc = subprocess.Popen(
            [str(c) for c in [*cmd, "--quiet"]], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 300
        while len(RunFolder(out).read_history()) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, "the job ended before it could be interrupted"
        sh(["docker", "kill", "--signal", "KILL", container_of(project, "p1")])
        try:
            _, stderr = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        assert proc.returncode == 3, (proc.returncode, stderr[-2000:])
        message = " ".join(stderr.split())  # the console wraps long lines
        assert "error:" in message and "secp-p1" in message, message[-2000:]
        assert f"continue with: secp-tune resume {out}" in message, message[-2000:]
        done = len(RunFolder(out).read_history())
        assert 3 <= done <= KILLED_GENERATIONS
        sh([*compose, "start", "p1"], env=env)
        wait_healthy(project, ["p1"])
        wait_reachable(cluster)
        sh([BIN / "secp-tune", "resume", out, "--json", "--quiet"], timeout=900)
        history = RunFolder(out).read_history()
        assert [h["generation"] for h in history] == list(range(KILLED_GENERATIONS + 1))
    finally:
        logs = sh([*compose, "logs", "--no-color"], env=env, check=False).stdout
        print(logs[-6000:])  # shown by pytest when the test fails
        sh([*compose, "down", "--volumes", "--timeout", "20"], env=env, check=False, timeout=180)

    # 5. Nothing left running: no container or volume of the project, the ports free again.
    assert project_containers(project) == [], logs[-3000:]
    assert project_volumes(project) == []
    assert "aborted" in logs and "secp-p1" in logs  # the servers logged why the killed job ended
    sh([BIN / "secp-cluster", "up", "--config", cluster, "--timeout", "60"])
    sh([BIN / "secp-cluster", "down", "--config", cluster])
