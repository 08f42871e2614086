"""Offline and online phases apart (issue 18, point 1): the 2pc dealer's material before the parties' work.

In 2pc everything the dealer sends is input-independent, so it can be produced and moved before the data
arrive.  For each op of the ``ops`` catalogue and the secure MiniLM forward, under each network profile
(the in-process transport's emulated ``lan`` and ``wan``, the gRPC links' model: bandwidth per directed
link, then one-way latency), this measures the same computation twice in one run:

* ``overlapped``: the dealer runs beside the parties, as the servers do today (the parties wait for its
  corrections whenever it is behind);
* ``phased``: the dealer runs first and its corrections cross to P1 (``offline_seconds``, ``dealer_bytes``),
  then the parties run with the material at hand (``online_seconds``, ``bytes``, ``rounds``).

The emulated network costs no CPU, so ``wan`` rows are mostly waiting; in-process means no gRPC
serialization CPU (the ``network`` section of ``make bench`` measures that over real gRPC).  Every row
carries its max abs error against the float64 computation.

``--forward-online-only`` measures the forward's online phase alone: the dealer's links are left
unshaped (its material is already at the parties, as after an offline phase) and no overlapped run is
made, so a ``wan`` forward of 32 x 64 does not wait ten minutes for 8 GB of corrections.  Its
``offline_seconds`` is then the dealer's computing time only, and ``offline_wire_seconds_model`` the
wire time those bytes would take on the profile (bytes / bandwidth + latency): a model, not a measurement.

    python -m bench.phases_bench --out bench/results/phases.json [--profiles none,lan,wan] [--batch 32]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from bench.harness import measure
from bench.machine import machine_info
from bench.ops_bench import case_inputs, op_cases
from mpc_core.transport.shaping import NO_SHAPING, PRESETS
from server.programs.ops import OPS

#: The ops whose phases are measured (the forward's ingredients, and a whole BERT-base block).
OPS_MEASURED = ("matmul_fixed_weight", "softmax", "gelu", "layernorm", "bert_layer")


def _row(name: str, shape: list[int], profile: str, overlapped, phased, expected: np.ndarray) -> dict:
    """One row; ``overlapped`` None for an online-only measurement (the dealer's links unshaped)."""
    runs = [m for m in (overlapped, phased) if m is not None]
    err = max(float(np.max(np.abs(m.output - expected))) for m in runs)
    shape_of = PRESETS[profile]
    row = {
        "case": name,
        "shape": shape,
        "suite": "2pc",
        "network": profile,
        "transport": "inprocess, emulated network",
        "dealer_links": "shaped" if overlapped is not None else "unshaped (online-only measurement)",
        "overlapped_seconds": None if overlapped is None else round(overlapped.seconds, 3),
        "offline_seconds": round(phased.offline_seconds, 3),
        "offline_wire_seconds_model": round(
            shape_of.serialization_s(phased.dealer_bytes) + shape_of.latency_s, 3
        ),
        "online_seconds": round(phased.seconds, 3),
        "offline_bytes": phased.dealer_bytes,
        "online_bytes": phased.bytes,
        "online_rounds": phased.rounds,
        "party_cpu_seconds_phased": phased.party_cpu_seconds,
        "max_abs_err": err,
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }
    together = "-" if overlapped is None else f"{overlapped.seconds:.2f} s"
    print(
        f"  phases {name} {profile}: overlapped {together}"
        f" | offline {phased.offline_seconds:.2f} s {phased.dealer_bytes / 2**20:.1f} MiB"
        f" | online {phased.seconds:.2f} s {phased.bytes / 2**20:.1f} MiB {phased.rounds} rounds"
        f" | err {err:.1e}",
        flush=True,
    )
    return row


def bench_op_phases(profiles: tuple[str, ...]) -> list[dict]:
    rows = []
    for case in op_cases():
        if case.op not in OPS_MEASURED:
            continue
        inputs = case_inputs(case)
        expected = case.reference(*inputs)
        secure = OPS[case.op].run

        def operation(ctx, *xs, secure=secure):
            return secure(*xs)

        for profile in profiles:
            runs = [
                measure(
                    "2pc",
                    case.op,
                    operation,
                    *inputs,
                    prepare=case.prepare,
                    network=PRESETS[profile],
                    phases=p,
                )
                for p in (False, True)
            ]
            rows.append(_row(case.op, case.shape, profile, *runs, expected))
    return rows


def bench_forward_phases(
    profiles: tuple[str, ...], batch: int, seq_len: int = 64, online_only: bool = False
) -> list[dict]:
    """The secure MiniLM forward (softmax attention, similarity head), as in the ``forward`` section."""
    from bench.model_bench import minilm_setup, secure_forward
    from mpc_core.nn.backend import PlainBackend
    from mpc_core.nn.batch import candidate_logits
    from mpc_core.nn.config import AttentionConfig

    cfg, weights, head, examples, mask, prompt, _ = minilm_setup(batch, seq_len)
    expected = candidate_logits(PlainBackend(weights), cfg, AttentionConfig(), head, examples, prompt, mask)
    prepare, forward = secure_forward(cfg, weights, head, mask, "softmax", "2pc")
    rows = []
    for profile in profiles:
        net = PRESETS[profile]
        overlapped = None
        if not online_only:
            overlapped = measure("2pc", "forward", forward, examples, prompt, prepare=prepare, network=net)
        phased = measure(
            "2pc",
            "forward",
            forward,
            examples,
            prompt,
            prepare=prepare,
            network=net,
            phases=True,
            dealer_network=NO_SHAPING if online_only else None,
        )
        rows.append(_row("minilm_forward", [batch, seq_len], profile, overlapped, phased, expected))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", default="none,lan,wan", help="network profiles [none,lan,wan]")
    parser.add_argument(
        "--batch", type=int, default=32, help="MiniLM forward batch (64 tokens) [32]; 0 skips it"
    )
    parser.add_argument("--forward-profiles", default=None, help="profiles for the forward [--profiles]")
    parser.add_argument(
        "--forward-online-only",
        action="store_true",
        help="the forward's online phase only (module docstring)",
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    profiles = tuple(p for p in args.profiles.split(",") if p)
    forward_profiles = tuple(p for p in (args.forward_profiles or args.profiles).split(",") if p)
    for profile in {*profiles, *forward_profiles}:
        if profile not in PRESETS:
            parser.error(f"unknown profile {profile!r}; choose from {sorted(PRESETS)}")
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    rows = bench_op_phases(profiles) if profiles else []
    if args.batch:
        rows += bench_forward_phases(forward_profiles, args.batch, online_only=args.forward_online_only)
    result = {
        "what": __doc__.split("\n\n")[0],
        "started": started,
        "machine": machine_info(),
        "profiles": {
            p: {"bandwidth_bps": PRESETS[p].bandwidth_bps, "latency_s": PRESETS[p].latency_s} for p in PRESETS
        },
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
