"""What the figures were measured on: recorded beside every benchmark result."""

from __future__ import annotations

import os
import platform

import numpy as np


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
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": blas,
        "platform": platform.platform(),
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
    }
