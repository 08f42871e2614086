"""Protocol suites: one module per suite, one interface (:class:`~mpc_core.suites.base.Suite`).

A suite's facts (participants, compute parties, dealer, slots, split and combine) are class attributes
of its class, so processes that only need the facts (a data owner splitting inputs, a server checking
its configuration) look the class up by its configuration name and build nothing.
"""

from __future__ import annotations

from typing import Literal, get_args

from mpc_core.suites.additive2pc import Additive2PC
from mpc_core.suites.base import Suite
from mpc_core.suites.replicated3pc import Replicated3PC

SUITES: dict[str, type[Suite]] = {cls.name: cls for cls in (Additive2PC, Replicated3PC)}
#: The configuration names of the registered suites, as a type for configuration schemas and manifests.
SuiteName = Literal["2pc", "3pc"]
if set(get_args(SuiteName)) != set(SUITES):  # a suite registered above must be named here too
    raise ImportError(f"SuiteName {get_args(SuiteName)} does not list the registered suites {sorted(SUITES)}")
#: The suite a cluster file, a run and the CLIs use when none is named.
DEFAULT_SUITE: SuiteName = "2pc"


def suite_class(name: str) -> type[Suite]:
    """The suite class registered under a configuration name (its facts, split and combine)."""
    try:
        return SUITES[name]
    except KeyError:
        raise ValueError(f"unknown suite {name!r}; choose one of {sorted(SUITES)}") from None


__all__ = ["DEFAULT_SUITE", "SUITES", "Additive2PC", "Replicated3PC", "Suite", "SuiteName", "suite_class"]
