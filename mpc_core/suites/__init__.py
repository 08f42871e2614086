"""Protocol suites: one module per suite, one interface (:class:`~mpc_core.suites.base.Suite`).

A suite's facts (participants, compute parties, dealer, slots, split and combine) are class attributes
of its class, so processes that only need the facts (a data owner splitting inputs, a server checking
its configuration) look the class up by its configuration name and build nothing.
"""

from __future__ import annotations

from mpc_core.suites.additive2pc import Additive2PC
from mpc_core.suites.base import Suite
from mpc_core.suites.replicated3pc import Replicated3PC

SUITES: dict[str, type[Suite]] = {cls.name: cls for cls in (Additive2PC, Replicated3PC)}


def suite_class(name: str) -> type[Suite]:
    """The suite class registered under a configuration name (its facts, split and combine)."""
    try:
        return SUITES[name]
    except KeyError:
        raise ValueError(f"unknown suite {name!r}; choose one of {sorted(SUITES)}") from None


__all__ = ["SUITES", "Additive2PC", "Replicated3PC", "Suite", "suite_class"]
