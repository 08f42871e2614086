"""The party process: one participant's party and peer APIs, its jobs, and the programs it runs.

``secp-server`` (:mod:`server.cli`) runs one participant.  The cluster file's schema and the TLS helpers
are the roles' shared contract (:mod:`contract`); launching, certificates and status are operator
tooling (:mod:`cluster_ops`, ``secp-cluster``).  See docs/cluster.md and docs/architecture.md.
"""
