"""reefmap runs on real dask clusters: SLURM jobs (marker ``slurm``), a cancelled job, GPU pinning on a mixed cluster.

The SLURM tests use the local SLURM (``cluster/local-slurm/start.sh``) through ``reefmap.cluster.launch("slurm-cpu")``
and skip with the reason when it is down. Every map is compared, layer by layer, with the same run done in this
process (``client="inprocess"``); torch runs one thread on both sides, since its results change in the last bits with
the thread count.
"""

from __future__ import annotations

import os
import subprocess
import time

import numpy as np
import pytest

from reefmap.cluster import launcher as cluster
from reefmap.execute.executors import Distributed
from reefmap.execute.runner import RunOptions, execute, prepare, run
from reefmap.sources import open_mosaic
from reefmap.store.format import FINISHED_STATES, TileState
from slurm_fixtures import reap, slurm, slurm_overrides, squeue, wait_until  # noqa: F401  (fixtures + helpers)
from test_run import layers

TILE = 64  # the 600 x 800 px zarr_mosaic in 10 x 13 = 130 small tiles: many tasks, each quick
ONE_THREAD = ["export REEFMAP_INFERENCE_THREADS=1", "export OMP_NUM_THREADS=1"]


@pytest.fixture
def one_torch_thread():
    """torch with one thread in this process (as on the single-threaded workers), restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _overrides(slurm_overrides: dict) -> dict:
    return dict(slurm_overrides, job_script_prologue=[*slurm_overrides["job_script_prologue"], *ONE_THREAD])


def _reference(mosaic, bundle, out, tile=TILE):
    """The same run in this process (the map every cluster run must reproduce byte for byte)."""
    s = run(mosaic, bundle.path, out, tile=tile, client="inprocess", progress=False)
    assert s.failed == 0 and s.computed == s.planned
    return layers(out)


def _warm_up(client, bundle) -> list:
    """Futures loading the model on every worker (torch's import is most of a cold worker's first tile)."""
    from reefmap.model.segmenter import load_model

    return [client.submit(lambda p: load_model(p) and None, str(bundle.path), workers=[a], pure=False)
            for a in client.scheduler_info()["workers"]]  # fmt: skip


def _assert_same_map(path, ref):
    got = layers(path)
    for name, a, b in zip(("reef_probability", "classification", "tile_status"), got, ref):
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert np.isin(got[2], FINISHED_STATES).all()


def _tile_workers(task_stream) -> list[str]:
    return [t["worker"] for t in task_stream if str(t["key"]).startswith("reefmap-tile-")]


# ------------------------------------------------------------------------------------------- real SLURM
@pytest.mark.slurm
def test_slurm_run_writes_the_same_map_as_in_process(slurm, slurm_overrides, zarr_mosaic, random_bundle, tmp_path,
                                                      one_torch_thread, reap, capsys):
    from distributed import get_task_stream

    path, _ = zarr_mosaic
    mosaic = open_mosaic(str(path))
    name = slurm_overrides["job_name"]
    client = cluster.launch("slurm-cpu", jobs=2, timeout=60, **_overrides(slurm_overrides))
    try:
        assert "dashboard: http" in capsys.readouterr().out
        jobs = squeue(name)
        assert len(jobs) == 2 and set(jobs.values()) == {"RUNNING"}, jobs
        workers = client.scheduler_info()["workers"]
        assert len(workers) == 2 and {str(w.job_id) for w in client.cluster.workers.values()} == set(jobs)
        warm = _warm_up(client, random_bundle)
        ref = _reference(mosaic, random_bundle, tmp_path / "local.zarr")  # meanwhile, the in-process map
        client.gather(warm)
        with get_task_stream(client) as ts:
            summary = run(mosaic, random_bundle.path, tmp_path / "slurm.zarr", tile=TILE, client=client, progress=False)
        assert summary.failed == 0 and summary.computed == summary.planned == 130
        used = _tile_workers(ts.data)
        assert len(used) == summary.planned and set(used) <= set(workers)  # every tile ran in a SLURM job
    finally:
        client.shutdown()
    t_shutdown = time.monotonic()
    assert wait_until(lambda: not squeue(name), timeout=10), squeue(name)
    assert time.monotonic() - t_shutdown < 5, "the jobs took more than a few seconds to leave the queue"
    _assert_same_map(tmp_path / "slurm.zarr", ref)


@pytest.mark.slurm
def test_slurm_run_survives_a_cancelled_worker_job(slurm, slurm_overrides, zarr_mosaic, random_bundle, tmp_path,
                                                    one_torch_thread, reap):
    """``scancel`` of one of two worker jobs mid-run: the run finishes on the other; the map is unchanged.

    (The replacement of the job by ``adapt`` is tested in test_cluster.py; here a replacement would only add a
    cold worker start to the test's time.)
    """
    path, _ = zarr_mosaic
    mosaic = open_mosaic(str(path))
    name = slurm_overrides["job_name"]
    out = tmp_path / "slurm.zarr"
    tile = 128  # 5 x 7 = 35 tiles: enough to cancel mid-run, few enough for one worker to finish quickly
    seen: list = []
    at_cancel: dict = {}

    client = cluster.launch("slurm-cpu", jobs=2, timeout=60, **_overrides(slurm_overrides))
    try:
        job_of = client.run(lambda: os.environ["SLURM_JOB_ID"])  # worker address -> SLURM job id
        assert len(job_of) == 2 and set(job_of.values()) == set(squeue(name))
        warm = _warm_up(client, random_bundle)
        ref = _reference(mosaic, random_bundle, tmp_path / "local.zarr", tile=tile)  # meanwhile, the in-process map
        client.gather(warm)
        plan, job, store = prepare(mosaic, random_bundle.path, out, tile=tile)

        def on_outcome(outcome):
            seen.append(outcome)
            if len(seen) >= 6 and not at_cancel:  # mid-run: 6+ of 35 tiles back, others in flight
                processing = client.processing()
                busy = max(job_of, key=lambda a: len(processing.get(a, ())))
                if not processing.get(busy):  # between two submits (a loaded machine): cancel at a later outcome
                    return
                at_cancel.update(victim=job_of[busy], in_flight=len(processing.get(busy, ())),
                                 pending=int((store.states() == TileState.PENDING).sum()))
                subprocess.run(["scancel", at_cancel["victim"]], check=True, timeout=10)

        summary = execute(plan, job, store, Distributed(client), RunOptions(progress=False), on_outcome=on_outcome)
        assert at_cancel, "the run ended before the cancel"
        assert at_cancel["in_flight"] >= 1 and at_cancel["pending"] >= 20, at_cancel  # the cancel landed mid-run
        assert summary.failed == 0 and not summary.stopped
        assert summary.computed >= plan.count  # a tile killed with its worker may be reported twice, never lost
        assert wait_until(lambda: at_cancel["victim"] not in squeue(name), timeout=10), squeue(name)
        assert len(client.scheduler_info()["workers"]) == 1
        # a second run() finds every tile finished: nothing is left to resume
        again = run(mosaic, random_bundle.path, out, tile=tile, client=client, progress=False)
        assert again.computed == 0 and again.already_finished == plan.count
    finally:
        client.shutdown()
    assert wait_until(lambda: not squeue(name), timeout=10), squeue(name)
    _assert_same_map(out, ref)


# ------------------------------------------------------------------------------------------- mixed LocalCluster
def test_tiles_run_only_on_the_gpu_worker_of_a_mixed_cluster(zarr_mosaic, random_bundle, tmp_path, one_torch_thread):
    """One plain worker and one advertising ``GPU=1``: ``run()`` pins every tile's model step to the GPU worker."""
    from distributed import Client, Scheduler, SpecCluster, Worker, get_task_stream

    path, _ = zarr_mosaic
    mosaic = open_mosaic(str(path))
    spec = {"cpu": {"cls": Worker, "options": {"nthreads": 1}},
            "gpu": {"cls": Worker, "options": {"nthreads": 1, "resources": {"GPU": 1}}}}  # fmt: skip
    with SpecCluster(scheduler={"cls": Scheduler, "options": {"dashboard_address": ":0"}}, workers=spec,
                     silence_logs=40) as spec_cluster, Client(spec_cluster) as client:  # fmt: skip
        client.wait_for_workers(2, timeout=30)
        by_name = {w["name"]: a for a, w in client.scheduler_info()["workers"].items()}
        assert set(by_name) == {"cpu", "gpu"}
        # control: without resource restrictions this cluster uses both workers
        with get_task_stream(client) as control:
            client.gather(client.map(time.sleep, [0.05] * 8, pure=False))
        assert {t["worker"] for t in control.data} == set(by_name.values())
        with get_task_stream(client) as ts:
            summary = run(mosaic, random_bundle.path, tmp_path / "m.zarr", tile=128, client=client, progress=False)
    assert summary.failed == 0 and summary.computed == summary.planned == 5 * 7
    # the model step of every tile ran on the GPU worker; its reads and writes were free to run anywhere
    steps = {}
    for t in ts.data:
        key = str(t["key"])
        if key.startswith("reefmap-tile-"):
            step = key.rsplit("-", 1)[-1] if key.endswith(("-read", "-predict")) else "write"
            steps.setdefault(step, []).append(t["worker"])
    assert {k: len(v) for k, v in steps.items()} == {"read": 35, "predict": 35, "write": 35}
    assert set(steps["predict"]) == {by_name["gpu"]}, {a: steps["predict"].count(a) for a in set(steps["predict"])}
    run(mosaic, random_bundle.path, tmp_path / "ref.zarr", tile=128, client="inprocess", progress=False)
    _assert_same_map(tmp_path / "m.zarr", layers(tmp_path / "ref.zarr"))  # three steps, the same map as one
