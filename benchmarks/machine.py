"""What the benchmarks print beside absolute times: how fast this machine is today.

These shared machines vary up to 5x from day to day, so every timing table names the single-precision
matrix-multiply rate (sgemm, GFLOP/s) measured on the threads the benchmark uses, and the processor count.
"""

from __future__ import annotations

import os
import time

import numpy as np


def sgemm_gflops(size: int = 1024, seconds: float = 0.5) -> float:
    """Best float32 matrix-multiply rate of NumPy's BLAS over about `seconds` (GFLOP/s)."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size), dtype=np.float32) for _ in range(2))
    a @ b  # first call: thread pool and page faults
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def machine_line() -> str:
    """One line for a benchmark's header: cores and today's sgemm rate."""
    return f"machine: {os.cpu_count()} cores, sgemm {sgemm_gflops():.0f} GFLOP/s (NumPy float32, 1024^3)"
