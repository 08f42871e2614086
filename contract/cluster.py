"""The cluster configuration: one YAML (or TOML) file validated by pydantic, read by every process.

It names the participants (number, certificate identity, address, role), the suite and fixed-point
setting, the model folder, the TLS files, the limits every server enforces, and the network shaping.
Relative paths are resolved against the folder holding the configuration file.  Unknown keys are
errors (a typo must not silently fall back to a default).

The identity of a participant is its ``name``: the common name and DNS subject alternative name of its
certificate.  Clients check a server's certificate against the configured name (not the address), and
servers check callers' certificates against the names configured here.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mpc_core.suites import DEFAULT_SUITE, SuiteName, suite_class

NAME_PATTERN = r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$"
MiB = 1 << 20
GiB = 1 << 30


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PartyConfig(_Strict):
    """One participant: compute party 0, 1 (and 2 in 3pc) or the 2pc dealer (participant 2)."""

    participant: int = Field(ge=0, le=2)
    name: str = Field(pattern=NAME_PATTERN, description="certificate identity (CN and DNS SAN)")
    address: str = Field(description="host:port where the others reach this participant")
    listen: str | None = Field(default=None, description="host:port to bind (default: address)")
    role: Literal["party", "dealer"] = "party"

    @field_validator("address", "listen")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None:
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected host:port, got {value!r}")
        return value

    @property
    def bind(self) -> str:
        return self.listen or self.address

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    @property
    def host(self) -> str:
        return self.address.rpartition(":")[0]


class DataOwnerConfig(_Strict):
    """The one client allowed to call the party API."""

    name: str = Field(default="secp-data-owner", pattern=NAME_PATTERN)


class TLSConfig(_Strict):
    """Where certificates live: ``dir/ca.pem``, ``dir/NAME.pem`` and ``dir/NAME.key`` unless overridden."""

    dir: Path = Path(".cluster/certs")
    ca: Path | None = None

    def ca_path(self) -> Path:
        return self.ca or self.dir / "ca.pem"

    def cert_path(self, name: str) -> Path:
        return self.dir / f"{name}.pem"

    def key_path(self, name: str) -> Path:
        return self.dir / f"{name}.key"


class Limits(_Strict):
    """What every server enforces (and the data owner's client uses for its own calls)."""

    max_message_bytes: int = Field(default=1 * MiB, ge=64 * 1024, le=64 * MiB)
    max_upload_bytes: int = Field(default=4 * GiB, ge=1, description="one uploaded share")
    max_job_bytes: int = Field(default=16 * GiB, ge=1, description="all shares uploaded to one job")
    max_peer_tensor_bytes: int = Field(default=16 * GiB, ge=1, description="one tensor from a peer")
    max_inputs: int = Field(default=64, ge=1, description="named uploads per job")
    max_jobs: int = Field(default=8, ge=1, description="open jobs on one server")
    max_server_bytes: int = Field(
        default=32 * GiB, ge=1, description="all jobs' uploaded shares on one server, stored and in flight"
    )
    max_memory_bytes: int | None = Field(
        default=None,
        ge=16 * MiB,
        description="resident memory above which a server refuses new jobs, uploads and batches "
        "(default: 90% of the machine's memory)",
    )
    shutdown_grace_s: float = Field(
        default=5.0, ge=0, description="on SIGTERM, how long running batches may take to finish"
    )
    max_params_bytes: int = Field(default=64 * 1024, ge=2)
    call_deadline_s: float = Field(default=3600.0, gt=0, description="data owner's deadline per call")
    connect_timeout_s: float = Field(default=20.0, gt=0, description="peer stream set-up")
    peer_timeout_s: float = Field(default=300.0, gt=0, description="longest wait for one peer message")
    job_idle_timeout_s: float = Field(default=3600.0, gt=0, description="an untouched job is dropped")


class NetworkConfig(_Strict):
    """Shaping of peer traffic: ``lan`` (3 Gbps, 0.8 ms), ``wan`` (100 Mbps, 80 ms), ``custom`` or none."""

    profile: Literal["none", "lan", "wan", "custom"] = "none"
    bandwidth_mbps: float | None = Field(default=None, gt=0)
    latency_ms: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _custom_needs_values(self) -> NetworkConfig:
        custom = self.bandwidth_mbps is not None or self.latency_ms is not None
        if self.profile == "custom" and (self.bandwidth_mbps is None or self.latency_ms is None):
            raise ValueError("network profile 'custom' needs bandwidth_mbps and latency_ms")
        if self.profile != "custom" and custom:
            raise ValueError("bandwidth_mbps and latency_ms are only read with profile 'custom'")
        return self


class DevelopmentConfig(_Strict):
    """Development switches; each weakens security and is logged loudly when on."""

    allow_fixed_seeds: bool = Field(
        default=False, description="accept a job's test_seed (the data owner could then unmask everything)"
    )


class ClusterConfig(_Strict):
    """The whole cluster, as every process reads it."""

    name: str = Field(default="secp", pattern=NAME_PATTERN)
    suite: SuiteName = DEFAULT_SUITE
    frac_bits: int = Field(default=16, ge=0, le=40)
    model: Path | None = Field(default=None, description="folder written by secp-share-model")
    run_dir: Path = Field(default=Path(".cluster/run"), description="secp-cluster's logs and pid file")
    state_dir: Path = Field(
        default=Path(".cluster/state"),
        description="where each server keeps its own files (checkpoints of its shares), one folder per "
        "participant name",
    )
    parties: tuple[PartyConfig, ...]
    data_owner: DataOwnerConfig = DataOwnerConfig()
    tls: TLSConfig = TLSConfig()
    limits: Limits = Limits()
    network: NetworkConfig = NetworkConfig()
    development: DevelopmentConfig = DevelopmentConfig()

    @model_validator(mode="after")
    def _topology(self) -> ClusterConfig:
        numbers = sorted(p.participant for p in self.parties)
        if numbers != [0, 1, 2]:
            raise ValueError(f"parties must be participants 0, 1 and 2 exactly once each, got {numbers}")
        for p in self.parties:
            want = suite_class(self.suite).role(p.participant)
            if p.role != want:
                raise ValueError(
                    f"in a {self.suite} cluster participant {p.participant} must have role {want!r}, "
                    f"not {p.role!r}"
                )
        names = [p.name for p in self.parties] + [self.data_owner.name]
        if len(set(names)) != len(names):
            raise ValueError(f"participant and data owner names must be distinct, got {names}")
        binds = [p.bind for p in self.parties]
        if len(set(binds)) != len(binds):
            raise ValueError(f"participants must listen on distinct addresses, got {binds}")
        return self

    # ------------------------------------------------------------------ lookups
    def party(self, participant: int) -> PartyConfig:
        for p in self.parties:
            if p.participant == participant:
                return p
        raise KeyError(participant)

    def party_state_dir(self, participant: int) -> Path:
        """The folder where ``participant``'s server keeps its own files (nobody else writes there)."""
        return self.state_dir / self.party(participant).name

    def participant_of(self, name: str) -> int | None:
        """The participant number whose certificate identity is ``name`` (None if not a server)."""
        return next((p.participant for p in self.parties if p.name == name), None)

    @property
    def compute_parties(self) -> tuple[int, ...]:
        return suite_class(self.suite).compute_parties

    def resolved(self, base: Path) -> ClusterConfig:
        """A copy with every relative path made absolute against ``base``."""

        def fix(path: Path | None) -> Path | None:
            return None if path is None or path.is_absolute() else (base / path).resolve()

        tls = self.tls.model_copy(
            update={"dir": fix(self.tls.dir) or self.tls.dir, "ca": fix(self.tls.ca) or self.tls.ca}
        )
        return self.model_copy(
            update={
                "model": fix(self.model) or self.model,
                "run_dir": fix(self.run_dir) or self.run_dir,
                "state_dir": fix(self.state_dir) or self.state_dir,
                "tls": tls,
            }
        )


class ConfigError(ValueError):
    """The configuration file is missing, unreadable or invalid (the message says which and where)."""


def parse_config(text: str, *, fmt: str = "yaml", base: Path | None = None) -> ClusterConfig:
    """Validate configuration text; relative paths resolve against ``base`` (default: the cwd)."""
    try:
        raw = tomllib.loads(text) if fmt == "toml" else yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot parse the cluster configuration: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError("the cluster configuration must be a mapping at the top level")
    try:
        config = ClusterConfig.model_validate(raw)
    except ValueError as exc:
        raise ConfigError(f"invalid cluster configuration: {exc}") from None
    return config.resolved(base or Path.cwd())


def load_config(path: str | Path) -> ClusterConfig:
    """Read and validate a ``.yaml``/``.yml`` or ``.toml`` cluster file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read cluster configuration {path}: {exc.strerror}") from None
    fmt = "toml" if path.suffix == ".toml" else "yaml"
    # relative to the folder the file is named in, not the target of a link (cluster.example.yaml is one)
    return parse_config(text, fmt=fmt, base=path.absolute().parent)


def dump_config(config: ClusterConfig) -> str:
    """YAML text of a configuration (paths as strings), e.g. for tests writing a cluster file."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


JOB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
