"""A refactor's before/after, measured in one run: one bench section in two source trees, interleaved.

A change that must not alter behaviour (issue 19's layering) is checked by running the same bench section
from a checkout of the commit before it and from the current tree, alternating A, B, A, B, ... in fresh
processes on the same machine, so that drift in the machine's load falls on both alike.  Bytes and rounds
are deterministic and must be equal; time is compared as the best of the rounds for each row (the least
disturbed run), and the ratio after/before is reported beside the spread of each tree's own rounds, which
is the noise a ratio must be read against.

    python -m bench.compare_trees --before ../wt-before --rounds 3 --out bench/results/issue19_ops.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from bench.machine import cpu_facts, machine_info

#: Section name -> the expression, evaluated in the measured tree, that returns the section's rows.
SECTIONS = {"ops": "__import__('bench.ops_bench', fromlist=['x']).bench_ops()"}
#: Fields that identify a row (the same case in both trees).
KEY_FIELDS = ("suite", "op", "shape")
#: Fields that must be equal in both trees: the protocol's traffic and round count do not depend on speed.
EXACT_FIELDS = ("bytes", "dealer_bytes", "rounds")


def run_section(tree: Path, section: str) -> list[dict[str, object]]:
    """The section's rows, measured by a fresh interpreter that imports only ``tree``'s code."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    env["MKL_NUM_THREADS"] = "1"
    code = (
        "import json, sys\n"
        "from mpc_core.allocator import tune_allocator\n"
        "tune_allocator()\n"
        f"rows = {SECTIONS[section]}\n"
        "sys.stdout.write('\\nROWS ' + json.dumps(rows) + '\\n')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"the {section} section failed in {tree}:\n{done.stderr[-2000:]}")
    line = next(ln for ln in reversed(done.stdout.splitlines()) if ln.startswith("ROWS "))
    return json.loads(line[5:])


def key(row: dict[str, object]) -> str:
    return json.dumps([row[f] for f in KEY_FIELDS])


def compare(before: list[list[dict]], after: list[list[dict]]) -> list[dict[str, object]]:
    """One row per case: best time in each tree, the ratio, each tree's spread, and the exact fields."""
    by_key_before = {key(r): [run[i] for run in before] for i, r in enumerate(before[0])}
    by_key_after = {key(r): [run[i] for run in after] for i, r in enumerate(after[0])}
    if set(by_key_before) != set(by_key_after):
        raise ValueError("the two trees measured different cases")
    rows = []
    for k, runs_b in by_key_before.items():
        runs_a = by_key_after[k]
        tb = [float(r["seconds"]) for r in runs_b]
        ta = [float(r["seconds"]) for r in runs_a]
        row = {f: runs_b[0][f] for f in KEY_FIELDS}
        row.update(
            before_s=min(tb),
            after_s=min(ta),
            ratio=round(min(ta) / min(tb), 3),
            before_spread=round(max(tb) / min(tb), 3),
            after_spread=round(max(ta) / min(ta), 3),
            exact_equal=all(runs_b[0][f] == r[f] for f in EXACT_FIELDS for r in runs_b + runs_a),
            **{f"before_{f}": runs_b[0][f] for f in EXACT_FIELDS},
            **{f"after_{f}": runs_a[0][f] for f in EXACT_FIELDS},
            before_max_abs_err=runs_b[0].get("max_abs_err"),
            after_max_abs_err=runs_a[0].get("max_abs_err"),
        )
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", required=True, type=Path, help="checkout of the commit before the change")
    parser.add_argument("--after", default=Path.cwd(), type=Path, help="the changed tree (default: here)")
    parser.add_argument("--section", default="ops", choices=sorted(SECTIONS))
    parser.add_argument("--rounds", type=int, default=3, help="runs per tree, interleaved")
    parser.add_argument("--out", required=True, type=Path, help="JSON file to write")
    args = parser.parse_args(argv)
    trees = {"before": args.before.absolute(), "after": args.after.absolute()}
    for name, tree in trees.items():
        if not (tree / "bench").is_dir():
            parser.error(f"--{name} {tree} is not a checkout of this project")
    runs: dict[str, list[list[dict]]] = {"before": [], "after": []}
    loads = []
    for i in range(args.rounds):
        for name, tree in trees.items():
            print(f"round {i + 1}/{args.rounds}: {name} ({tree})", flush=True)
            loads.append(round(os.getloadavg()[0], 2))
            runs[name].append(run_section(tree, args.section))
    rows = compare(runs["before"], runs["after"])
    commits = {
        name: subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True, text=True, check=False
        ).stdout.strip()
        for name, tree in trees.items()
    }
    result = {
        "section": args.section,
        "rounds": args.rounds,
        "commits": commits,
        "load_average_at_each_run": loads,
        "machine": machine_info(),
        **cpu_facts(),
        "rows": rows,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for r in rows:
        print(
            f"{r['suite']} {r['op']:<24} {r['before_s']:8.4f} {r['after_s']:8.4f}  x{r['ratio']:.2f} "
            f"(spread {r['before_spread']:.2f}/{r['after_spread']:.2f}) exact={r['exact_equal']}"
        )
    return 0 if all(r["exact_equal"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
