"""Ring matrix products: our exact product (torch's int64 GEMM) against numpy's uint64 ``@`` and float64 GEMM.

All three run in the same process, with the same BLAS thread count, on the same random operands.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from mpc_core.ring import ring_matmul

SHAPES = ([128, 768, 768], [256, 768, 768], [128, 768, 3072], [128, 3072, 768])


def best_of(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_ring_matmul(repeats: int = 5) -> list[dict[str, object]]:
    rng = np.random.default_rng(0)
    rows = []
    for n, k, m in SHAPES:
        a = rng.integers(0, 2**64, size=(n, k), dtype=np.uint64)
        b = rng.integers(0, 2**64, size=(k, m), dtype=np.uint64)
        fa, fb = a.astype(np.float64), b.astype(np.float64)
        if not np.array_equal(ring_matmul(a, b), a @ b):
            raise AssertionError(f"ring_matmul disagrees with numpy for {(n, k, m)}")
        rows.append(
            {
                "shape": [n, k, m],
                "ring_s": best_of(lambda a=a, b=b: ring_matmul(a, b), repeats),
                "numpy_uint64_s": best_of(lambda a=a, b=b: a @ b, max(1, repeats // 2)),
                "float64_s": best_of(lambda fa=fa, fb=fb: fa @ fb, repeats),
            }
        )
    return rows
