"""Protocol suites: one module per suite, one interface (:class:`~mpc_core.suites.base.Suite`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mpc_core.suites.additive2pc import Additive2PC
from mpc_core.suites.base import Suite
from mpc_core.suites.replicated3pc import Replicated3PC

if TYPE_CHECKING:
    from mpc_core.context import Context

SUITES: dict[str, type[Suite]] = {"2pc": Additive2PC, "3pc": Replicated3PC}


def suite_class(name: str) -> type[Suite]:
    try:
        return SUITES[name]
    except KeyError:
        raise ValueError(f"unknown suite {name!r}; choose one of {sorted(SUITES)}") from None


def make_suite(name: str, ctx: Context) -> Suite:
    return suite_class(name)(ctx)


__all__ = ["SUITES", "Additive2PC", "Replicated3PC", "Suite", "make_suite", "suite_class"]
