"""A local certificate authority and one certificate per participant and for the data owner.

Every certificate carries its holder's configured name as common name and as DNS subject alternative
name; that name is the identity every process checks (clients pin a server's name, servers check the
caller's).  Keys are ECDSA P-256, written with mode 0600; certificates are valid for a year by default.
This is for local and test clusters: a real deployment would have each organisation hold its own key
and the certificates signed by an authority all three trust.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from contract.cluster import ClusterConfig

KEY_MODE = 0o600


@dataclass(frozen=True)
class Authority:
    """A CA's key and certificate (in memory)."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self.key)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)  # tolerate small clock skew


def create_authority(common_name: str = "secp local CA", days: int = 365) -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now())
        .not_valid_after(_now() + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return Authority(key, cert)


def issue(
    authority: Authority,
    name: str,
    *,
    server: bool = True,
    days: int = 365,
    valid_from: dt.datetime | None = None,
) -> tuple[bytes, bytes]:
    """A (certificate PEM, key PEM) for identity ``name``; ``server`` adds the server-auth usage.

    Valid for ``days`` from ``valid_from`` (default: now); tests pass other windows for expired and
    not-yet-valid certificates.
    """
    start = _now() if valid_from is None else valid_from
    key = ec.generate_private_key(ec.SECP256R1())
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if server else [])
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(authority.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .sign(authority.key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def write_private(path: Path, data: bytes) -> None:
    """Write a key file readable by its owner only (created with mode 0600, never briefly wider)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, KEY_MODE)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, KEY_MODE)


def write_cluster_certs(config: ClusterConfig, *, overwrite: bool = False) -> list[Path]:
    """Create the CA and every participant's and the data owner's certificate under ``config.tls``.

    Refuses to replace existing files unless ``overwrite`` (a new CA invalidates every old certificate).
    """
    tls = config.tls
    names = [p.name for p in config.parties] + [config.data_owner.name]
    targets = [tls.ca_path(), tls.dir / "ca.key"]
    for name in names:
        targets += [tls.cert_path(name), tls.key_path(name)]
    existing = [t for t in targets if t.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"certificate files already exist (use --overwrite to replace): {existing[0]}")
    authority = create_authority(f"{config.name} local CA")
    tls.ca_path().parent.mkdir(parents=True, exist_ok=True)
    tls.ca_path().write_bytes(authority.cert_pem)
    write_private(tls.dir / "ca.key", authority.key_pem)
    for party in config.parties:
        cert, key = issue(authority, party.name, server=True)
        tls.cert_path(party.name).write_bytes(cert)
        write_private(tls.key_path(party.name), key)
    cert, key = issue(authority, config.data_owner.name, server=False)
    tls.cert_path(config.data_owner.name).write_bytes(cert)
    write_private(tls.key_path(config.data_owner.name), key)
    return targets


def load_authority(cert_path: Path, key_path: Path) -> Authority:
    """Read a CA written by :func:`write_cluster_certs` (to issue more certificates, e.g. in tests)."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path} is not an EC private key")
    return Authority(key, cert)
