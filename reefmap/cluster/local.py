"""The one LocalCluster recipe (the ``local`` profile's), and the scheduler's list of connected workers."""

from __future__ import annotations

import logging
import os
from typing import Any

from reefmap.cluster.worker import WORKER_GPUS
from reefmap.errors import InvalidParameter


def visible_gpus() -> list[str]:
    """The ids of the NVIDIA GPUs this process may use, without importing torch: ``CUDA_VISIBLE_DEVICES`` when set
    (``""`` or ``-1``: none), else one per GPU the driver lists in ``/proc/driver/nvidia/gpus``."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = [g.strip() for g in env.split(",") if g.strip()]
        return [] if ids[:1] == ["-1"] else ids
    try:
        return [str(i) for i in range(len(os.listdir("/proc/driver/nvidia/gpus")))]
    except OSError:
        return []


def runs_on_gpu(device: str | None) -> bool:
    """Whether a model asked to run on ``device`` runs on a GPU: a CUDA device, or None (torch's choice) where a GPU
    is visible (``visible_gpus``)."""
    return str(device).startswith("cuda") if device is not None else bool(visible_gpus())


def gpu_layout(options: dict[str, Any], jobs: int | None, gpus: list[str], cores: int) -> dict[str, Any]:
    """LocalCluster keywords for a host with ``gpus``: one worker process per GPU (each its own GPU, one CUDA
    context, model loaded once), fed by ``cores / GPUs`` threads that read, decode and write while its model step
    (asked for with ``resources={"GPU": 1}``) runs on the GPU. Applies only where the profile leaves the layout to
    reefmap (``n-workers`` null, ``jobs`` not given) and uses processes; otherwise ``options`` as they are."""
    if not gpus or jobs is not None or options.get("n_workers") is not None or not options.get("processes", True):
        return dict(options)
    return {**options, "n_workers": len(gpus), "threads_per_worker": max(2, cores // len(gpus)),
            "resources": {"GPU": 1}}


def start_local(name: str, options: dict[str, Any], jobs: int | None = None, adapt: tuple[int, int] | None = None,
                wait: bool = True, timeout: float = 300):
    """A LocalCluster from a local profile's merged ``options`` (LocalCluster keywords) and a Client on it.

    With worker processes (the default): reefmap's numba kernels are compiled (or loaded from numba's on-disk cache)
    here once before the workers start, so that they load the cached code instead of each compiling it at once;
    the nannies preload ``reefmap.cluster.nanny`` (glibc's malloc stays adaptive in the workers) and the workers
    ``reefmap.cluster.worker`` (a Ctrl-C at the terminal is left to this process).
    ``silence_logs`` may be a level name. ``jobs`` workers (or ``adapt`` between min and max) win over
    ``n_workers``; with ``wait``, returns once they are connected (at most ``timeout`` seconds). On a host with
    GPUs, a profile that leaves ``n_workers`` to reefmap gets :func:`gpu_layout`: one worker per GPU.
    """
    from distributed import Client, LocalCluster

    gpus = visible_gpus()
    kw = gpu_layout(options, jobs, gpus, os.cpu_count() or 1)
    if "resources" in kw and "resources" not in options:  # the GPU layout: each worker takes its own GPU
        os.environ[WORKER_GPUS] = ",".join(gpus)
    else:
        os.environ.pop(WORKER_GPUS, None)
    if kw.get("processes", True):
        from reefmap.compute.kernels import compile_all

        compile_all()
        kw["preload_nanny"] = [*kw.get("preload_nanny", []), "reefmap.cluster.nanny"]
        kw["preload"] = [*kw.get("preload", []), "reefmap.cluster.worker"]  # Ctrl-C is this process's to handle
    if isinstance(kw.get("silence_logs"), str):  # the worker side wants a level number
        level = getattr(logging, kw["silence_logs"].upper(), None)
        if not isinstance(level, int):
            raise InvalidParameter(f"profile {name}: silence_logs {kw['silence_logs']!r} is not a logging level "
                                   f"name (DEBUG, INFO, WARNING, ERROR, CRITICAL)")  # fmt: skip
        kw["silence_logs"] = level
    if jobs is not None:
        kw["n_workers"] = jobs
    if adapt is not None:
        kw["n_workers"] = adapt[0]
    try:
        cluster = LocalCluster(**kw)
    except TypeError as e:
        raise InvalidParameter(f"profile {name}: LocalCluster rejects the options {sorted(kw)}: {e}") from None
    client = Client(cluster)
    try:
        if adapt is not None:
            cluster.adapt(minimum=adapt[0], maximum=adapt[1])
        n = adapt[0] if adapt is not None else kw.get("n_workers")
        print(f"reefmap: cluster '{name}' (LocalCluster, {len(cluster.workers)} workers); "
              f"dashboard: {cluster.dashboard_link}", flush=True)  # fmt: skip
        if wait and n:
            client.wait_for_workers(n, timeout=timeout)
    except BaseException:
        client.close()
        cluster.close()
        raise
    return client


def connected_workers(client) -> dict:
    """``{address: info}`` of the workers connected now, asked of the scheduler directly.

    Not ``client.scheduler_info()["workers"]``: that returns the client's cached identity, which a periodic
    background refresh replaces with one *without* per-worker details, so it can read as "no workers".
    """
    return dict(client.sync(client.scheduler.identity, n_workers=-1).get("workers", {}))
