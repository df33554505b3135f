"""The embedded default: a LocalCluster of single-threaded worker processes (one model per process)."""

from __future__ import annotations

import contextlib
import logging
import os


@contextlib.contextmanager
def local_client(workers: int | None = None, threads_per_worker: int = 1):
    """A LocalCluster of ``workers`` processes and its Client, closed on exit. Worker logs are silenced below
    CRITICAL (a heartbeat racing the shutdown logs a traceback); tile errors are recorded in the map itself."""
    from distributed import Client, LocalCluster

    n = workers or max(1, (os.cpu_count() or 1) // threads_per_worker)
    with LocalCluster(n_workers=n, threads_per_worker=threads_per_worker, processes=True,
                      dashboard_address=":0", silence_logs=logging.CRITICAL,
                      preload_nanny=["reefmap.cluster.nanny"]) as cluster, Client(cluster) as client:
        yield client


def connected_workers(client) -> dict:
    """``{address: info}`` of the workers connected now, asked of the scheduler directly.

    Not ``client.scheduler_info()["workers"]``: that returns the client's cached identity, which a periodic
    background refresh replaces with one *without* per-worker details, so it can read as "no workers".
    """
    return dict(client.sync(client.scheduler.identity, n_workers=-1).get("workers", {}))
