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
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Iterator

from reefmap.cluster.local import connected_workers, runs_on_gpu
from reefmap.compute.tiles import predict_tiles, read_tiles, run_tiles, write_tiles

log = logging.getLogger("reefmap.execute")

#: the ``client`` (or cluster profile) that means "no dask cluster: a thread of this process"
INPROCESS = "inprocess"


class InProcess:
    """Threads of this process (no dask): each group of tiles goes through a three-stage pipeline, its read on a
    reader thread, its model step on the model thread(s), its write and marks on a writer thread, so that the next
    groups are read and the previous ones written while the model computes (a GPU is fed while the host decodes and
    encodes; on a CPU the I/O overlaps torch's threads). A group's steps run in order and its state is written
    after its pixels, as everywhere; the model step runs ``model_slots`` at a time (1 on a CPU, where torch takes the
    cores; 2 on a CUDA model, each call on its own stream, so that one call's host work overlaps the other's
    kernels). ``io_threads``: reader threads and writer threads each (default: ``io_threads_default()``).

    A context manager: on exit it waits for the groups already started (groups not started are dropped when their
    futures are cancelled, as ``submit_bounded`` does on an error)."""

    #: parts of a plan to keep on one worker each (``cache_order``)
    parts = 1

    def __init__(self, io_threads: int | None = None, model_slots: int | None = None):
        self.io_threads = io_threads or io_threads_default()
        self.model_slots = model_slots
        self.readers = ThreadPoolExecutor(self.io_threads, thread_name_prefix="reefmap-read")
        self.writers = ThreadPoolExecutor(self.io_threads, thread_name_prefix="reefmap-write")
        self.model: ThreadPoolExecutor | None = None  # sized by the first job (its device)
        self.lock = threading.Lock()
        self.started: set[Future] = set()

    def __enter__(self) -> InProcess:
        return self

    def __exit__(self, *exc) -> None:
        while True:  # a group started meanwhile is waited for too
            with self.lock:
                running = list(self.started)
            if not running:
                break
            wait(running)
        for pool in (self.readers, self.model, self.writers):
            if pool is not None:
                pool.shutdown(cancel_futures=True)

    def depth(self, max_in_flight: int | None = None) -> int:
        """Groups in flight: enough that the readers and writers are busy and the model always has one waiting."""
        return max_in_flight or 2 * self.io_threads + (self.model_slots or 1) + 1

    def submit(self, job, tasks, key: str, part: int | None = None) -> Future:
        """A future of the group's ``TileOutcome`` list: read → model → write, each step on its threads."""
        if self.model is None:
            with self.lock:
                if self.model is None:
                    self.model_slots = self.model_slots or model_slots(job, runs_on_gpu(job.device))
                    self.model = ThreadPoolExecutor(self.model_slots, thread_name_prefix="reefmap-model")
        out: Future = Future()

        def step(fn, *args, nxt=None):  # one step here, then the next one on its threads (or the group's result)
            try:
                r = fn(*args)
            except BaseException as e:
                self._finish(out, error=e)
                return
            if nxt is None:
                self._finish(out, result=r)
            else:
                nxt(r)

        def then(pool, fn, *args, nxt=None):
            try:
                pool.submit(step, fn, *args, nxt=nxt)
            except RuntimeError as e:  # the executor is closing
                self._finish(out, error=e)

        def start():
            with self.lock:
                if not out.set_running_or_notify_cancel():
                    return  # cancelled before it started
                self.started.add(out)
            step(read_tiles, job, tasks,
                 nxt=lambda batch: then(self.model, predict_tiles, job, batch,
                                        nxt=lambda b: then(self.writers, write_tiles, job, b)))

        self.readers.submit(start)
        return out

    def _finish(self, out: Future, result=None, error: BaseException | None = None) -> None:
        if error is not None:
            out.set_exception(error)
        else:
            out.set_result(result)
        with self.lock:
            self.started.discard(out)

    def wait_one(self, futures):
        return next(iter(wait(futures, return_when=FIRST_COMPLETED).done))


def io_threads_default() -> int:
    """Reader (and writer) threads of the in-process pipeline: a quarter of the cores, 2 to 8."""
    return max(2, min(8, (os.cpu_count() or 1) // 4))


def model_slots(job, gpu: bool) -> int:
    """Model steps at once in one process: on a GPU (``gpu``) 2, each on its own CUDA stream, so that one step's host
    work (copies into pinned memory, launching kernels, unpacking results) overlaps the other's kernels; 1 for a
    compiled network (``torch.compile`` compiles on the first call: one at a time) and on a CPU, where one step's
    torch threads take the cores."""
    return GPU_MODEL_SLOTS if gpu and not job.compile else 1


#: model steps at once per GPU (``model_slots``)
GPU_MODEL_SLOTS = 2


class Distributed:
    """The workers of a ``distributed.Client``.

    On GPU workers (the cluster advertises ``--resources GPU=1``; asked again while none has joined, see
    :class:`GpuPinning`) a group is three tasks: only the model step holds the GPU, reads and writes run on the
    worker's other threads meanwhile (the scheduler keeps the three steps on one worker: the data is there). A model
    step asks for ``1 / model_slots`` of a GPU: two run at once on a GPU worker, each on its own CUDA stream.
    """

    def __init__(self, client):
        self.client = client
        workers = connected_workers(client)
        self.gpu = GpuPinning(client, workers)
        self.workers = max(1, len(workers))
        self.addresses = sorted(workers)
        self.parts = max(1, len(self.addresses))

    def depth(self, max_in_flight: int | None = None) -> int:
        # GPU workers take more groups at once: the next ones read while two predict and others write
        return max_in_flight or max(4, (6 if self.gpu.pinned else 2) * self.workers)

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
        share = {k: v / model_slots(job, gpu=True) for k, v in resources.items()}
        pred = client.submit(predict_tiles, job, read, key=key + "-predict", pure=False, resources=share)
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
