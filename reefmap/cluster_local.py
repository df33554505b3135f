"""The embedded default: a LocalCluster of single-threaded worker processes (one model per process)."""

from __future__ import annotations

import contextlib
import logging
import os


#: dask's nanny exports MALLOC_TRIM_THRESHOLD_=65536 to its workers; setting it switches off glibc's adaptive
#: mmap threshold, so every tensor-sized buffer is a fresh mmap with page faults: torch on CPU ran 20% slower
#: per tile inside a worker than outside (benchmarks/bench_pipeline.py).
_NANNY_DEFAULT_TRIM = "65536"


def keep_malloc_adaptive() -> None:
    """Stop dask nannies started from this process from exporting ``MALLOC_TRIM_THRESHOLD_`` (idempotent)."""
    import dask

    dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})
    if os.environ.get("MALLOC_TRIM_THRESHOLD_") == _NANNY_DEFAULT_TRIM:  # left behind by an earlier nanny
        del os.environ["MALLOC_TRIM_THRESHOLD_"]


@contextlib.contextmanager
def local_client(workers: int | None = None, threads_per_worker: int = 1):
    """A LocalCluster of ``workers`` processes and its Client, closed on exit. Worker logs are silenced below
    CRITICAL (a heartbeat racing the shutdown logs a traceback); tile errors are recorded in the map itself."""
    from distributed import Client, LocalCluster

    keep_malloc_adaptive()
    n = workers or max(1, (os.cpu_count() or 1) // threads_per_worker)
    with LocalCluster(n_workers=n, threads_per_worker=threads_per_worker, processes=True,
                      dashboard_address=":0", silence_logs=logging.CRITICAL) as cluster, Client(cluster) as client:
        yield client
