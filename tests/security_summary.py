"""Print the summary table of `make test-security` from the rows the security tests recorded.

    python tests/security_summary.py .pytest_cache/security-report.jsonl

Each row is one check as ``tests/security_report.record`` wrote it (check, cases tried, failures, trials
survived, note).  A check recorded twice (a test rerun) keeps its last row.  Exits 1 when the file is
missing or empty (nothing was measured) or when any row has failures, so the target fails visibly even if
a test forgot to assert.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = ("check", "cases", "failures", "survived")


def load_rows(path: Path) -> list[dict]:
    rows: dict[str, dict] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["check"]] = row
    return sorted(rows.values(), key=lambda r: r["check"])


def render(rows: list[dict]) -> str:
    cells = [
        [
            str(r["check"]),
            str(r["cases"]),
            str(r["failures"]),
            "-" if r.get("survived") is None else str(r["survived"]),
        ]
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(COLUMNS)]

    def line(values) -> str:
        return "  ".join(
            v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths, strict=True))
        )

    out = [line(COLUMNS), line(["-" * w for w in widths])]
    out += [line(c) for c in cells]
    notes = [f"  {r['check']}: {r['note']}" for r in rows if r.get("note")]
    if notes:
        out += ["", "notes:", *notes]
    return "\n".join(out)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: security_summary.py REPORT.jsonl", file=sys.stderr)
        return 2
    path = Path(argv[1])
    rows = load_rows(path) if path.is_file() else []
    if not rows:
        print(f"no security checks were recorded in {path}", file=sys.stderr)
        return 1
    print(render(rows))
    failed = [r["check"] for r in rows if r["failures"]]
    total = sum(r["cases"] for r in rows)
    print(f"\n{len(rows)} checks, {total} cases, {len(failed)} with failures")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
