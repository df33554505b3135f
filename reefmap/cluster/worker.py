"""A dask worker preload for the LocalClusters reefmap starts: ``preload=["reefmap.cluster.worker"]``.

A Ctrl-C at the terminal reaches the whole foreground process group: the worker processes too. The process that
started the cluster handles it (it stops the run and shuts the cluster down; finished tiles are kept), so the
workers ignore it, instead of each printing a KeyboardInterrupt traceback while the cluster goes down.

On a GPU host (``start_local``'s GPU layout: one worker per GPU) each worker takes its own GPU: the one at its
index in ``REEFMAP_WORKER_GPUS`` (set by ``start_local``), as ``CUDA_VISIBLE_DEVICES``, before torch is imported.
"""

from __future__ import annotations

import os
import signal

WORKER_GPUS = "REEFMAP_WORKER_GPUS"  #: comma-separated GPU ids, one per LocalCluster worker (by worker name 0..n-1)


def dask_setup(worker) -> None:
    """Called in the worker process as it starts (in its main thread, where signal handlers are set)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    gpu = gpu_for(worker.name, os.environ.get(WORKER_GPUS))
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu


def gpu_for(name, gpus: str | None) -> str | None:
    """The GPU id of the worker named ``name`` (LocalCluster names them 0, 1, ...) in ``gpus`` ("0,1,..."), or None."""
    ids = [g for g in (gpus or "").split(",") if g]
    if not ids:
        return None
    try:
        return ids[int(name) % len(ids)]
    except (TypeError, ValueError):
        return None
