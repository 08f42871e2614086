"""``secp-cluster``: a whole cluster on this machine.

    secp-cluster certs  --config cluster.yaml     # local CA + one certificate per participant and data owner
    secp-cluster up     --config cluster.yaml     # start every server, wait until all are SERVING
    secp-cluster status --config cluster.yaml     # pid, health and open jobs of each server
    secp-cluster down   --config cluster.yaml     # stop them (SIGTERM, then SIGKILL after 10 s)
    secp-cluster health --config cluster.yaml --party 0   # exit 0 iff that server is SERVING

Without ``--config`` the embedded single-machine default is used (the same as ``cluster.example.yaml``:
2pc, ports 50051-50053 on 127.0.0.1, certificates under ``.cluster/certs``, logs under
``.cluster/run/logs``).  ``up`` creates the certificates when they do not exist yet.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import click

from cluster_ops.defaults import DEFAULT_CONFIG_YAML
from contract.cluster import ClusterConfig, ConfigError, load_config, parse_config


def _load(config_path: str | None, write_default: bool = True) -> tuple[ClusterConfig, str]:
    """The configuration and the file the servers should read (the default is written to the run dir)."""
    try:
        if config_path:
            return load_config(config_path), str(Path(config_path).absolute())
        config = parse_config(DEFAULT_CONFIG_YAML, base=Path.cwd())
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if not write_default:
        return config, ""
    path = config.run_dir / "cluster.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    from contract.cluster import dump_config

    path.write_text(dump_config(config))
    return config, str(path.absolute())


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="cluster configuration (default: the embedded local 2pc one)",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Run a secp-tuning cluster's servers as processes on this machine."""


@main.command()
@config_option
@click.option("--overwrite", is_flag=True, help="replace existing certificates (and the CA)")
def certs(config_path: str | None, overwrite: bool) -> None:
    """Create a local CA and certificates for every participant and the data owner."""
    from cluster_ops.certs import write_cluster_certs

    config, _ = _load(config_path)
    try:
        written = write_cluster_certs(config, overwrite=overwrite)
    except FileExistsError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {len(written)} files to {config.tls.dir} (keys with mode 600)")


@main.command()
@config_option
@click.option("--insecure", is_flag=True, help="no TLS (local development only)")
@click.option("--timeout", "timeout_s", default=60.0, show_default=True, help="seconds to wait for SERVING")
def up(config_path: str | None, insecure: bool, timeout_s: float) -> None:
    """Start every server of the cluster and wait until all serve."""
    from cluster_ops.certs import write_cluster_certs
    from cluster_ops.launcher import LocalCluster, is_our_server, read_state

    config, path = _load(config_path)
    state = read_state(config.run_dir)
    if state is not None and any(is_our_server(r.pid, state.config) for r in state.processes):
        raise click.ClickException(
            f"the cluster in {config.run_dir} is already up; run `secp-cluster down` first"
        )
    if not insecure and not config.tls.ca_path().exists():
        write_cluster_certs(config)
        click.echo(f"created a local CA and certificates in {config.tls.dir}")
    if insecure:
        click.secho(
            "WARNING: starting the cluster WITHOUT TLS (--insecure): development only", fg="red", err=True
        )
    cluster = LocalCluster(config, path, insecure=insecure)
    try:
        cluster.start(timeout_s=timeout_s)
    except (RuntimeError, TimeoutError) as exc:
        raise click.ClickException(str(exc)) from None
    for party in config.parties:
        proc = cluster.procs[party.participant]
        click.echo(
            f"{party.name:<20} {party.role:<7} {party.address:<22} pid {proc.pid:<8} "
            f"log {cluster.log_path(party.participant)}"
        )
    click.echo(f"{config.suite} cluster {config.name!r} is up")


@main.command()
@config_option
def down(config_path: str | None) -> None:
    """Stop the servers started by `up`."""
    from cluster_ops.launcher import stop_recorded

    config, _ = _load(config_path)
    stopped = stop_recorded(config.run_dir)
    click.echo(f"stopped {', '.join(stopped)}" if stopped else "no running servers recorded")


@main.command()
@config_option
def status(config_path: str | None) -> None:
    """Show each server's process, health and open jobs (exit code 1 unless all serve)."""
    from cluster_ops.launcher import health_status, is_our_server, read_state
    from contract.channels import CredentialError, load_credentials

    config, _ = _load(config_path)
    state = read_state(config.run_dir)
    insecure = bool(state and state.insecure)
    pids = {r.participant: r.pid for r in state.processes} if state else {}
    try:
        creds = None if insecure else load_credentials(config, config.data_owner.name)
    except CredentialError as exc:
        raise click.ClickException(str(exc)) from None
    jobs = _open_jobs(config, insecure)
    all_serving = True
    for party in config.parties:
        pid = pids.get(party.participant)
        alive = pid is not None and state is not None and is_our_server(pid, state.config)
        health = health_status(party.address, party.name, creds, caller=config.data_owner.name)
        all_serving &= health == "SERVING"
        click.echo(
            f"{party.name:<20} {party.role:<7} {party.address:<22} "
            f"{'pid ' + str(pid) if alive else 'not started here':<16} {health:<12} "
            f"jobs {jobs.get(party.participant, '-')}"
        )
    sys.exit(0 if all_serving else 1)


@main.command()
@config_option
@click.option("--party", "participant", type=click.IntRange(0, 2), required=True, help="participant to check")
@click.option(
    "--as", "identity", default=None, help="identity whose certificate to use (default: the participant's)"
)
@click.option("--insecure", is_flag=True, help="the cluster runs without TLS")
@click.option("--timeout", "timeout_s", default=3.0, show_default=True)
def health(
    config_path: str | None, participant: int, identity: str | None, insecure: bool, timeout_s: float
) -> None:
    """Exit 0 iff one server reports SERVING (standard gRPC health checking; container health checks)."""
    from cluster_ops.launcher import health_status
    from contract.channels import CredentialError, load_credentials

    config, _ = _load(config_path, write_default=False)
    party = config.party(participant)
    name = identity or party.name
    try:
        creds = None if insecure else load_credentials(config, name)
    except CredentialError as exc:
        raise click.ClickException(str(exc)) from None
    status = health_status(party.address, party.name, creds, timeout_s=timeout_s, caller=name)
    click.echo(f"{party.name} {status}")
    sys.exit(0 if status == "SERVING" else 1)


def _open_jobs(config: ClusterConfig, insecure: bool) -> dict[int, int]:
    """Open jobs per reachable server (asked as the data owner; left out where it cannot ask)."""
    import grpc

    from data_owner.client import ClusterClient
    from proto.api import party_pb2

    try:
        client = ClusterClient(config, insecure=insecure, deadline_s=3.0)
    except Exception:
        return {}
    jobs = {}
    try:
        for p in client.participants:
            with contextlib.suppress(grpc.RpcError):
                jobs[p] = client.unary("ServerInfo", party_pb2.ServerInfoRequest(), 3.0)(p).open_jobs
    finally:
        client.close()
    return jobs


if __name__ == "__main__":
    main()
