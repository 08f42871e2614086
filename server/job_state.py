"""The state of one job on one server: its spec, its uploads, its context and links, its latest result.

Plain data, shared by the registry, the upload desk, the peer mesh and the batch runner; none of
them logs or reports a share or a result value held here.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass, field

import numpy as np

from mpc_core.context import Context
from mpc_core.tensor import SharedTensor
from mpc_core.transport.grpc_transport import GrpcTransport
from proto.contracts import TENSOR_NAME_PATTERN
from server.code_digest import protocol_code_digest
from server.errors import invalid
from server.programs import Program

MAX_NDIM = 8


def check_tensor_name(name: str) -> None:
    """Refuse a malformed tensor name (matched whole: no trailing newline or other control character)."""
    if not TENSOR_NAME_PATTERN.fullmatch(name):
        raise invalid("tensor names must be 1-64 characters from [A-Za-z0-9_.-], starting with a letter or _")


@dataclass(frozen=True)
class JobSpec:
    """What the data owner asks for; every participant must receive the same spec for a job."""

    program: str
    suite: str
    frac_bits: int
    model_digest: str = ""
    test_seed: bytes = b""

    def digest(self, job_id: str) -> bytes:
        """SHA-256 of the canonical spec: peers compare it when their stream opens."""
        canonical = json.dumps(
            {
                "job_id": job_id,
                "program": self.program,
                "suite": self.suite,
                "frac_bits": self.frac_bits,
                "model_digest": self.model_digest,
                "test_seed": hashlib.sha256(self.test_seed).hexdigest() if self.test_seed else "",
                "protocol_code": protocol_code_digest(),
            },
            sort_keys=True,
        )
        return hashlib.sha256(canonical.encode()).digest()


@dataclass
class BatchResult:
    batch: int
    outputs: dict[str, tuple[tuple[int, ...], int]]  # name -> (logical shape, fixed-point scale)
    shares: dict[str, np.ndarray]  # empty at the dealer
    seconds: float


@dataclass
class Job:
    job_id: str
    spec: JobSpec
    digest: bytes
    program: Program
    uploads: dict[str, np.ndarray] = field(default_factory=dict)
    upload_bytes: int = 0
    in_flight_bytes: int = 0  # uploads being received (reserved against the limits until stored)
    next_batch: int = 0
    result: BatchResult | None = None
    running: bool = False
    batch_inputs: frozenset[str] = frozenset()  # the inputs of the batch running or waiting for peers
    ctx: Context | None = None
    transport: GrpcTransport | None = None
    incoming: dict[int, asyncio.Future] = field(default_factory=dict)
    model_tensors: dict[str, SharedTensor] | None = None
    state: dict = field(default_factory=dict)  # the program's per-job state (same on every participant)
    evaluate_seconds: float = 0.0
    last_used: float = field(default_factory=time.monotonic)
    aborted: str | None = None
    unfetched: set[str] = field(default_factory=set)  # outputs of the latest batch not fetched yet

    def touch(self) -> None:
        self.last_used = time.monotonic()
