"""``secp-server``: run one participant of a cluster.

    secp-server --config cluster.yaml --party 0        # compute party P0
    secp-server --config cluster.yaml --role dealer    # the 2pc dealer (participant 2)

Mutual TLS is the default; ``--insecure`` (development only) turns it off and says so loudly.
Each party runs numpy with one BLAS thread unless the environment says otherwise: parties that share
a machine would otherwise fight over its cores.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import asyncio  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402

import click  # noqa: E402


def resolve_participant(suite: str, party: int | None, role: str) -> int:
    """The participant number from ``--party`` and ``--role`` (checked against the suite's facts)."""
    from mpc_core.suites import suite_class

    facts = suite_class(suite)
    if role == "dealer":
        if facts.dealer is None:
            raise click.UsageError(
                f"a {suite} cluster has no dealer; start its parties with --party 0, 1 and 2"
            )
        if party not in (None, facts.dealer):
            raise click.UsageError(
                f"the dealer is participant {facts.dealer}; drop --party or pass --party {facts.dealer}"
            )
        return facts.dealer
    if party is None:
        raise click.UsageError("pass --party N (0, 1 or 2) or --role dealer")
    if facts.is_dealer(party):
        raise click.UsageError(
            f"participant {party} of a {suite} cluster is the dealer: start it with --role dealer"
        )
    return party


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="cluster configuration (YAML or TOML)",
)
@click.option("--party", type=click.IntRange(0, 2), default=None, help="participant number")
@click.option("--role", type=click.Choice(["party", "dealer"]), default="party", show_default=True)
@click.option("--insecure", is_flag=True, help="no TLS and unverified identities (local development only)")
@click.option(
    "--log-level", default="info", show_default=True, type=click.Choice(["debug", "info", "warning", "error"])
)
def main(config_path: str, party: int | None, role: str, insecure: bool, log_level: str) -> None:
    """Run one server (compute party or dealer) of a secp-tuning cluster."""
    from contract.cluster import ConfigError, load_config
    from mpc_core.allocator import tune_allocator

    tune_allocator()  # before the first large array: see mpc_core/allocator.py

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    participant = resolve_participant(config.suite, party, role)
    name = config.party(participant).name
    logging.basicConfig(
        level=getattr(logging, log_level.upper()),
        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("grpc").setLevel(logging.WARNING)

    from contract.channels import CredentialError
    from server.app import serve
    from server.model_store import ModelError

    try:
        asyncio.run(serve(config, participant, insecure=insecure))
    except (CredentialError, ModelError, OSError) as exc:
        logging.getLogger("secp-server").error("cannot start: %s", exc)
        sys.exit(2)


if __name__ == "__main__":
    main()
