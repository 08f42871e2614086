"""docker-compose.yml and the Dockerfile, checked structurally against the cluster configuration (no
Docker engine runs here): one service per participant with the right command, address, port, health
check and only its own certificate, key and share file mounted read-only."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from contract.cluster import ClusterConfig, load_config, parse_config
from model_owner.share import party_file_name

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def inner(compose) -> ClusterConfig:
    """The configuration the containers read (embedded in the compose file)."""
    return parse_config(compose["configs"]["cluster"]["content"], base=Path("/"))


@pytest.fixture(scope="module")
def example() -> ClusterConfig:
    """What the data owner on the host reads: cluster.example.yaml."""
    return load_config(ROOT / "cluster.example.yaml")


def test_container_config_matches_the_example(inner, example):
    for field in ("name", "suite", "frac_bits", "data_owner", "limits", "network", "development"):
        assert getattr(inner, field) == getattr(example, field), field
    assert [(p.participant, p.name, p.role, p.port) for p in inner.parties] == [
        (p.participant, p.name, p.role, p.port) for p in example.parties
    ]
    assert inner.tls.dir == Path("/certs") and inner.model == Path("/model")
    assert not inner.development.allow_fixed_seeds


def _volumes(service: dict) -> dict[str, str]:
    out = {}
    for volume in service["volumes"]:
        host, target, mode = volume.split(":")
        assert mode == "ro", f"{volume} must be read-only"
        out[target] = host
    return out


def test_one_service_per_participant(compose, inner, example):
    services = compose["services"]
    assert set(services) == {p.host for p in inner.parties}
    target = compose["x-server"]["configs"][0]["target"]
    for party in inner.parties:
        service = services[party.host]
        assert service["configs"] == [{"source": "cluster", "target": target}]
        role = ["--role", "dealer"] if party.role == "dealer" else ["--party", str(party.participant)]
        assert service["command"] == ["--config", target, *role]
        # the host port is the example's (what the data owner dials); the container listens on it
        host_port = example.party(party.participant).port
        assert service["ports"] == [f"127.0.0.1:{host_port}:{party.port}"]
        assert party.listen == f"0.0.0.0:{party.port}"
        health = service["healthcheck"]["test"]
        assert health == [
            "CMD",
            "secp-cluster",
            "health",
            "--config",
            target,
            "--party",
            str(party.participant),
        ]


def test_each_service_mounts_only_its_own_secrets(compose, inner, example):
    certs_host = "./" + str(example.tls.dir.relative_to(ROOT))
    for party in inner.parties:
        mounts = _volumes(compose["services"][party.host])
        expected = {
            str(inner.tls.ca_path()): f"{certs_host}/ca.pem",
            str(inner.tls.cert_path(party.name)): f"{certs_host}/{party.name}.pem",
            str(inner.tls.key_path(party.name)): f"{certs_host}/{party.name}.key",
            str(inner.model / "manifest.json"): "./.cluster/model/manifest.json",
        }
        if party.participant in inner.compute_parties:
            share = party_file_name(party.participant)
            expected[str(inner.model / share)] = f"./.cluster/model/{share}"
        assert mounts == expected, party.name
        others = [p.name for p in inner.parties if p.name != party.name]
        assert not any(other in host for other in others for host in mounts.values())


def test_server_template_is_hardened(compose):
    template = compose["x-server"]
    assert template["read_only"] is True
    assert template["build"] == "."
    assert re.fullmatch(r"\$\{SECP_UID:-\d+\}:\$\{SECP_GID:-\d+\}", template["user"])


def test_dockerfile_builds_the_server_image():
    text = (ROOT / "Dockerfile").read_text()
    assert text.startswith("#") and "FROM python:3.11" in text
    assert "python -m proto.build" in text
    assert 'ENTRYPOINT ["secp-server"]' in text
    assert re.search(r"^USER (?!root)\w+", text, re.MULTILINE)
    assert "torch" not in text.split("RUN pip install", 1)[1].split("WORKDIR", 1)[0]
    for line in text.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"Dockerfile copies a missing path: {source}"
