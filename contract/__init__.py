"""The contract between the roles: what the data owner, the model owner and the servers all read.

``cluster`` (the cluster file's schema), ``channels`` (mutual TLS credentials, channel options and caller
identities), ``manifest`` (the shared model's public manifest and the one reader of its share files).
Nothing here belongs to one role: the data owner and the servers both import this package and never
each other.  It may import ``mpc_core`` and ``proto`` only (see docs/architecture.md).
"""
