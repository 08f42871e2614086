"""The separate-hosts recipe (docs/deploy.md, deploy/hosts/) run on this machine: each participant from
its own compose file, in its own container and network namespace, reaching the others by their host names
on a Docker network this test creates; the operator's CA issues every certificate; the data owner (this
process's machine, a fourth network namespace) tunes and evaluates through the published ports on
127.0.0.1.  Skipped, with the reason, where no Docker daemon can run containers."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import yaml
from helpers_docker import (
    BIN,
    ROOT,
    compose_command,
    container_marks,
    container_of,
    inspect,
    project_containers,
    project_volumes,
    server_image,
    sh,
    wait_healthy,
    wait_reachable,
)
from test_data_owner_common import tiny_config, tiny_setup

from cluster_ops.testing import free_ports
from data_owner.runfolder import RunFolder
from model_owner.share import share_model

pytestmark = container_marks(timeout_s=900)
HOSTS = {"p0": 0, "p1": 1, "dealer": 2}


def test_each_party_on_its_own_host(tmp_path: Path) -> None:
    image = server_image()
    recipe = ROOT / "deploy" / "hosts"
    # The operator: the cluster file, a CA and every identity's certificate (secp-cluster certs).
    operator = tmp_path / "operator"
    operator.mkdir()
    shutil.copyfile(recipe / "cluster.yaml", operator / "cluster.yaml")
    sh([BIN / "secp-cluster", "certs", "--config", operator / "cluster.yaml"])
    # The model owner: shares; each host receives the manifest and its own share file only.
    model, data, task = tiny_setup(tmp_path)
    share_model(model, "2pc", tmp_path / "shared-model")

    network = f"secp-hosts-{os.getpid()}"
    sh(["docker", "network", "create", network])
    ports = dict(zip(HOSTS, free_ports(3), strict=True))
    override = tmp_path / "network.override.yml"  # this machine's stand-in for the hosts' own networks
    override.write_text(yaml.safe_dump({"networks": {"default": {"external": True, "name": network}}}))
    projects = {host: f"secp-{host}-{os.getpid()}" for host in HOSTS}
    uid = "10001" if os.geteuid() == 0 else str(os.getuid())

    def compose(host: str) -> list:
        return [
            *compose_command(),
            "--project-name",
            projects[host],
            "--file",
            recipe / f"{host}.compose.yml",
            "--file",
            override,
        ]

    def env(host: str) -> dict[str, str]:
        stage = tmp_path / f"host-{host}" / f"party{HOSTS[host]}"
        publish = f"127.0.0.1:{ports[host]}"
        return {**os.environ, "SECP_IMAGE": image, "SECP_STAGE": str(stage), "SECP_PUBLISH": publish}

    try:
        for host, participant in HOSTS.items():
            # The operator stages one host's folder and ships it there (here: another directory).
            sh(
                [
                    sys.executable,
                    ROOT / "deploy" / "stage.py",
                    "--config",
                    operator / "cluster.yaml",
                    "--model",
                    tmp_path / "shared-model",
                    "--out",
                    tmp_path / f"host-{host}",
                    "--participant",
                    participant,
                    *(["--uid", uid] if os.geteuid() == 0 else []),
                ]
            )
            sh([*compose(host), "up", "--detach"], env=env(host), timeout=180)
        for host in HOSTS:
            wait_healthy(projects[host], [host])
        sandboxes, addresses = set(), set()
        for host, participant in HOSTS.items():
            info = inspect(container_of(projects[host], host))
            sandboxes.add(info["NetworkSettings"]["SandboxKey"])
            addresses.add(info["NetworkSettings"]["Networks"][network]["IPAddress"])
            assert sorted(m["Destination"] for m in info["Mounts"]) == ["/srv/secp", "/var/lib/secp"]
            staged = sorted(p.name for p in (tmp_path / f"host-{host}" / f"party{participant}").rglob("*"))
            others = [n for n in ("secp-p0", "secp-p1", "secp-dealer") if n != f"secp-{host}"]
            assert not any(o in f for o in others for f in staged), staged
        assert len(sandboxes) == 3 and len(addresses) == 3  # three network namespaces, three addresses

        # The data owner's copy: the same file, its addresses the ones it reaches the hosts by.
        owner = tmp_path / "owner"
        owner.mkdir()
        text = yaml.safe_load((operator / "cluster.yaml").read_text())
        for party in text["parties"]:
            host = next(h for h, p in HOSTS.items() if p == party["participant"])
            party["address"] = f"127.0.0.1:{ports[host]}"
            del party["listen"]
        certs = owner / "certs"
        certs.mkdir()
        for name in ("ca.pem", "secp-data-owner.pem", "secp-data-owner.key"):
            shutil.copy2(operator / "certs" / name, certs / name)
        text["tls"] = {"dir": "certs"}
        (owner / "cluster.yaml").write_text(yaml.safe_dump(text, sort_keys=False))
        job = tiny_config(
            tmp_path / "shared-model",
            data,
            task,
            backend="secure",
            cluster=str(owner / "cluster.yaml"),
            popsize=6,
            eval_every=6,
        )
        wait_reachable(owner / "cluster.yaml")
        run_options = owner / "run.yaml"
        run_options.write_text(yaml.safe_dump(job.model_dump(mode="json")))
        run = owner / "run"
        result = json.loads(
            sh(
                [
                    BIN / "secp-tune",
                    "run",
                    "--task",
                    job.task,
                    "--config",
                    run_options,
                    "--out",
                    run,
                    "--budget",
                    12,
                    "--json",
                    "--quiet",
                ],
                timeout=600,
            ).stdout
        )
        assert result["private"] is True and result["backend"] == "secure 2pc"
        assert result["server_bytes"] > 0 and result["server_rounds"] > 0
        assert len(RunFolder(run).read_history()) == 3
        scored = json.loads(
            sh([BIN / "secp-tune", "eval", run, "--split", "test", "--json"], timeout=600).stdout
        )
        assert scored["private"] is True and scored["examples"] == 32
    finally:
        for host in HOSTS:
            print(sh([*compose(host), "logs", "--no-color"], env=env(host), check=False).stdout[-3000:])
        for host in HOSTS:
            sh(
                [*compose(host), "down", "--volumes", "--timeout", "20"],
                env=env(host),
                check=False,
                timeout=180,
            )
        sh(["docker", "network", "rm", network], check=False)
    for host in HOSTS:
        assert project_containers(projects[host]) == []
        assert project_volumes(projects[host]) == []
    assert sh(["docker", "network", "ls", "-q", "--filter", f"name={network}"]).stdout.strip() == ""
