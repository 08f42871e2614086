"""The program registry: the secure computations a job may name (``JobSpec.program``).

Small programs (``affine``, ``mlp``, ``rounds``, ``model_linear``: :mod:`server.programs.builtin`) serve
tests and benchmarks; ``prompt_tuning`` (:mod:`server.programs.tuning`) is the batched secure forward of
the shared encoder that the data owner's tuning loop calls; ``decoder_tuning``
(:mod:`server.programs.decoder`) the same for a shared LLaMA-family decoder; ``gradient_tuning``
(:mod:`server.programs.gradient`) runs secure SFT or gradient prompt tuning one Adam step per batch,
with server-side checkpoints.
"""

from __future__ import annotations

from server.errors import shown
from server.programs.base import NoParams, PlanError, Program
from server.programs.builtin import BUILTIN


def _registry() -> dict[str, Program]:
    from server.programs.decoder import DecoderTuning
    from server.programs.gradient import GradientTuning
    from server.programs.tuning import PromptTuning

    return {cls.name: cls() for cls in (*BUILTIN, PromptTuning, DecoderTuning, GradientTuning)}


PROGRAMS: dict[str, Program] = _registry()


def get_program(name: str) -> Program:
    try:
        return PROGRAMS[name]
    except KeyError:
        raise PlanError(f"unknown program {shown(name)}; this server runs {sorted(PROGRAMS)}") from None


__all__ = ["PROGRAMS", "NoParams", "PlanError", "Program", "get_program"]
