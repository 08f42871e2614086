"""Loss-oracle backends: ``plain`` (plaintext, NOT PRIVATE, for studies) and ``secure`` (the cluster)."""
