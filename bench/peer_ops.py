"""The project's rows for the peers' side-by-side run (``../shared/peers``, its ``PEER_EXTRA_BENCH`` hook).

    PEER_EXTRA_BENCH="cd $PWD && .venv/bin/python -m bench.peer_ops" bash ../shared/peers/run_all.sh
    .venv/bin/python -m bench.peer_ops [--only OP] [--quick] [--reps N] [--seq-lens 64,512] [--out F]

SPU and CrypTen are measured by ``../shared/peers``; its ``common.py`` gives every case (the same seeded
inputs, the same float64 references), the timing policy (one warm-up, then up to three timed runs) and the
row format.  This module reads them from there, so the project's rows and the peers' come from the same
inputs, the same rules and, through ``run_all.sh``, the same run on the same machine.  It prints one JSON
object of the peers' schema on stdout (progress on stderr).

What is timed, per row and suite (``2pc``: two parties and the dealer; ``3pc``: replicated, three
parties), all in one process with every participant a thread over in-process queues (as SPU's simulator
runs its parties), one torch thread each: the op alone, on inputs shared before the clock starts, output
revealed after it stops (:func:`bench.harness.measure`).  ``bytes`` is everything sent, the parties' and
the 2pc dealer's together (``bytes_parties`` and ``bytes_dealer`` apart): our dealer is a real party whose
correlations cross the wire, unlike the peers' trusted-first-party modes, which send none.

Each op is the same computation as the peers' (``common.py``), with the project's own functions:

* ``matmul``: X @ W, both secret, fresh operands (no weight mask opened beforehand).
* ``softmax``: max-shifted exp and the row sum's reciprocal (``mpc_core.functions.softmax``).
* ``gelu``: one row, variant ``erf``: the project's GELU approximates the exact erf form (a short cosine
  series on the middle with exact tails from one windowed comparison, ``mpc_core.functions.gelu``); it has
  no separate tanh form, so it is not entered under ``tanh``.  Its error is against the exact erf GELU, as
  for every engine.
* ``layernorm``: eps 1e-5, gamma 1 and beta 0 public and so left out, as for the peers.
* ``attention``: softmax(q k^T / 8) v on secret q, k, v.
* ``bert_layer``: the BERT-base post-LN block of ``server.programs.ops`` with every weight secret (the
  matrices are marked fixed inside the op, so opening their masks is inside the timed run), eps 1e-5; its
  GELU is the project's erf approximation while the reference uses the exact erf form (the peers run tanh).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from bench.harness import measure
from bench.machine import cpu_facts
from mpc_core import functions as fn
from mpc_core.ring import FixedPoint
from mpc_core.suites import suite_class
from mpc_core.tensor import SharedTensor
from server.programs.ops import BERT_LAYER_WEIGHTS, bert_layer_forward

PEERS_DIR = Path(__file__).resolve().parents[2] / "shared" / "peers"
PROTOCOLS = {"2pc": "2PC-dealer", "3pc": "3PC-replicated"}
ENGINE = "secp-tuning"
LAYER_NORM_EPS = 1e-5  # common.LN_EPS: the peers' LayerNorm and BERT block use it


def load_common(folder: Path | None = None) -> ModuleType:
    """The peers' ``common.py`` (cases, timing policy, rows); a clear error when the folder is absent."""
    folder = Path(folder or os.environ.get("PEERS_DIR") or PEERS_DIR)
    path = folder / "common.py"
    if not path.is_file():
        raise SystemExit(f"bench.peer_ops needs the peers' common.py at {path} (set PEERS_DIR to its folder)")
    spec = importlib.util.spec_from_file_location("peers_common", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _attention(q: SharedTensor, k: SharedTensor, v: SharedTensor) -> SharedTensor:
    scores = (q @ k.swapaxes(-1, -2)) * 0.125
    return fn.softmax(scores, axis=-1) @ v


def _bert_layer(x: SharedTensor, *weights: SharedTensor) -> SharedTensor:
    from mpc_core.nn.backend import SecureBackend

    named = {
        name: w.fixed(f"peer:{name}") if w.ndim == 2 else w
        for name, w in zip(BERT_LAYER_WEIGHTS, weights, strict=True)
    }
    return bert_layer_forward(SecureBackend(x.ctx, named), x, layer_norm_eps=LAYER_NORM_EPS)


#: The project's secure computation of each peer op (variant None or as named); a variant not listed is
#: skipped because the project has no such form (GELU's tanh form).
SECURE_OPS: dict[tuple[str, str | None], Callable[..., SharedTensor]] = {
    ("matmul", None): lambda x, w: x @ w,
    ("softmax", None): lambda x: fn.softmax(x, axis=-1),
    ("gelu", "erf"): fn.gelu,
    ("layernorm", None): lambda x: fn.layer_norm(x, None, None, eps=LAYER_NORM_EPS),
    ("attention", None): _attention,
    ("bert_layer", "gelu=tanh"): _bert_layer,
}


def measure_case(common: ModuleType, case: dict, suite: str, reps: int) -> dict:
    """One row: a warm-up run (its counts are the row's bytes and rounds), then the peers' timed runs."""
    operation = SECURE_OPS[(case["op"], case.get("variant"))]
    inputs = [np.asarray(x, dtype=np.float64) for x in case["inputs"]]
    facts = suite_class(suite)
    row = common.make_row(
        ENGINE,
        PROTOCOLS[suite],
        case,
        parties=len(facts.compute_parties),
        suite=suite,
        frac_bits=FixedPoint().frac_bits,
    )
    if case["op"] == "bert_layer":
        row["variant"] = "gelu=erf-approx"
    if common.CASE_WAIT_IDLE_S > 0:
        common.wait_idle(common.CASE_WAIT_IDLE_S)

    def once():
        return measure(suite, case["op"], lambda ctx, *xs: operation(*xs), *inputs)

    with common.CpuMeter() as meter:
        warm = once()
        runs = [once() for _ in range(common.n_timed_runs(warm.seconds, reps))]
    common.finish_timing(
        row,
        warm.seconds,
        [m.seconds for m in runs],
        warmup_cpu=sum(warm.party_cpu_seconds),
        cpus=[sum(m.party_cpu_seconds) for m in runs],
    )
    row.update(
        bytes=warm.bytes + warm.dealer_bytes,
        bytes_parties=warm.bytes,
        bytes_dealer=warm.dealer_bytes,
        rounds=warm.rounds,
        max_abs_err=common.max_abs_err((runs[-1] if runs else warm).output, case["ref"]),
    )
    return meter.annotate(row)


def _version() -> str:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
            timeout=10,
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> None:
    common = load_common()
    args = common.parser(ENGINE).parse_args(argv)
    guard = common.StdoutGuard()
    torch.set_num_threads(1)  # one thread per participant: the parties share the machine's cores
    suites = [s for s, p in PROTOCOLS.items() if not args.protocols or p in args.protocols.split(",")]
    reps = args.reps or common.REPS
    cases = common.cases(common.parse_only(args.only), args.quick, common.parse_seq_lens(args.seq_lens))
    rows = []
    for case in cases:
        if (case["op"], case.get("variant")) not in SECURE_OPS:
            common.log(f"[{ENGINE}] {common.case_label(case)}: no such form in the project, skipped")
            continue
        for suite in suites:
            try:
                row = measure_case(common, case, suite, reps)
            except Exception as exc:  # the bench goes on, as the peers' do; the row says what failed
                row = common.make_row(ENGINE, PROTOCOLS[suite], case, suite=suite, error=repr(exc))
            rows.append(row)
            common.log(
                f"[{ENGINE}] {row['op']} {row.get('variant') or ''} {row.get('seq_len') or ''} {suite}: "
                f"{row.get('seconds')} s, "
                f"{(row.get('bytes') or 0) / 2**20:.1f} MiB, {row.get('rounds')} rounds, "
                f"err {row.get('max_abs_err')}"
            )
    guard.emit(
        {
            "engine": ENGINE,
            "version": _version(),
            "machine": common.machine() | cpu_facts(),
            "settings": {
                "ring": "Z_2^64",
                "frac_bits": FixedPoint().frac_bits,
                "transport": "in-process queues, one thread per participant",
                "torch_threads_per_process": 1,
                "suites": {s: PROTOCOLS[s] for s in suites},
            },
            "notes": [
                "bytes = parties + dealer (2pc); the dealer's correlations are real traffic",
                "gelu: the project's erf-GELU approximation only (no tanh form)",
            ],
            "ops": rows,
        },
        args.out,
    )


if __name__ == "__main__":
    sys.exit(main())
