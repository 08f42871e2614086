"""What the security tests tried, collected for the summary table of `make test-security`.

`make test` runs a small sample of every fuzzing and fault-injection check; `make test-security` sets
``SECP_SECURITY_FULL=1`` (the full counts the issue asks for) and ``SECP_SECURITY_REPORT`` (a JSON-lines
file each check appends one row to), then prints the rows as a table.  A check that is not run under
`make test-security` records nothing, so the table never shows a count that was not measured.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

FULL = os.environ.get("SECP_SECURITY_FULL") == "1"


def scale(fast: int, full: int) -> int:
    """How many cases or trials to run: ``full`` under `make test-security`, ``fast`` otherwise."""
    return full if FULL else fast


def record(check: str, cases: int, failures: int, survived: int | None = None, note: str = "") -> None:
    """Append one row (check name, cases tried, failures, trials survived) to the summary file, if any."""
    path = os.environ.get("SECP_SECURITY_REPORT")
    if not path:
        return
    row = {"check": check, "cases": cases, "failures": failures, "survived": survived, "note": note}
    with Path(path).open("a", encoding="utf-8") as out:
        out.write(json.dumps(row) + "\n")
