"""Timing helpers shared by the benchmark scripts (run as scripts: this folder is on their sys.path)."""

from __future__ import annotations

import time


def best_of(fn, n: int = 3) -> float:
    """The shortest wall time (s) of ``n`` calls of ``fn()``."""
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)
