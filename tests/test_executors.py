"""The in-process executor is a pipeline: reads, the model step and writes of different tile groups overlap in
threads of this process, one model step at a time on a CPU (two on a GPU, each on its own stream), with the same
pixels as computing the groups one after the other."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import zarr

import reefmap.execute.executors as executors
from reefmap.compute.tiles import TileJob, run_tiles
from reefmap.execute.executors import GPU_MODEL_SLOTS, InProcess, model_slots
from reefmap.execute.runner import run
from reefmap.model.segmenter import load_model
from reefmap.planning.plan import plan_tiles
from reefmap.sources import open_mosaic
from reefmap.sources.base import reader_of
from reefmap.store.mapstore import MapStore
from conftest import torch_devices


def layer_bytes(path) -> dict:
    g = zarr.open_group(str(path), mode="r")
    return {k: g[k][...].tobytes() for k in ("reef_probability", "classification", "tiles/status")}


@pytest.fixture
def traced(monkeypatch):
    """The executor's three steps, each still the real step, with when it started and ended on which thread."""
    events = []
    lock = threading.Lock()

    def trace(name, fn):
        def step(job, arg):
            t0 = time.perf_counter()
            try:
                return fn(job, arg)
            finally:
                with lock:
                    events.append((name, t0, time.perf_counter(), threading.current_thread().name))
        return step

    for name in ("read_tiles", "predict_tiles", "write_tiles"):
        monkeypatch.setattr(executors, name, trace(name, getattr(executors, name)))
    return events


def tile_job(mosaic_path, bundle, out):
    """The plan (tiles of 128 px) and a ``TileJob`` into a new map at ``out``, as a run makes them."""
    mosaic = open_mosaic(str(mosaic_path))
    meta = load_model(bundle.path).meta
    plan = plan_tiles(reader_of(mosaic).geobox, 128, meta.halo, size_multiple=meta.size_multiple)
    store = MapStore.create_or_open(out, plan.grid, {"model": meta.sha256, "halo": meta.halo}, {})
    return plan, TileJob(reader_of(mosaic).spec(), meta.path, store)


def overlaps(a, b) -> bool:
    return a[1] < b[2] and b[1] < a[2]


def test_in_process_groups_are_read_and_written_while_the_model_computes(zarr_mosaic, random_bundle, tmp_path, traced):
    path, _ = zarr_mosaic
    summary = run(open_mosaic(str(path)), random_bundle.path, tmp_path / "piped.zarr", tile=128, client="inprocess",
                  batch=1, progress=False)
    assert summary.executor == "inprocess" and summary.failed == 0 and summary.computed == summary.planned == 35
    model = [e for e in traced if e[0] == "predict_tiles"]
    io = [e for e in traced if e[0] != "predict_tiles"]
    assert len(model) == 35 and len(io) == 70
    assert not any(overlaps(a, b) for i, a in enumerate(model) for b in model[i + 1:])  # one model step at a time
    assert {e[3].rsplit("_", 1)[0] for e in model} == {"reefmap-model"}
    assert {e[3].rsplit("_", 1)[0] for e in io} == {"reefmap-read", "reefmap-write"}
    busy = sum(any(overlaps(m, e) for e in io) for m in model)
    assert busy >= 10, f"only {busy} of 35 model steps overlapped a read or a write"

    # the same pixels and states as each group computed alone, one after the other
    plan, job = tile_job(path, random_bundle, tmp_path / "serial.zarr")
    for task in plan.tasks():
        run_tiles(job, [task])
    assert layer_bytes(tmp_path / "serial.zarr") == layer_bytes(tmp_path / "piped.zarr")


def test_groups_cancelled_before_they_start_are_never_read(zarr_mosaic, random_bundle, tmp_path, traced):
    plan, job = tile_job(zarr_mosaic[0], random_bundle, tmp_path / "m.zarr")
    store, tasks = job.store, list(plan.tasks())
    gate = threading.Event()
    with InProcess(io_threads=1) as ex:
        ex.readers.submit(gate.wait)  # the one reader thread is busy: every group waits to start
        futures = [ex.submit(job, [t], f"k{i}") for i, t in enumerate(tasks[:6])]
        assert all(f.cancel() for f in futures[2:])
        gate.set()
        done = [f.result() for f in futures[:2]]
    assert [o[0].index for o in done] == [tuple(tasks[0].index), tuple(tasks[1].index)]
    assert all(f.cancelled() for f in futures[2:])
    assert sorted(e[0] for e in traced) == ["predict_tiles"] * 2 + ["read_tiles"] * 2 + ["write_tiles"] * 2
    states = store.states()
    assert int((states > 0).sum()) == 2  # only the two groups that ran were recorded


def test_a_step_that_raises_fails_its_group_only(zarr_mosaic, random_bundle, tmp_path, monkeypatch):
    """An exception escaping a step (not a tile's own failure, which the step records) reaches that group's future;
    the other groups finish."""
    plan, job = tile_job(zarr_mosaic[0], random_bundle, tmp_path / "m.zarr")
    tasks = list(plan.tasks())[:4]
    real = executors.write_tiles

    def write(job, batch):
        if batch.tasks[0].index == tasks[1].index:
            raise OSError("disk gone")
        return real(job, batch)

    monkeypatch.setattr(executors, "write_tiles", write)
    with InProcess() as ex:
        futures = [ex.submit(job, [t], f"k{i}") for i, t in enumerate(tasks)]
        with pytest.raises(OSError, match="disk gone"):
            futures[1].result()
        assert [f.result()[0].state for i, f in enumerate(futures) if i != 1] == [1, 1, 1]


def test_model_slots_two_per_gpu_one_on_a_cpu_or_compiling(random_bundle):
    job = TileJob({}, random_bundle.path, None)
    assert model_slots(job, gpu=True) == GPU_MODEL_SLOTS == 2
    assert model_slots(job, gpu=False) == 1
    assert model_slots(TileJob({}, random_bundle.path, None, compile=True), gpu=True) == 1
    with InProcess(io_threads=3) as ex:
        assert ex.depth() == 3 * 2 + 1 + 1 and ex.depth(5) == 5


@pytest.mark.parametrize("device", torch_devices())
def test_the_device_path_from_two_threads_at_once_gives_each_call_its_own_bytes(random_bundle, device):
    """Two model steps at once (a GPU worker's two slots) share one segmenter: on CPU tensors here, the same code as
    on a GPU, where each thread has its own CUDA stream."""
    model = load_model(random_bundle.path, device=device)
    rng = np.random.default_rng(4)
    batches = [rng.integers(1, 256, (3, 3, 72, 88)).astype(np.uint8) for _ in range(6)]
    cores = [(slice(4, 68), slice(4, 84))] * 3
    alone = [model.predict_encoded(b, 0, cores) for b in batches]
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(lambda b: model.predict_encoded(list(b), 0, cores), batches))
    for a, t in zip(alone, together):
        for (pa, ca), (pt, ct) in zip(a, t):
            assert pa.tobytes() == pt.tobytes() and ca.tobytes() == ct.tobytes()


def test_tiles_per_task_default_to_four_on_a_gpu_or_a_remote_map(monkeypatch):
    from reefmap.execute.runner import GPU_BATCH, REMOTE_BATCH, default_batch

    assert GPU_BATCH == REMOTE_BATCH == 4
    assert default_batch("/data/map.zarr", "cpu") == 1 and default_batch("gs://bucket/map.zarr", "cpu") == 4
    assert default_batch("/data/map.zarr", "cuda:1") == 4
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # the device left to torch: a GPU is visible
    assert default_batch("/data/map.zarr") == 4
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert default_batch("/data/map.zarr") == 1
