"""Operator tooling: start, watch and stop a cluster's servers, and make its certificates.

``cli`` (``secp-cluster``: certs, up, status, down, health), ``launcher`` (local server processes),
``certs`` (a local CA), ``testing`` (throw-away clusters for tests and benchmarks), ``defaults`` (the
embedded single-machine cluster file).  The party process itself is :mod:`server`; this package only
launches and asks it (see docs/architecture.md).
"""
