"""What a job runs: a named SPMD program over shared inputs (and optionally the shared model).

A program first *plans*: from the public input shapes and parameters it checks that the request makes
sense and returns the output shapes, before any state changes or any traffic (a bad request gets
INVALID_ARGUMENT on every participant alike).  Then every participant *runs* it with its context, its
input shares (placeholders at the 2pc dealer) and the model's shares, in the same order.  Control flow
may depend on shapes and public parameters only, never on secret values.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from mpc_core.context import Context
    from mpc_core.tensor import SharedTensor
    from server.model_store import LoadedModel

Shape = tuple[int, ...]


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PlanError(ValueError):
    """The request does not fit the program (names, shapes, parameters); the message says how."""


class Program(ABC):
    """One registered program.  Subclasses set ``name``, ``Params`` and ``uses_model``."""

    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]] = NoParams
    uses_model: ClassVar[bool] = False

    def for_job(self, job_id: str, state_dir: Path | None) -> Program:
        """The instance job ``job_id`` runs (``state_dir``: this server's own folder for files it keeps).

        Stateless programs are shared by every job (``self``).  A program whose plan depends on the
        job's progress, or that keeps files on the server (checkpoints), returns a fresh instance.
        """
        return self

    def parse_params(self, params_json: str) -> BaseModel:
        try:
            return self.Params.model_validate_json(params_json or "{}")
        except ValueError as exc:
            raise PlanError(f"invalid parameters for program {self.name!r}: {exc}") from None

    @abstractmethod
    def plan(
        self, inputs: Mapping[str, Shape], params: BaseModel, model: LoadedModel | None
    ) -> dict[str, Shape]:
        """Check the request; return the output names and shapes (raise PlanError otherwise)."""

    def state_bytes(self, inputs: Mapping[str, Shape], params: BaseModel, model: LoadedModel | None) -> int:
        """Bytes of shares a batch would keep in the job's state (a cache), known from public shapes.

        Checked with the batch's inputs against ``limits.max_job_bytes`` before the batch runs; 0 by default.
        """
        return 0

    @abstractmethod
    def run(
        self,
        ctx: Context,
        inputs: Mapping[str, SharedTensor],
        params: BaseModel,
        model: Mapping[str, SharedTensor] | None,
        state: dict[str, Any],
    ) -> dict[str, SharedTensor]:
        """Compute the outputs (every participant, same calls, same order).

        ``state`` persists across the batches of one job (e.g. values computed once per job); what is
        cached in it must depend on public information only, so that every participant caches alike.
        """


def require_inputs(program: str, inputs: Mapping[str, Shape], names: tuple[str, ...]) -> None:
    """Exactly the inputs ``names`` must be declared."""
    if set(inputs) != set(names):
        raise PlanError(f"program {program!r} takes inputs {list(names)}, got {sorted(inputs)}")
