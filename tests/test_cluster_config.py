"""The cluster configuration, certificates and generated gRPC code (no server processes)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import click
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cluster_ops.certs import write_cluster_certs
from cluster_ops.defaults import DEFAULT_CONFIG_YAML
from cluster_ops.testing import cluster_dict
from contract.channels import CredentialError, check_key_permissions, load_credentials
from contract.cluster import ConfigError, dump_config, load_config, parse_config
from proto import build
from server.cli import resolve_participant

ROOT = Path(__file__).resolve().parent.parent


def _parse(data: dict, base: Path = Path("/base")):
    return parse_config(dump_yaml(data), base=base)


def dump_yaml(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data)


def test_example_is_the_embedded_default():
    example = load_config(ROOT / "cluster.example.yaml")
    assert parse_config(DEFAULT_CONFIG_YAML, base=ROOT) == example
    assert example.suite == "2pc" and example.party(2).role == "dealer"
    assert example.tls.ca_path() == ROOT / ".cluster/certs/ca.pem"
    assert example.run_dir == ROOT / ".cluster/run"
    assert not example.development.allow_fixed_seeds


def test_relative_paths_resolve_against_the_file(tmp_path):
    data = cluster_dict("3pc", [1, 2, 3], model="shares/m", tls={"dir": "pki"})
    (tmp_path / "c.yaml").write_text(dump_yaml(data))
    config = load_config(tmp_path / "c.yaml")
    assert config.model == tmp_path / "shares/m"
    assert config.tls.cert_path("p1") == tmp_path / "pki/p1.pem"
    assert load_config(tmp_path / "c.yaml") == parse_config(dump_config(config), base=Path("/elsewhere"))


def test_toml_is_accepted(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(
        'suite = "3pc"\n'
        + "".join(
            f'[[parties]]\nparticipant = {i}\nname = "p{i}"\naddress = "127.0.0.1:{5000 + i}"\n'
            for i in range(3)
        )
    )
    assert [p.name for p in load_config(path).parties] == ["p0", "p1", "p2"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["parties"][2].update(role="party"), "participant 2 must have role 'dealer'"),
        (lambda d: d.update(suite="3pc"), "participant 2 must have role 'party'"),
        (lambda d: d["parties"].pop(), "participants 0, 1 and 2 exactly once"),
        (lambda d: d["parties"][1].update(name="p0"), "must be distinct"),
        (lambda d: d["data_owner"].update(name="p1"), "must be distinct"),
        (lambda d: d["parties"][1].update(address=d["parties"][0]["address"]), "distinct addresses"),
        (lambda d: d["parties"][0].update(address="localhost"), "host:port"),
        (lambda d: d["parties"][0].update(name="P 0"), "pattern"),
        (lambda d: d.update(typo_key=1), "typo_key"),
        (lambda d: d["limits"].update(max_message_bytes=100), "max_message_bytes"),
        (lambda d: d.update(network={"profile": "custom", "latency_ms": 5}), "bandwidth_mbps and latency_ms"),
        (lambda d: d.update(network={"profile": "lan", "latency_ms": 5}), "only read with profile 'custom'"),
    ],
)
def test_invalid_configurations_are_refused(change, message):
    data = cluster_dict("2pc", [1, 2, 3])
    change(data)
    with pytest.raises(ConfigError, match="invalid cluster configuration") as info:
        _parse(data)
    assert message in str(info.value)


def test_unreadable_or_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("parties: [unclosed")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")


def test_participant_resolution():
    assert resolve_participant("2pc", None, "dealer") == 2
    assert resolve_participant("3pc", 2, "party") == 2
    for suite, party, role, message in [
        ("3pc", None, "dealer", "has no dealer"),
        ("2pc", 2, "party", "--role dealer"),
        ("2pc", 1, "dealer", "dealer is participant 2"),
        ("2pc", None, "party", "--party N"),
    ]:
        with pytest.raises(click.UsageError, match=message):
            resolve_participant(suite, party, role)


# ---------------------------------------------------------------------------------------- certificates
def test_certificates_carry_the_configured_identities(tmp_path):
    (tmp_path / "c.yaml").write_text(dump_yaml(cluster_dict("2pc", [1, 2, 3])))
    config = load_config(tmp_path / "c.yaml")
    written = write_cluster_certs(config)
    assert all(p.exists() for p in written)
    ca = x509.load_pem_x509_certificate(config.tls.ca_path().read_bytes())
    for name, server in [("p0", True), ("p1", True), ("dealer", True), ("owner", False)]:
        cert = x509.load_pem_x509_certificate(config.tls.cert_path(name).read_bytes())
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.DNSName) == [name]
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert (ExtendedKeyUsageOID.SERVER_AUTH in usages) == server
        assert ExtendedKeyUsageOID.CLIENT_AUTH in usages
        ca.public_key().verify(
            cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm)
        )
        assert stat.S_IMODE(os.stat(config.tls.key_path(name)).st_mode) == 0o600
        assert load_credentials(config, name).name == name
    assert stat.S_IMODE(os.stat(config.tls.dir / "ca.key").st_mode) == 0o600
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_cluster_certs(config)
    before = config.tls.ca_path().read_bytes()
    write_cluster_certs(config, overwrite=True)
    assert config.tls.ca_path().read_bytes() != before


def test_unsafe_key_permissions_are_refused(tmp_path):
    key = tmp_path / "k.key"
    key.write_bytes(b"secret")
    os.chmod(key, 0o644)
    with pytest.raises(CredentialError, match="chmod 600"):
        check_key_permissions(key)
    os.chmod(key, 0o600)
    check_key_permissions(key)


def test_missing_certificates_say_how_to_make_them(tmp_path):
    (tmp_path / "c.yaml").write_text(dump_yaml(cluster_dict("2pc", [1, 2, 3])))
    with pytest.raises(CredentialError, match="secp-cluster certs"):
        config = load_config(tmp_path / "c.yaml")
        (config.tls.dir).mkdir()
        key = config.tls.key_path("p0")
        key.write_bytes(b"")
        os.chmod(key, 0o600)
        load_credentials(config, "p0")


# ---------------------------------------------------------------------------------------- generated code
def test_generated_grpc_code_is_current_and_regenerates_when_stale():
    build.ensure_generated()
    assert build.is_current()
    from proto.api import party_pb2, peer_pb2

    assert {m.name for m in party_pb2.DESCRIPTOR.services_by_name["Party"].methods} == {
        "ServerInfo",
        "OpenJob",
        "Upload",
        "Evaluate",
        "FetchResult",
        "JobStatus",
        "CloseJob",
        "Generate",
    }
    assert peer_pb2.DESCRIPTOR.services_by_name["Peer"].methods_by_name["Exchange"].client_streaming
    generated = build.PROTO_DIR / "peer_pb2.py"
    stale = (build.PROTO_DIR / "peer.proto").stat().st_mtime - 3600  # older than its source, however old
    os.utime(generated, (stale, stale))
    assert not build.is_current()
    build.ensure_generated()
    assert build.is_current() and generated.stat().st_mtime > stale
