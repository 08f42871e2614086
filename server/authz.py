"""Who may call what: the party API only from the registered data owner, the peer API only from the
configured servers.  Refusals carry UNAUTHENTICATED (no identity at all) or PERMISSION_DENIED (an
identity that is not allowed here) and happen before a handler reads or changes any state.
"""

from __future__ import annotations

import logging

import grpc

from contract.channels import caller_names
from contract.cluster import ClusterConfig
from server.errors import denied, unauthenticated

log = logging.getLogger(__name__)


class Authorizer:
    """Checks callers of one server against the cluster configuration."""

    def __init__(self, config: ClusterConfig, participant: int, insecure: bool) -> None:
        self.config = config
        self.participant = participant
        self.insecure = insecure

    def _names(self, context: grpc.aio.ServicerContext, api: str) -> list[str]:
        names = caller_names(context, self.insecure)
        if not names:
            log.warning("refused an unauthenticated %s call from %s", api, context.peer())
            raise unauthenticated(f"the {api} API needs a client certificate issued by the cluster CA")
        return names

    def data_owner(self, context: grpc.aio.ServicerContext) -> str:
        """The data owner's name, or a refusal."""
        names = self._names(context, "party")
        if self.config.data_owner.name not in names:
            log.warning("refused a party-API call from %s (%s)", names, context.peer())
            raise denied(
                f"{names[0]!r} may not call the party API; only the registered data owner "
                f"{self.config.data_owner.name!r} may"
            )
        return self.config.data_owner.name

    def peer(self, context: grpc.aio.ServicerContext) -> int:
        """The calling server's participant number, or a refusal (never this server itself)."""
        names = self._names(context, "peer")
        matches = {self.config.participant_of(n) for n in names} - {None}
        if len(matches) != 1:
            log.warning("refused a peer-API call from %s (%s)", names, context.peer())
            raise denied(f"{names[0]!r} is not a configured peer of this cluster")
        (participant,) = matches
        if participant == self.participant:
            raise denied(f"{names[0]!r} is this server's own identity, not a peer")
        return participant
