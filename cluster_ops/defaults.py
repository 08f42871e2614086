"""The single-machine cluster that ``secp-cluster`` uses without ``--config``.

One source for every local topology: this package's ``cluster.example.yaml`` (the repository's root
``cluster.example.yaml`` is a link to it), read by ``secp-cluster``, ``make cluster``, ``make demo`` and the
container staging alike. It ships inside the package, so an installed copy works without the checkout.
"""

from importlib.resources import files

DEFAULT_CONFIG_YAML = files("cluster_ops").joinpath("cluster.example.yaml").read_text(encoding="utf-8")
