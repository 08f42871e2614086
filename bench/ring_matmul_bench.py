"""Ring matrix products: our exact product against numpy's uint64 ``@`` and one float64 GEMM.

Both exact kernels (torch's int64 GEMM and the float64 three-limb split) are timed on every machine, beside
the one this process chose (``ring_s``), all in the same process, with the same BLAS thread count, on the
same random operands: the kernel an AVX2-only server would choose is measured on an AVX-512 one too.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from mpc_core.ring import KERNEL, ring_matmul

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
        expected = a @ b
        for kernel in ("int64", "float64-limbs"):
            if not np.array_equal(ring_matmul(a, b, kernel=kernel), expected):
                raise AssertionError(f"the {kernel} ring GEMM disagrees with numpy for {(n, k, m)}")
        rows.append(
            {
                "shape": [n, k, m],
                "kernel": KERNEL.name,
                "ring_s": best_of(lambda a=a, b=b: ring_matmul(a, b), repeats),
                "int64_s": best_of(lambda a=a, b=b: ring_matmul(a, b, kernel="int64"), repeats),
                "float64_limbs_s": best_of(
                    lambda a=a, b=b: ring_matmul(a, b, kernel="float64-limbs"), repeats
                ),
                "numpy_uint64_s": best_of(lambda a=a, b=b: a @ b, max(1, repeats // 2)),
                "float64_s": best_of(lambda fa=fa, fb=fb: fa @ fb, repeats),
            }
        )
    return rows
