"""`make bench`: measure, then write bench/results/latest.json and latest.md.

Sections measured in this run replace the same sections of the previous file; sections not measured are
kept, so one slow section can be refreshed alone (``--only ops``).  Run on an idle machine with one BLAS
thread per participant (the Makefile sets OPENBLAS_NUM_THREADS=1).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from functools import partial
from pathlib import Path

from bench.machine import cpu_facts, machine_info
from bench.targets import evaluate
from mpc_core.allocator import tune_allocator

RESULTS = Path(__file__).resolve().parent / "results"


def _sections() -> dict[str, object]:
    from bench.cluster_bench import bench_network, bench_tuning
    from bench.grpc_ops_bench import bench_grpc_ops
    from bench.model_bench import bench_attention, bench_forward
    from bench.ops_bench import bench_ops
    from bench.ring_matmul_bench import bench_ring_matmul

    return {
        "ring_matmul": bench_ring_matmul,
        "ops": lambda: bench_ops() + bench_grpc_ops(),
        "attention": bench_attention,
        "forward": bench_forward,
        "network": bench_network,
        "tuning": bench_tuning,
        "gradient": _gradient_section,
        "phases": _phases_section,
        "efficient_forward": _efficient_forward_section,
    }


#: Sections measured only when named in --only (gradient about an hour on a 2-core machine, phases and
#: efficient_forward 10-20 minutes and up to 12 GB in one process).
OPT_IN = {"gradient", "phases", "efficient_forward"}


def _phases_section() -> list[dict]:
    """Issue 18.1: the dealer's offline phase apart from the parties' online phase (bench/phases_bench.py):
    the ops under none/lan/wan, and the MiniLM forward 32 x 64's online phase under wan."""
    from bench.phases_bench import bench_forward_phases, bench_op_phases

    return bench_op_phases(("none", "lan", "wan")) + bench_forward_phases(("wan",), 32, online_only=True)


def _efficient_forward_section() -> list[dict]:
    """Issue 13's cost: the whole secure forward, softmax against rfa/favor, at 128 and 512 tokens."""
    from bench.efficient_forward import bench_efficient_forward

    return bench_efficient_forward((128, 512), ("2pc", "3pc"), {})


def _gradient_section() -> list[dict]:
    """Issue 14's per-iteration rows (bench/gradient_steps.py, which also writes its own JSON)."""
    from bench.gradient_steps import main as gradient_steps

    rows = gradient_steps(["--suites", "2pc", "3pc"])["rows"]
    return [r for r in rows if "failed" not in r]  # a failed row stays in gradient_steps.json


MIB = 2**20


def _field(name: str, header: str | None = None) -> tuple[str, object]:
    """A column that shows a row's field as is."""
    return header or name, lambda r: r[name]


def _number(name: str, spec: str, header: str | None = None) -> tuple[str, object]:
    """A column that formats a numeric field (``spec`` as in format())."""
    return header or name, lambda r: format(r[name], spec)


def _mib(name: str, header: str, digits: int) -> tuple[str, object]:
    return header, lambda r: f"{r[name] / MIB:.{digits}f}"


SUITE, ROUNDS, PARTY_CPU = _field("suite"), _field("rounds"), _field("party_cpu_seconds", "party CPU s")
ATTENTION = _field("attention")
BATCH = ("batch x seq", lambda r: f"{r['batch']} x {r['seq_len']}")


#: Per section: the table's title and its columns (header, cell formatter of one result row).
COLUMNS: dict[str, tuple[str, list[tuple[str, object]]]] = {
    "ring_matmul": (
        "ring_matmul (seconds)",
        [
            ("shape", lambda r: r["shape"]),
            ("kernel", lambda r: r.get("kernel", "int64")),
            ("ring", lambda r: f"{r['ring_s']:.4f}"),
            ("int64 kernel", lambda r: f"{r.get('int64_s', float('nan')):.4f}"),
            ("float64-limbs kernel", lambda r: f"{r.get('float64_limbs_s', float('nan')):.4f}"),
            ("numpy uint64", lambda r: f"{r['numpy_uint64_s']:.4f}"),
            ("float64", lambda r: f"{r['float64_s']:.4f}"),
            ("speed-up vs uint64", lambda r: f"{r['numpy_uint64_s'] / r['ring_s']:.1f}x"),
            ("float64 GEMMs", lambda r: f"{r['ring_s'] / r['float64_s']:.1f}"),
        ],
    ),
    "ops": (
        "ops",
        [
            SUITE,
            ("op", lambda r: r["op"]),
            ("shape", lambda r: r["shape"]),
            ("transport", lambda r: r["transport"]),
            _number("seconds", ".3f"),
            PARTY_CPU,
            _mib("bytes", "MiB", 2),
            _mib("dealer_bytes", "dealer MiB", 2),
            ROUNDS,
            ("max abs err", lambda r: f"{r['max_abs_err']:.1e}"),
        ],
    ),
    "attention": (
        "attention (one layer's attention core, 12 heads of 64, batch 1)",
        [
            SUITE,
            ATTENTION,
            ("seq", lambda r: r["seq_len"]),
            _number("seconds", ".2f"),
            _mib("bytes", "MiB", 1),
            _mib("dealer_bytes", "dealer MiB", 1),
            ROUNDS,
            ("err vs plaintext (same mode)", lambda r: f"{r['max_abs_err_vs_plaintext_same_mode']:.1e}"),
        ],
    ),
    "forward": (
        "forward (all-MiniLM-L6-v2, similarity head, in-process)",
        [
            SUITE,
            ATTENTION,
            BATCH,
            _number("seconds", ".1f"),
            ("x plaintext fp32", lambda r: f"{r['seconds'] / r['plaintext_seconds']:.0f}x"),
            PARTY_CPU,
            _mib("bytes", "MiB", 0),
            _mib("dealer_bytes", "dealer MiB", 0),
            ROUNDS,
            ("max abs logit err", lambda r: f"{r['max_abs_err']:.1e}"),
        ],
    ),
    "network": (
        "network (all-MiniLM-L6-v2 forward over gRPC, shaped peer links, similarity head)",
        [
            SUITE,
            ("network", lambda r: r["network"]),
            ATTENTION,
            BATCH,
            _number("seconds", ".1f"),
            PARTY_CPU,
            _mib("bytes", "MiB (all peers)", 0),
            ROUNDS,
            (
                "measured separately",
                lambda r: (
                    f"{r['measured_at']}, load {r['load_average_during']}" if "measured_at" in r else ""
                ),
            ),
        ],
    ),
    "gradient": (
        "gradient (issue 14: one step of each method on shares, 32 SST-2 rows, gRPC, unshaped; "
        "lan/wan MODELLED)",
        [
            SUITE,
            ("row", lambda r: r["row"]),
            _number("seconds", ".1f"),
            PARTY_CPU,
            _mib("party_bytes", "MiB parties", 0),
            _mib("dealer_bytes", "dealer MiB", 0),
            ROUNDS,
            (
                "modelled lan / wan s",
                lambda r: (
                    f"{r['modelled_seconds']['lan']:.0f} / {r['modelled_seconds']['wan']:.0f}"
                    if "modelled_seconds" in r
                    else "-"
                ),
            ),
            ("load", lambda r: r.get("load_average_before_after", "-")),
        ],
    ),
    "phases": (
        "phases (issue 18.1: 2pc, in-process, emulated network; overlapped vs the dealer first, then online)",
        [
            _field("case"),
            _field("network"),
            ("overlapped s", lambda r: "-" if r["overlapped_seconds"] is None else r["overlapped_seconds"]),
            _number("offline_seconds", ".2f", "offline s"),
            _mib("offline_bytes", "offline MiB", 1),
            _number("online_seconds", ".2f", "online s"),
            _mib("online_bytes", "online MiB", 1),
            _field("online_rounds", "online rounds"),
            ("max abs err", lambda r: f"{r['max_abs_err']:.1e}"),
        ],
    ),
    "efficient_forward": (
        "efficient_forward (issue 13: the whole secure MiniLM forward, batch 1, softmax vs rfa/favor)",
        [
            SUITE,
            _field("seq_len", "seq"),
            ATTENTION,
            _number("seconds", ".1f"),
            PARTY_CPU,
            _mib("bytes", "MiB parties", 0),
            _mib("dealer_bytes", "dealer MiB", 0),
            ROUNDS,
            ("max abs err", lambda r: f"{r['max_abs_logit_err']:.1e}"),
            _field("source"),
        ],
    ),
    "tuning": (
        "tuning (one CMA-ES generation: popsize 20 x 32 SST-2 rows, L = 5, d = 50, softmax)",
        [
            ("backend", lambda r: r["backend"]),
            _number("seconds", ".1f"),
            ("party CPU s", lambda r: r.get("party_cpu_seconds", "-")),
            _mib("bytes", "MiB (all peers)", 0),
            ROUNDS,
            (
                "max abs loss err vs plain",
                lambda r: f"{r['max_abs_loss_err']:.1e}" if "max_abs_loss_err" in r else "-",
            ),
        ],
    ),
}


def markdown_table(columns: list[tuple[str, object]], rows: list[dict]) -> list[str]:
    lines = ["| " + " | ".join(name for name, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(cell(r)) for _, cell in columns) + " |" for r in rows]
    return lines


def render_markdown(results: dict) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"Measured {results['measured_at']} on {results['machine']['cpu']} "
        f"({results['machine']['cores']} cores), BLAS {results['machine']['blas']}.",
        "",
        "## Targets",
        "",
    ]
    met = {True: "yes", False: "**no**", None: "-"}
    lines += markdown_table(
        [
            ("target", lambda r: r["target"]),
            ("goal", lambda r: r["goal"]),
            ("ours", lambda r: r["ours"]),
            ("met", lambda r: met[r["met"]]),
        ],
        results["targets"],
    )
    for section, (title, columns) in COLUMNS.items():
        if results.get(section):
            lines += ["", f"## {title}", ""]
            when = results.get("sections", {}).get(section)
            if when:
                before, after = when["load_average_before_and_after"]
                cpu = (
                    f", CPU {when['cpu_capability']}, ring GEMM {when['ring_gemm_kernel']}"
                    if "cpu_capability" in when
                    else ""
                )
                lines += [
                    f"Measured {when['measured_at']}{cpu}, load average {before} before, {after} after.",
                    "",
                ]
            lines += markdown_table(columns, results[section])
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sections = _sections()
    parser.add_argument(
        "--only",
        default=",".join(s for s in sections if s not in OPT_IN),
        help=f"comma-separated sections to measure (by default all but {sorted(OPT_IN)})",
    )
    parser.add_argument(
        "--network", default="lan,wan", help="network section: shaping profiles to measure (others are kept)"
    )
    args = parser.parse_args(argv)
    tune_allocator()  # as the servers do (mpc_core/allocator.py)
    RESULTS.mkdir(parents=True, exist_ok=True)
    latest = RESULTS / "latest.json"
    results = json.loads(latest.read_text()) if latest.exists() else {}
    profiles = tuple(args.network.split(","))
    sections["network"] = partial(sections["network"], profiles)
    for name in args.only.split(","):
        if name not in sections:
            parser.error(f"unknown section {name!r}; choose from {sorted(sections)}")
        print(f"bench: {name}", flush=True)
        load_before = os.getloadavg()[0]
        rows = sections[name]()
        if name == "network":  # profiles not measured this time keep their earlier rows
            rows = [r for r in results.get(name, []) if r["network"] not in profiles] + rows
        results[name] = rows
        results.setdefault("sections", {})[name] = {
            "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "load_average_before_and_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            **cpu_facts(),
        }
    results["measured_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    results["machine"] = machine_info()
    results["targets"] = evaluate(results)
    latest.write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "latest.md").write_text(render_markdown(results))
    print(render_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
