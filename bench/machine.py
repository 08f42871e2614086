"""What the figures were measured on: recorded beside every benchmark result."""

from __future__ import annotations

import os
import platform

import numpy as np
import torch

from mpc_core.ring import KERNEL


def cpu_facts() -> dict[str, object]:
    """The CPU's vector capability as torch dispatches on it, and the ring GEMM kernel chosen here.

    Recorded with every section: the int64 ring GEMM is fast only where 64-bit multiplies are vectorised
    (AVX-512), so a figure without the capability and kernel beside it cannot be compared across machines.
    """
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = set(next((line.split(":", 1)[1].split() for line in fh if line.startswith("flags")), []))
    except OSError:
        pass
    return {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "avx512f": "avx512f" in flags,
        "avx2": "avx2" in flags,
        "ring_gemm_kernel": KERNEL.name,
        "ring_gemm_choice": KERNEL.reason,
        "ring_gemm_startup_s": {name: round(s, 5) for name, s in KERNEL.seconds.items()},
    }


def machine_info() -> dict[str, object]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    blas: list[dict[str, object]] = []
    try:
        from threadpoolctl import threadpool_info

        blas = [
            {"api": i.get("internal_api"), "kernel": i.get("architecture"), "threads": i.get("num_threads")}
            for i in threadpool_info()
        ]
    except ImportError:
        pass
    return {
        "cpu": cpu,
        **cpu_facts(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": blas,
        "platform": platform.platform(),
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
    }
