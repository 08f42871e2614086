"""What the container tests share: is a Docker daemon usable, the compose command, the server image.

``usable_docker()`` returns the reason to skip when no daemon can run containers here (not installed, not
running, no permission); the tests then skip with that reason.  ``server_image()`` builds the image once
per test session with ``deploy/build-image.sh`` (base image and wheelhouse are cached under
/var/cache/secp-tuning, so only the first build on a machine takes minutes).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IMAGE = os.environ.get("SECP_IMAGE", "secp-tuning-server:latest")
#: This virtualenv's console scripts (secp-tune, secp-cluster): the host side of a container test.
BIN = Path(sys.executable).parent


def sh(cmd: list[str], *, check: bool = True, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run ``cmd`` capturing text output; on failure the error carries its output (never share values)."""
    result = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} exited {result.returncode}\n{result.stdout[-4000:]}\n"
            f"{result.stderr[-4000:]}"
        )
    return result


@functools.cache
def usable_docker() -> str | None:
    """None when containers can run here, else why not (the skip reason)."""
    if shutil.which("docker") is None:
        return "no docker command (install docker.io; .ci/run does)"
    info = subprocess.run(
        ["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True
    )
    if info.returncode != 0:
        lines = info.stderr.strip().splitlines()
        return f"no usable Docker daemon: {lines[-1] if lines else f'docker info exited {info.returncode}'}"
    if compose_command() is None:
        return "no docker compose (neither the compose plugin nor docker-compose is installed)"
    return None


def container_marks(timeout_s: int) -> list[pytest.MarkDecorator]:
    """``pytestmark`` of a module that runs real containers, so that every such module skips alike.

    Slow (minutes; tests/test_cluster_compose.py checks the files and deploy/stage.py fast), bounded by
    ``timeout_s``, and skipped with :func:`usable_docker`'s reason where no daemon can run containers.
    """
    reason = usable_docker()
    return [
        pytest.mark.slow,
        pytest.mark.timeout(timeout_s),
        pytest.mark.skipif(reason is not None, reason=f"containers: {reason}"),
    ]


@functools.cache
def compose_command() -> tuple[str, ...] | None:
    """``docker compose`` (the plugin) where it works, else Debian's ``docker-compose``."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ("docker", "compose")
    if shutil.which("docker-compose"):
        return ("docker-compose",)
    return None


@functools.cache
def server_image() -> str:
    """Build (or reuse the cached layers of) the server image; its tag."""
    sh([ROOT / "deploy" / "build-image.sh"], timeout=1200, env={**os.environ, "SECP_IMAGE": IMAGE})
    return IMAGE


def image_size_mb(image: str) -> int:
    return int(sh(["docker", "image", "inspect", "--format", "{{.Size}}", image]).stdout) // 1_000_000


def project_containers(project: str) -> list[str]:
    """Every container (running or not) of a compose project."""
    out = sh(["docker", "ps", "-a", "-q", "--filter", f"label=com.docker.compose.project={project}"]).stdout
    return out.split()


def project_volumes(project: str) -> list[str]:
    """Every volume of a compose project (its servers' state_dir volumes)."""
    out = sh(
        ["docker", "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={project}"]
    ).stdout
    return out.split()


def container_of(project: str, service: str) -> str:
    out = sh(
        [
            "docker",
            "ps",
            "-q",
            "--filter",
            f"label=com.docker.compose.project={project}",
            "--filter",
            f"label=com.docker.compose.service={service}",
        ]
    ).stdout.split()
    assert len(out) == 1, f"expected one running {service} container, found {out}"
    return out[0]


def inspect(container: str) -> dict:
    return json.loads(sh(["docker", "inspect", container]).stdout)[0]


def wait_reachable(cluster_file: Path, timeout_s: float = 120) -> None:
    """Wait until the data owner itself gets ServerInfo from every participant (TLS, its own identity).

    Docker's health checks run inside each container; this is the view from the data owner's machine
    (published ports, a restarted server's new listener), which is what a tuning run needs first.
    """
    from data_owner.client import ClusterClient, wait_until_serving

    with ClusterClient.from_file(cluster_file, deadline_s=10.0) as client:
        wait_until_serving(client, timeout_s=timeout_s)


def wait_healthy(project: str, services: list[str], timeout_s: float = 120) -> dict[str, str]:
    """Wait until every service's container reports healthy (Docker's own health check status)."""
    deadline = time.monotonic() + timeout_s
    status: dict[str, str] = {}
    while time.monotonic() < deadline:
        status = {}
        for service in services:
            try:
                state = inspect(container_of(project, service))["State"]
            except AssertionError:
                status[service] = "absent"
                continue
            status[service] = state.get("Health", {}).get("Status", state["Status"])
        if all(s == "healthy" for s in status.values()):
            return status
        time.sleep(1)
    raise AssertionError(f"services not healthy after {timeout_s:.0f} s: {status}")
