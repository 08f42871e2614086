"""docker-compose.yml, the Dockerfile and deploy/stage.py without a Docker daemon: one service per
participant of the cluster file, each mounting only its own staged folder read-only; the image's package
list covers everything the servers import.  (tests/test_cluster_containers.py runs them for real.)

The compose file holds no topology of its own (names, ports, suite come from the staged cluster file), so
no test compares two copies of it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from cluster_ops.certs import write_cluster_certs
from cluster_ops.testing import write_test_cluster, write_test_model
from contract.cluster import load_config

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "deploy"))
from stage import CONTAINER_STATE_DIR, stage  # noqa: E402


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _participant(service: dict) -> int:
    command = service["command"]
    return 2 if command[-2:] == ["--role", "dealer"] else int(command[command.index("--party") + 1])


def test_one_service_per_participant_of_the_example(compose):
    example = load_config(ROOT / "cluster.example.yaml")
    services = compose["services"]
    assert sorted(_participant(s) for s in services.values()) == [p.participant for p in example.parties]
    for name, service in services.items():
        p = _participant(service)
        assert service["command"][:2] == ["--config", "/srv/secp/cluster.yaml"]
        assert (example.party(p).role == "dealer") == ("--role" in service["command"]), name
        assert service["volumes"][0] == f"${{SECP_STAGE:-./.cluster/compose}}/party{p}:/srv/secp:ro"
        # the one writable place: this server's own named volume at the staged state_dir
        (state,) = service["volumes"][1:]
        volume, target = state.split(":")
        assert target == CONTAINER_STATE_DIR and volume in compose["volumes"]
        health = service["healthcheck"]["test"]
        assert health[:7] == [
            "CMD",
            "secp-cluster",
            "health",
            "--config",
            "/srv/secp/cluster.yaml",
            "--party",
            str(p),
        ]
        assert "ports" not in service and "configs" not in service
    dealer = next(n for n, s in services.items() if _participant(s) == 2)
    for name, service in services.items():
        if name != dealer:
            assert service["depends_on"] == {dealer: {"condition": "service_healthy"}}


def test_server_template_is_hardened(compose):
    template = compose["x-server"]
    assert template["read_only"] is True and template["tmpfs"] == ["/tmp"]
    assert template["cap_drop"] == ["ALL"] and "no-new-privileges:true" in template["security_opt"]
    assert template["network_mode"] == "host"  # traffic on the cluster file's (loopback) addresses
    assert re.fullmatch(r"\$\{SECP_UID:-10001\}:\$\{SECP_GID:-10001\}", template["user"])
    assert template["build"]["args"] == {"BASE_IMAGE": "${SECP_BASE_IMAGE:-python:3.11-slim}"}


def test_dockerfile_installs_the_fast_path_from_the_wheelhouse_only():
    text = (ROOT / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim" in text and "FROM ${BASE_IMAGE}" in text
    assert re.search(r"^USER 10001:10001$", text, re.MULTILINE)
    assert 'ENTRYPOINT ["secp-server"]' in text and "python -m proto.build" in text
    for line in re.findall(r"pip install[^\n]*", text):
        assert "--no-index" in line, f"the build must not reach an index: {line}"
    assert "import server.party_service, mpc_core.ring, torch" in text  # the build fails without torch
    requirements = (ROOT / "deploy" / "requirements-server.txt").read_text()
    assert re.search(r"^torch==2\.13\.0$", requirements, re.MULTILINE)
    for heavy in ("transformers", "cma", "matplotlib"):
        assert not re.search(rf"^{heavy}\b", requirements, re.MULTILINE)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".cluster", ".git", "tests", "data"} <= set(ignored)


#: imported when installed, not needed: torch.hub tries ``from tqdm import tqdm`` and falls back without it
OPTIONAL = {"tqdm"}


def _closure(names: list[str]) -> set[str]:
    """The distributions ``names`` pull in (installed metadata, no extras), normalised."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in seen:
            continue
        seen.add(name)
        for raw in metadata.requires(name) or []:
            req = Requirement(raw)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def test_the_image_package_list_covers_what_the_servers_import():
    """The issue's failure without Docker: the servers imported torch, which the image did not install."""
    lines = (ROOT / "deploy" / "requirements-server.txt").read_text().splitlines()
    wanted = [Requirement(line).name for line in lines if line.strip() and not line.startswith("#")]
    allowed = _closure(wanted)
    probe = (
        "import json, sys\n"
        "import server.app, server.cli, cluster_ops.cli, server.party_service, server.peer_service\n"
        "import mpc_core.ring, server.programs\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    top_level = json.loads(out)
    owners = metadata.packages_distributions()
    used = {re.sub(r"[-_.]+", "-", d).lower() for m in top_level for d in owners.get(m, [])}
    used -= {"secp-tuning", *OPTIONAL}
    assert "torch" in used
    assert used <= allowed, f"the servers import packages the image lacks: {sorted(used - allowed)}"


def test_stage_gives_each_participant_only_its_own_secrets(tmp_path: Path):
    config_path = write_test_cluster(tmp_path / "c", "2pc", certs=False)
    config = load_config(config_path)
    write_cluster_certs(config)
    write_test_model(tmp_path / "model", "2pc", {"w": [[1.0, 2.0]]})
    folders = stage(config_path, tmp_path / "model", tmp_path / "out", uid=None)
    assert [f.name for f in folders] == ["party0", "party1", "party2"]
    names = [p.name for p in config.parties] + [config.data_owner.name]
    for party, folder in zip(config.parties, folders, strict=True):
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        own = [f"certs/{party.name}.key", f"certs/{party.name}.pem", "certs/ca.pem"]
        model = ["model/manifest.json"] + (
            [f"model/party{party.participant}.safetensors"]
            if party.participant in config.compute_parties
            else []
        )
        assert files == sorted(["cluster.yaml", *own, *model]), party.name
        assert not any(other in f for other in names if other != party.name for f in files)
        assert (folder / "certs" / f"{party.name}.key").stat().st_mode & 0o077 == 0
        staged = load_config(folder / "cluster.yaml")
        assert staged.parties == config.parties and staged.limits == config.limits
        assert staged.suite == config.suite and staged.data_owner == config.data_owner
        assert staged.tls.dir == folder / "certs" and staged.model == folder / "model"
        assert str(staged.state_dir) == CONTAINER_STATE_DIR  # the image's writable volume, not the mount
        assert (folder / "model" / "manifest.json").read_bytes() == (
            tmp_path / "model" / "manifest.json"
        ).read_bytes()


def test_stage_refuses_a_missing_key_and_writes_nothing_for_it(tmp_path: Path):
    config_path = write_test_cluster(tmp_path / "c", "2pc", certs=False)
    with pytest.raises(FileNotFoundError, match="is missing"):
        stage(config_path, None, tmp_path / "out", uid=None)
