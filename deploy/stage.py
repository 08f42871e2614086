r"""Lay out what each server container mounts: one folder per participant, holding only its own secrets.

    .venv/bin/python deploy/stage.py --config cluster.example.yaml --model .cluster/model \
        --out .cluster/compose

writes ``OUT/partyN/`` for every participant N of the cluster file::

    cluster.yaml            the cluster file itself (same topology, names, suite and limits), with its
                            paths pointing inside this folder: tls.dir certs, model model, run_dir /tmp/secp,
                            state_dir /var/lib/secp (the image's writable volume)
    certs/ca.pem            the cluster CA
    certs/NAME.pem, .key    this participant's certificate and key (mode 600), nothing of the others
    model/manifest.json     the public manifest (every participant, the dealer too)
    model/partyN.safetensors  this participant's share file (compute parties only)

A container mounts its folder read-only at ``/srv/secp`` and runs ``secp-server --config
/srv/secp/cluster.yaml``.  So the compose files name no identity, port or suite: the cluster file that
``make cluster`` and ``make demo`` use is the one source of the topology.  The key must belong to the
user the container runs as (servers refuse keys that others may read): ``--uid`` (default: 10001, the
image's user, when run as root; your own uid otherwise, then ``export SECP_UID=$(id -u)``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import yaml

from contract.cluster import ClusterConfig, ConfigError, load_config

#: The unprivileged user of the server image (Dockerfile: useradd --uid 10001).
IMAGE_UID = 10001
#: The servers' state_dir inside the containers: the image creates it, compose mounts a volume there.
CONTAINER_STATE_DIR = "/var/lib/secp"


def _copy(source: Path, target: Path, mode: int, owner: tuple[int, int] | None) -> None:
    if not source.is_file():
        raise FileNotFoundError(f"{source} is missing")
    shutil.copyfile(source, target)
    os.chmod(target, mode)
    if owner is not None:
        os.chown(target, *owner)


def _share_file(model: Path, participant: int) -> str:
    """The share file the manifest lists for ``participant`` (the server checks its hash on load)."""
    manifest = json.loads((model / "manifest.json").read_text(encoding="utf-8"))
    for entry in manifest.get("party_files", []):
        if entry.get("party") == participant:
            return str(entry["file"])
    raise ValueError(f"{model}/manifest.json lists no share file for participant {participant}")


def stage_party(
    config: ClusterConfig,
    source_text: dict,
    participant: int,
    model: Path | None,
    out: Path,
    owner: tuple[int, int] | None,
) -> Path:
    """Write ``out/party{participant}`` (replacing an older one) and return it."""
    config.party(participant)  # KeyError for a participant the cluster file does not have
    final = out / f"party{participant}"
    folder = out / f".party{participant}.tmp"  # built aside, so a failure leaves no half-staged folder
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "certs").mkdir(parents=True)
    try:
        _fill(config, source_text, participant, model, folder, owner)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    folder.rename(final)
    return final


def _fill(
    config: ClusterConfig,
    source_text: dict,
    participant: int,
    model: Path | None,
    folder: Path,
    owner: tuple[int, int] | None,
) -> None:
    """Copy one participant's files into ``folder`` and write its cluster file."""
    party = config.party(participant)
    _copy(config.tls.ca_path(), folder / "certs" / "ca.pem", 0o644, owner)
    _copy(config.tls.cert_path(party.name), folder / "certs" / f"{party.name}.pem", 0o644, owner)
    _copy(config.tls.key_path(party.name), folder / "certs" / f"{party.name}.key", 0o600, owner)
    text = dict(source_text)
    text.update(tls={"dir": "certs"}, run_dir="/tmp/secp", state_dir=CONTAINER_STATE_DIR, model=None)
    if model is not None:
        (folder / "model").mkdir()
        _copy(model / "manifest.json", folder / "model" / "manifest.json", 0o644, owner)
        if participant in config.compute_parties:
            name = _share_file(model, participant)
            _copy(model / name, folder / "model" / name, 0o644, owner)
        text["model"] = "model"
    (folder / "cluster.yaml").write_text(
        "# Staged by deploy/stage.py from the cluster file; paths are inside this folder.\n"
        + yaml.safe_dump(text, sort_keys=False),
        encoding="utf-8",
    )
    for path in (folder, folder / "certs", *([folder / "model"] if model is not None else [])):
        os.chmod(path, 0o755)
        if owner is not None:
            os.chown(path, *owner)


def stage(
    config_path: Path,
    model: Path | None,
    out: Path,
    *,
    participants: list[int] | None = None,
    uid: int | None = None,
    gid: int | None = None,
) -> list[Path]:
    """Stage every (or the listed) participant's folder; the cluster file is validated first."""
    config = load_config(config_path)
    raw = yaml.safe_load(config_path.read_text(encoding="utf-8")) if config_path.suffix != ".toml" else None
    if raw is None:
        raw = config.model_dump(mode="json")
    model = model if model is not None else config.model
    if uid is None and os.geteuid() == 0:
        uid = IMAGE_UID
    owner = None if uid is None else (uid, gid if gid is not None else uid)
    chosen = participants if participants is not None else [p.participant for p in config.parties]
    out.mkdir(parents=True, exist_ok=True)
    return [stage_party(config, raw, p, model, out, owner) for p in chosen]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="the cluster file (topology, limits)")
    parser.add_argument("--model", type=Path, default=None, help="secp-share-model folder [the config's]")
    parser.add_argument("--out", type=Path, required=True, help="folder for party0/, party1/, party2/")
    parser.add_argument("--participant", type=int, action="append", help="stage only this one (repeat)")
    parser.add_argument("--uid", type=int, default=None, help="owner of the staged files [see above]")
    parser.add_argument("--gid", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        folders = stage(
            args.config, args.model, args.out, participants=args.participant, uid=args.uid, gid=args.gid
        )
    except (ConfigError, OSError, ValueError, KeyError) as exc:
        print(f"stage: {exc}", file=sys.stderr)
        return 2
    for folder in folders:
        print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
