"""Before/after in one run for this session's engine changes (`python -m bench.ablation`).

Each variant runs in a fresh subprocess (the allocator settings are process-wide and cannot be undone):

* allocator: glibc defaults vs :func:`mpc_core.allocator.tune_allocator`;
* softmax max: the exact max tree (63-bit comparisons) vs the near-max tree (windowed comparisons);

on softmax 12x128x128 (rows spread up to 30) and GELU 128x3072 in 2pc, in-process, best of two; and the
all-MiniLM-L6-v2 forward (batch 8 x 64, softmax, 2pc) with and without the allocator settings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

VARIANT = r"""
import importlib, json, sys
import numpy as np
if sys.argv[1] == "tuned":
    from mpc_core.allocator import tune_allocator
    tune_allocator()
from bench.harness import measure
from mpc_core.functions import compare, gelu
softmax_module = importlib.import_module("mpc_core.functions.softmax")
if sys.argv[2] == "exact":
    softmax_module.tree_max = lambda t, axis, keepdims, **_: compare.max(t, axis=axis, keepdims=keepdims)
rng = np.random.default_rng(7)
cases = {
    "softmax 12x128x128": (softmax_module.softmax, rng.uniform(-15, 15, (12, 128, 128))),
    "gelu 128x3072": (gelu, rng.uniform(-10, 10, (128, 3072))),
}
out = {}
for name, (fn, x) in cases.items():
    runs = [measure("2pc", name, lambda ctx, a, fn=fn: fn(a), x) for _ in range(2)]
    m = min(runs, key=lambda r: r.seconds)
    out[name] = {
        "seconds": round(m.seconds, 3),
        "party_cpu_seconds": m.party_cpu_seconds,
        "MiB": round(m.bytes / 2**20, 1),
        "dealer_MiB": round(m.dealer_bytes / 2**20, 1),
        "rounds": m.rounds,
    }
if sys.argv[3] == "forward":
    from bench.model_bench import bench_forward
    (row,) = bench_forward(suites=("2pc",), modes=("softmax",), batch=8)
    out["MiniLM forward 8 x 64"] = {k: row[k] for k in ("seconds", "party_cpu_seconds", "bytes", "rounds")}
print(json.dumps(out))
"""

VARIANTS = [
    ("glibc defaults, exact max", "default", "exact", "ops"),
    ("glibc defaults, near max", "default", "near", "forward"),
    ("tuned allocator, exact max", "tuned", "exact", "ops"),
    ("tuned allocator, near max (current)", "tuned", "near", "forward"),
]


def main() -> int:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    for label, allocator, max_kind, scope in VARIANTS:
        done = subprocess.run(
            [sys.executable, "-c", VARIANT, allocator, max_kind, scope],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        print(label, json.dumps(json.loads(done.stdout.strip().splitlines()[-1])), flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
