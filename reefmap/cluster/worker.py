"""A dask worker preload for the LocalClusters reefmap starts: ``preload=["reefmap.cluster.worker"]``.

A Ctrl-C at the terminal reaches the whole foreground process group: the worker processes too. The process that
started the cluster handles it (it stops the run and shuts the cluster down; finished tiles are kept), so the
workers ignore it, instead of each printing a KeyboardInterrupt traceback while the cluster goes down.
"""

from __future__ import annotations

import signal


def dask_setup(worker) -> None:
    """Called in the worker process as it starts (in its main thread, where signal handlers are set)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
