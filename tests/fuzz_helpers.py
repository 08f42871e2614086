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

from contract.channels import channel_options
from contract.cluster import ClusterConfig

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


# ------------------------------------------------------------------------------- structure-aware mutation
def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        shift += 7
        if not byte & 0x80:
            return value, pos


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def wire_fields(data: bytes) -> list[tuple[int, int, bytes]] | None:
    """(field number, wire type, raw value) of a serialized message's fields; None if it does not parse."""
    fields, pos = [], 0
    try:
        while pos < len(data):
            key, pos = _varint(data, pos)
            number, kind = key >> 3, key & 7
            if kind == 0:
                start = pos
                _, pos = _varint(data, pos)
                value = data[start:pos]
            elif kind == 2:
                length, pos = _varint(data, pos)
                value = data[pos : pos + length]
                if len(value) != length:
                    return None
                pos += length
            elif kind in (1, 5):
                size = 8 if kind == 1 else 4
                value = data[pos : pos + size]
                pos += size
            else:
                return None
            fields.append((number, kind, value))
    except ValueError:
        return None
    return fields


def encode_fields(fields: list[tuple[int, int, bytes]]) -> bytes:
    out = bytearray()
    for number, kind, value in fields:
        out += _encode_varint(number << 3 | kind)
        out += _encode_varint(len(value)) + value if kind == 2 else value
    return bytes(out)


def mutate_field(data: bytes, rng: random.Random, depth: int = 0) -> bytes:
    """Edit one field's value (recursing into nested messages) and re-encode every length, so the message
    still parses as often as not and the edit reaches the server's own validation: a string with bad
    UTF-8, a shape with a huge dimension, a byte count off by one, a field repeated or dropped."""
    fields = wire_fields(data)
    if not fields:
        return mutate(data, rng)
    i = rng.randrange(len(fields))
    number, kind, value = fields[i]
    choice = rng.random()
    if choice < 0.1:
        del fields[i]
    elif choice < 0.2:
        fields.insert(i, fields[i])  # a repeated field (the last one wins, or a list grows)
    elif kind == 0:
        fields[i] = (
            number,
            0,
            _encode_varint(rng.choice([0, 1, 2**31, 2**63, 2**64 - 1, rng.getrandbits(64)])),
        )
    elif kind == 2 and depth < 3 and wire_fields(value) and rng.random() < 0.6:
        fields[i] = (number, 2, mutate_field(value, rng, depth + 1))
    else:
        fields[i] = (number, kind, mutate(value, rng)[: len(value)] if kind != 2 else mutate(value, rng))
    return encode_fields(fields)


def finish_fuzz(
    api: str,
    tally: FuzzTally,
    rss_before: dict[int, int],
    seconds: float,
    *,
    verify: Callable[[], None],
    rss: Callable[[], dict[int, int]],
    client,
) -> None:
    """End of a fuzz run: the reference job still works, the row is recorded, and every case passed with
    bounded server memory and no fuzz job left open."""
    from security_report import record

    verify()
    growth = {p: after - rss_before[p] for p, after in rss().items()}
    record(
        f"fuzz {api} API ({tally.name})",
        tally.cases,
        len(tally.problems),
        note=f"{seconds:.0f} s; codes {tally.codes}; max RSS growth {max(growth.values()) >> 20} MiB",
    )
    assert not tally.problems, tally.summary()
    assert all(g < RSS_GROWTH_BOUND for g in growth.values()), f"server memory grew: {growth}"
    infos = client.server_info()
    assert all(info.open_jobs == 1 for info in infos.values()), "fuzz jobs were left open"
