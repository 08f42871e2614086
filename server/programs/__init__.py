"""The program registry: the secure computations a job may name (``JobSpec.program``).

Built-in programs (``affine``, ``mlp``, ``rounds``) need no model; model programs (the secure forward
of the shared encoder) are registered by :mod:`server.programs.model` when the model code is present.
"""

from __future__ import annotations

from server.programs.base import NoParams, PlanError, Program
from server.programs.builtin import BUILTIN


def _registry() -> dict[str, Program]:
    programs: dict[str, Program] = {cls.name: cls() for cls in BUILTIN}
    return programs


PROGRAMS: dict[str, Program] = _registry()


def get_program(name: str) -> Program:
    try:
        return PROGRAMS[name]
    except KeyError:
        raise PlanError(f"unknown program {name!r}; this server runs {sorted(PROGRAMS)}") from None


__all__ = ["PROGRAMS", "NoParams", "PlanError", "Program", "get_program"]
