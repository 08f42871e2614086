"""Shared pieces of the gRPC fuzzers (tests/test_security_fuzz_*.py): raw channels, outcome checks,
server memory, and a byte-level mutator of valid serialized messages.

A fuzz case passes when the server answers with a *clear* status: OK, or one of the refusal codes the
API documents (docs/cluster.md, "Status codes"), with a non-empty message of bounded length.  UNKNOWN or
INTERNAL (an exception escaped a handler), UNAVAILABLE (the server went away) and DEADLINE_EXCEEDED (it
hung) are failures, as is any server process that is no longer running.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from server.config import ClusterConfig
from server.security import channel_options

Code = grpc.StatusCode

#: Refusals the APIs document; anything else (or OK with a broken server) is a finding.
CLEAR_CODES = frozenset(
    {
        Code.OK,
        Code.INVALID_ARGUMENT,
        Code.NOT_FOUND,
        Code.ALREADY_EXISTS,
        Code.FAILED_PRECONDITION,
        Code.RESOURCE_EXHAUSTED,
        Code.PERMISSION_DENIED,
        Code.UNAUTHENTICATED,
        Code.ABORTED,
    }
)
#: A refusal's message must be short: a request's field is never echoed back at length.
MAX_DETAILS_CHARS = 1024
#: Seed of every fuzzer (hypothesis and mutation): fixed, so a failure reproduces; set SECP_FUZZ_SEED to
#: explore other cases.
FUZZ_SEED = int(os.environ.get("SECP_FUZZ_SEED", "0"))
#: Resident memory a server may gain over one fuzz run (allocator slack, gRPC and protobuf caches).
RSS_GROWTH_BOUND = 32 << 20
#: Room for the client side of a raw channel: larger than any server limit, so the server enforces its own.
RAW_MESSAGE_BYTES = 64 << 20


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (VmRSS in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def raw_channel(config: ClusterConfig, participant: int, identity: str) -> grpc.Channel:
    """A mutual-TLS channel to ``participant`` under ``identity``'s certificate, with large client limits."""
    tls = config.tls
    creds = grpc.ssl_channel_credentials(
        root_certificates=tls.ca_path().read_bytes(),
        private_key=tls.key_path(identity).read_bytes(),
        certificate_chain=tls.cert_path(identity).read_bytes(),
    )
    options = [
        *channel_options(config.party(participant).name, RAW_MESSAGE_BYTES),
        ("grpc.max_metadata_size", 1 << 20),
    ]
    return grpc.secure_channel(config.party(participant).address, creds, options=options)


@dataclass
class Outcome:
    code: Code
    details: str


def outcome_of(call: Callable[[], object]) -> Outcome:
    """Run one call (draining a response stream) and return its status."""
    try:
        result = call()
        if isinstance(result, Iterable) and not isinstance(result, bytes | str):
            for _ in result:
                pass
        return Outcome(Code.OK, "")
    except grpc.RpcError as exc:
        return Outcome(exc.code(), exc.details() or "")


@dataclass
class FuzzTally:
    """What a fuzzer tried and what went wrong (kept short: the first few problems in full)."""

    name: str
    cases: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def check(self, what: str, outcome: Outcome) -> None:
        self.codes[outcome.code.name] = self.codes.get(outcome.code.name, 0) + 1
        problem = None
        if outcome.code not in CLEAR_CODES:
            problem = f"unclear status {outcome.code.name}"
        elif outcome.code != Code.OK and not outcome.details.strip():
            problem = f"{outcome.code.name} without a message"
        elif len(outcome.details) > MAX_DETAILS_CHARS:
            problem = f"{outcome.code.name} with a {len(outcome.details)}-character message"
        if problem is not None:
            self.problems.append(f"{what}: {problem}: {outcome.details[:300]!r}")

    def unchanged(self, what: str, outcome: Outcome, before: object, after: object) -> None:
        """A refusal must change nothing, except an evaluation that started and failed: that aborts its
        job by design (docs/cluster.md, "Failures"), so the job must then be gone."""
        started = what == "evaluate" and outcome.code in (
            Code.FAILED_PRECONDITION,
            Code.UNAVAILABLE,
            Code.ABORTED,
        )
        if started and after == (Code.NOT_FOUND.name,):
            return
        if before != after:
            self.problems.append(f"{what}: refused with {outcome.code.name} but changed {before} -> {after}")

    def summary(self) -> str:
        return f"{self.name}: {self.cases} cases, codes {self.codes}, problems {self.problems[:5]}"


# ---------------------------------------------------------------------------------------- mutation
def mutate(data: bytes, rng: random.Random, rounds: int | None = None) -> bytes:
    """A few random byte-level edits of a serialized message: flips, inserts, deletions, truncation,
    duplicated ranges, and varints pushed to their extremes."""
    buf = bytearray(data)
    for _ in range(rounds or rng.randint(1, 4)):
        op = rng.randrange(7)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:  # flip bits of one byte
            i = min(pos, len(buf) - 1)
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1:  # insert random bytes
            buf[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif op == 2 and buf:  # delete a range
            del buf[pos : pos + rng.randint(1, 8)]
        elif op == 3:  # truncate
            del buf[pos:]
        elif op == 4 and buf:  # duplicate a range (a repeated or replayed field)
            end = min(len(buf), pos + rng.randint(1, 32))
            buf[pos:pos] = buf[pos:end]
        elif op == 5 and buf:  # an interesting byte
            i = min(pos, len(buf) - 1)
            buf[i] = rng.choice([0x00, 0x01, 0x7F, 0x80, 0xFF, 0xC0, 0xFE])
        else:  # a maximal varint (e.g. a length or a uint64 near 2^64)
            buf[pos:pos] = b"\xff" * rng.randint(1, 9) + b"\x01"
    return bytes(buf)
