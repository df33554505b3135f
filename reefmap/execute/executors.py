"""Where tile groups run: one small class per backend, and the one meaning of ``client``.

Each executor has the same three methods and an attribute: ``depth(max_in_flight)`` (how many groups it takes at
once), ``submit(job, tasks, key, part)`` (a future of the group's ``TileOutcome`` list; ``part``: the part of the
plan, ``cache_order``, kept on one worker), ``parts`` (how many such parts: its workers) and ``wait_one(futures)`` (the first
done). :func:`open_executor` turns a run's ``client`` argument into an executor for the length of the run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any, Iterator

from reefmap.cluster.local import connected_workers
from reefmap.compute.tiles import predict_tiles, read_tiles, run_tiles, write_tiles

log = logging.getLogger("reefmap.execute")

#: the ``client`` (or cluster profile) that means "no dask cluster: a thread of this process"
INPROCESS = "inprocess"


class InProcess:
    """A thread of this process (torch uses the cores inside it); no dask. A context manager: on exit it waits
    for the group running now (groups not started are dropped when their futures are cancelled)."""

    def __init__(self):
        self.pool = ThreadPoolExecutor(1)

    def __enter__(self) -> InProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown()

    def depth(self, max_in_flight: int | None = None) -> int:
        return max_in_flight or 2  # one group computing, the next one queued

    #: parts of a plan to keep on one worker each (``cache_order``)
    parts = 1

    def submit(self, job, tasks, key: str, part: int | None = None):
        return self.pool.submit(run_tiles, job, tasks)

    def wait_one(self, futures):
        return next(iter(wait(futures, return_when=FIRST_COMPLETED).done))


class Distributed:
    """The workers of a ``distributed.Client``.

    On GPU workers (the cluster advertises ``--resources GPU=1``; asked again while none has joined, see
    :class:`GpuPinning`) a group is three tasks: only the model step holds the GPU, reads and writes run on the
    worker's other threads meanwhile (the scheduler keeps the three steps on one worker: the data is there).
    """

    def __init__(self, client):
        self.client = client
        workers = connected_workers(client)
        self.gpu = GpuPinning(client, workers)
        self.workers = max(1, len(workers))
        self.addresses = sorted(workers)
        self.parts = max(1, len(self.addresses))

    def depth(self, max_in_flight: int | None = None) -> int:
        # GPU workers take more groups at once: the next ones read while one predicts and others write
        return max_in_flight or max(4, (4 if self.gpu.pinned else 2) * self.workers)

    def submit(self, job, tasks, key: str, part: int | None = None):
        """``part``: the part of the plan (``cache_order``) the tiles belong to; each part prefers one worker (its
        source-chunk cache holds the neighbours' chunks), others take it when that one is gone or busy."""
        client, resources = self.client, self.gpu.resources()
        where = {}
        if part is not None and self.addresses:
            where = dict(workers=[self.addresses[part % len(self.addresses)]], allow_other_workers=True)
        if resources is None:
            return client.submit(run_tiles, job, tasks, key=key, pure=False, **where)
        read = client.submit(read_tiles, job, tasks, key=key + "-read", pure=False, **where)
        pred = client.submit(predict_tiles, job, read, key=key + "-predict", pure=False, resources=resources)
        return client.submit(write_tiles, job, pred, key=key, pure=False)

    def wait_one(self, futures):
        from distributed import wait as dask_wait

        return next(iter(dask_wait(futures, return_when="FIRST_COMPLETED").done))


def _gpu_resources(workers: dict) -> dict | None:
    """Pin tile tasks to GPU workers when the cluster advertises any (``--resources GPU=1``)."""
    if any(w.get("resources", {}).get("GPU") for w in workers.values()):
        return {"GPU": 1}
    return None


class GpuPinning:
    """The resources a model step asks for: ``{"GPU": 1}`` once a GPU worker is connected, else None. Asked of the
    scheduler again at most every ``every`` seconds until a GPU worker shows up, then kept: an adaptive cluster may
    start with no workers, and its GPU workers join while the run is going."""

    def __init__(self, client, workers: dict, every: float = 5.0):
        self.client, self.every = client, every
        self.pinned = _gpu_resources(workers)
        self.checked = time.monotonic()

    def resources(self) -> dict | None:
        if self.pinned is None and time.monotonic() - self.checked > self.every:
            self.pinned, self.checked = _gpu_resources(connected_workers(self.client)), time.monotonic()
        return self.pinned


@contextlib.contextmanager
def open_executor(client: Any = None, *, profile: str | os.PathLike = "local", jobs: int | None = None,
                  logger=None) -> Iterator[InProcess | Distributed]:
    """The executor of a run, for the length of the run: the one meaning of ``client`` in ``run`` and ``run_batch``.

    - ``None``: launch ``profile`` (the embedded default ``"local"``: a LocalCluster; a global run passes its
      config's ``cluster.profile``), as for a profile name below;
    - ``"inprocess"``: no dask cluster, a thread of this process;
    - a profile name (``"local"``, ``"slurm-gpu"``, ...) or a profile file: launched with ``jobs`` workers (SLURM:
      jobs; None = the profile's default) and shut down at the end (its SLURM jobs cancelled);
    - a scheduler address (``tcp://host:8786``): connected to, and only disconnected at the end;
    - a ``distributed.Client``: used as it is (not closed).

    The dashboard line of a launch goes to stderr: stdout is left to the run's results (``reefmap run --json``).
    """
    lg = logger or log
    target = profile if client is None else client
    if not isinstance(target, (str, os.PathLike)):
        yield Distributed(target)
        return
    if target == INPROCESS:
        lg.info("inprocess: computing in a thread of this process (no dask cluster)")
        with InProcess() as ex:
            yield ex
        return
    from reefmap.cluster.launcher import is_address, launch

    connect = is_address(target)
    lg.info(f"{'connecting to' if connect else 'launching cluster profile'} {os.fspath(target)!r}"
            + (f" with {jobs} jobs" if jobs and not connect else ""))
    with contextlib.redirect_stdout(sys.stderr):
        c = launch(target) if connect else launch(target, jobs)
    abandon = False
    try:
        yield Distributed(c)
    except BaseException:  # Ctrl-C, an unwritable store ...: the tiles in flight are not waited for
        abandon = True
        raise
    finally:
        close_client(c, shutdown=not connect, logger=lg, abandon=abandon)


def stop_local_workers(client, timeout: float = 0.5) -> None:
    """Stop the worker processes of the LocalCluster behind ``client`` within ``timeout`` seconds, abandoning their
    running tiles (a shutdown lets each finish first: seconds to minutes). Safe: a tile's writes are idempotent and
    its state is written after its pixels, so an abandoned tile is simply computed again by the next run."""
    import asyncio

    from distributed import Nanny

    cluster = getattr(client, "cluster", None)
    nannies = [w for w in getattr(cluster, "workers", {}).values() if isinstance(w, Nanny)]
    if not nannies:
        return

    async def close_all():
        await asyncio.gather(*(n.close(timeout=timeout, reason="reefmap-abandon") for n in nannies),
                             return_exceptions=True)

    cluster.sync(close_all)


def close_client(client, *, shutdown: bool, logger=None, abandon: bool = False) -> None:
    """``shutdown``: stop the cluster (and cancel its SLURM jobs); else disconnect. A cluster already gone is fine.
    ``abandon`` (with ``shutdown``): the run is being abandoned: a LocalCluster's workers stop at once."""
    try:
        if shutdown and abandon:
            stop_local_workers(client)
        client.shutdown() if shutdown else client.close()
    except Exception as e:
        (logger or log).debug(f"closing the cluster: {type(e).__name__}: {e}")
        with contextlib.suppress(Exception):
            client.close()
