"""The contract between the roles: what the data owner, the model owner and the servers all read.

``cluster`` (the cluster file's schema), ``channels`` (mutual TLS credentials, channel options and caller
identities), ``manifest`` (the shared model's public manifest and the one reader of its share files),
``embedding`` (the public embedding layer) and ``inputs`` (token ids with prompt placeholders): both are
plaintext preprocessing that the data owner and the model owner's adaptation tool compute alike.
Nothing here belongs to one role: the data owner and the servers both import this package and never
each other.  It may import ``mpc_core`` and ``proto`` only (see docs/architecture.md).
"""
