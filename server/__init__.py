"""The cluster's server processes: configuration, certificates, the party and peer APIs, jobs, launcher.

``secp-server`` (:mod:`server.cli`) runs one participant; ``secp-cluster`` (:mod:`server.cluster`) runs
all of them on this machine.  See docs/cluster.md.
"""
