"""The tile runner and the Zarr map: agreement with segment(), resume, idempotence, refusal, races, kills."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import xarray as xr
import zarr

from reefmap.errors import BandMismatch, InvalidParameter, NotAReefmapStore, StoreMismatch
from reefmap.compute.segment import segment
from reefmap.model.segmenter import load_model
from reefmap.store.status import status
from reefmap.execute.runner import RunOptions, execute, prepare, run
from reefmap.sources import open_mosaic
from reefmap.store.format import TileState
from reefmap.store.mapstore import MapStore


QUIET = RunOptions(progress=False)


def layers(path):
    g = zarr.open_group(str(path), mode="r")
    return g["reef_probability"][:], g["classification"][:], g["tiles/status"][:]


def test_runner_agrees_with_segment_and_store_decodes_like_it(memory_mosaic, random_bundle, tmp_path):
    da, arr = memory_mosaic
    summary = run(da, random_bundle.path, tmp_path / "m.zarr", tile=128, client="inprocess", progress=False)
    assert summary.planned == 6 * 8 and summary.computed == 48 and summary.failed == 0
    assert summary.skipped >= 1  # the nodata corner
    ds = xr.open_zarr(tmp_path / "m.zarr", consolidated=False)
    ref = segment(da, load_model(random_bundle), tile=128).compute(scheduler="threads")
    np.testing.assert_array_equal(ds.classification.values, ref.classification.values)
    np.testing.assert_allclose(ds.reef_probability.values, ref.reef_probability.values, atol=1e-6, equal_nan=True)
    assert ds.rio.crs == da.rio.crs and ds.rio.transform() == da.rio.transform()
    assert ds.classification.attrs["flag_meanings"] == "nodata deep_water shallow reef land cloud unfinished"
    attrs = json.loads(ds.attrs["reefmap"])
    assert attrs["model"]["sha256"] == random_bundle.sha256 and attrs["parameters"]["halo"] == 32
    assert attrs["reefmap_version"].startswith("0.1.0") and attrs["sources"][0]["kind"] == "memory"


def test_resume_computes_only_unfinished_tiles(zarr_mosaic, random_bundle, tmp_path):
    path, _ = zarr_mosaic
    mosaic = open_mosaic(str(path))
    out = tmp_path / "m.zarr"
    plan, job, store = prepare(mosaic, random_bundle.path, out, tile=128)
    # finish a third of the plan, as a killed run would have
    part = np.zeros(tuple(plan.grid.shape), bool)
    part[:2] = True
    execute(plan.__class__(plan.grid, plan.halo, part), job, store, options=QUIET)
    first = store.states().copy()
    assert (first[:2] != 0).all() and (first[2:] == 0).all()
    s = run(mosaic, random_bundle.path, out, tile=128, client="inprocess", progress=False)
    assert s.already_finished == 2 * plan.grid.shape.x and s.computed == plan.count - s.already_finished
    again = run(mosaic, random_bundle.path, out, tile=128, client="inprocess", progress=False)
    assert again.computed == 0 and again.already_finished == plan.count
    full = run(mosaic, random_bundle.path, tmp_path / "fresh.zarr", tile=128, client="inprocess", progress=False)
    assert full.computed == plan.count
    for a, b in zip(layers(out), layers(tmp_path / "fresh.zarr")):
        np.testing.assert_array_equal(a, b)
    st = status(str(out))
    assert st["planned"] == plan.count and st["pending"] == 0 and st["percent_done"] == 100.0
    assert st["done"] + st["skipped"] == plan.count


def test_bbox_run_plans_a_subset_and_status_counts_pending(zarr_mosaic, random_bundle, tmp_path):
    path, _ = zarr_mosaic
    mosaic = open_mosaic(str(path))
    gb = mosaic.rio.transform()
    from reefmap.sources.base import reader_of

    g = reader_of(mosaic).geobox.geographic_bounds()
    box = (g.left, g.bottom, g.left + (g.right - g.left) * 0.3, g.bottom + (g.top - g.bottom) * 0.3)
    s = run(mosaic, random_bundle.path, tmp_path / "m.zarr", bbox=box, tile=128, client="inprocess", progress=False)
    assert 0 < s.planned < 5 * 7
    st = status(str(tmp_path / "m.zarr"))
    assert st["planned"] == s.planned and st["pending"] == 0
    assert gb is not None


def test_a_store_of_another_model_or_grid_is_refused_and_left_intact(zarr_mosaic, random_bundle, tmp_path):
    import torch

    from reefmap.model.segmenter import save_bundle

    path, _ = zarr_mosaic
    mosaic = open_mosaic(str(path))
    out = tmp_path / "m.zarr"
    run(mosaic, random_bundle.path, out, tile=128, client="inprocess", progress=False)
    before = layers(out)
    other = load_model(random_bundle).net
    with torch.no_grad():
        next(other.parameters()).add_(0)  # same weights, different name → different content hash
    meta2 = json.loads(open(os.path.join(random_bundle.path, "bundle.json")).read())["meta"]
    meta2["name"] = "another-model"
    b2 = save_bundle(tmp_path / "b2", other, meta2)
    with pytest.raises(StoreMismatch, match="model: store has"):
        run(mosaic, b2.path, out, tile=128, client="inprocess", progress=False)
    with pytest.raises(StoreMismatch, match="grid"):
        run(mosaic, random_bundle.path, out, tile=256, client="inprocess", progress=False)
    for a, b in zip(before, layers(out)):
        np.testing.assert_array_equal(a, b)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "x.txt").write_text("keep me")
    with pytest.raises(NotAReefmapStore):
        run(mosaic, random_bundle.path, tmp_path / "notes", tile=128, client="inprocess", progress=False)
    assert (tmp_path / "notes" / "x.txt").read_text() == "keep me"
    with pytest.raises(NotAReefmapStore):
        status(str(tmp_path / "notes"))


def test_band_count_and_halo_are_checked_before_anything_is_written(memory_mosaic, random_bundle, tmp_path):
    da, _ = memory_mosaic
    from reefmap.sources import memory_reader
    from reefmap.sources.base import reader_of

    two = memory_reader(np.zeros((2, 64, 64), np.uint8), reader_of(da).geobox.window(
        __import__("reefmap.geometry.grid", fromlist=["Window"]).Window(0, 64, 0, 64)), nodata=0)
    with pytest.raises(BandMismatch, match="has 2 bands"):
        run(two, random_bundle.path, tmp_path / "a.zarr", client="inprocess", progress=False)
    with pytest.raises(InvalidParameter, match="receptive radius"):
        run(da, random_bundle.path, tmp_path / "b.zarr", halo=8, client="inprocess", progress=False)
    assert not (tmp_path / "a.zarr").exists() and not (tmp_path / "b.zarr").exists()


def test_two_runs_racing_on_one_store_give_the_same_map(zarr_mosaic, random_bundle, tmp_path):
    path, _ = zarr_mosaic
    mosaic = open_mosaic(str(path))
    out = tmp_path / "race.zarr"
    errors = []

    def go():
        try:
            run(mosaic, random_bundle.path, out, tile=128, client="inprocess", progress=False)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=go) for _ in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    run(mosaic, random_bundle.path, tmp_path / "solo.zarr", tile=128, client="inprocess", progress=False)
    for a, b in zip(layers(out), layers(tmp_path / "solo.zarr")):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_sigkill_at_any_moment_then_resume_gives_the_uninterrupted_map(zarr_mosaic, random_bundle, tmp_path):
    path, _ = zarr_mosaic
    cmd = [sys.executable, "-m", "reefmap.cli.main", "run", "--mosaic", str(path), "--model", random_bundle.path,
           "--tile", "64", "--workers", "1"]
    ref = tmp_path / "ref.zarr"
    subprocess.run(cmd + ["--out", str(ref)], check=True, capture_output=True, timeout=300)
    out = tmp_path / "killed.zarr"
    proc = subprocess.Popen(cmd + ["--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    killed_at = None
    while time.time() < deadline:
        if (out / "tiles" / "status" / "c").exists():
            n = sum(len(f) for _, _, f in os.walk(out / "tiles" / "status" / "c"))
            if n >= 15:
                os.killpg(proc.pid, signal.SIGKILL)
                killed_at = n
                break
        time.sleep(0.05)
    proc.wait(timeout=30)
    assert killed_at is not None, "the run finished before it could be killed"
    mid = status(str(out))
    assert 0 < mid["done"] + mid["skipped"] < mid["planned"]
    subprocess.run(cmd + ["--out", str(out)], check=True, capture_output=True, timeout=300)
    for a, b in zip(layers(out), layers(ref)):
        np.testing.assert_array_equal(a, b)
    assert status(str(out))["pending"] == 0


def test_a_stop_before_the_first_submit_computes_nothing(zarr_mosaic, random_bundle, tmp_path):
    path, _ = zarr_mosaic
    plan, job, store = prepare(open_mosaic(str(path)), random_bundle.path, tmp_path / "m.zarr", tile=128)
    stop = threading.Event()
    stop.set()
    s = execute(plan, job, store, options=QUIET, stop=stop)
    assert s.computed == 0 and s.stopped and not store.states().any()


def test_a_lost_task_fails_only_its_tiles_and_a_config_error_stops_the_run(zarr_mosaic, random_bundle, tmp_path,
                                                                           monkeypatch):
    import reefmap.execute.executors as executors  # where the in-process executor finds its steps

    path, _ = zarr_mosaic
    plan, job, store = prepare(open_mosaic(str(path)), random_bundle.path, tmp_path / "m.zarr", tile=128)
    real = executors.read_tiles

    def flaky(job, tasks):
        if tuple(tasks[0].index) == (1, 2):
            raise OSError("worker lost its disk")  # not a tile's own failure: the whole task is lost
        return real(job, tasks)

    monkeypatch.setattr(executors, "read_tiles", flaky)
    s = execute(plan, job, store, options=QUIET)
    assert s.failed == 1 and s.computed == plan.count and "worker lost its disk" in s.failures[(1, 2)]
    states = store.states()
    others = np.ones(states.shape, bool)
    others[1, 2] = False
    assert states[1, 2] == TileState.FAILED and (states[others] > 0).all() and (states[others] != TileState.FAILED).all()
    assert "task lost: OSError" in store.errors()[(1, 2)]

    monkeypatch.setattr(executors, "read_tiles", real)  # the resume retries the failed tile only
    again = execute(plan, job, store, options=QUIET)
    assert again.computed == 1 and again.failed == 0 and store.states()[1, 2] == TileState.DONE

    def misconfigured(job, tasks):
        raise BandMismatch("the mosaic has 4 bands but the model expects 3")

    monkeypatch.setattr(executors, "read_tiles", misconfigured)
    with pytest.raises(BandMismatch):
        execute(plan.__class__(plan.grid, plan.halo, np.ones(tuple(plan.grid.shape), bool)), job,
                MapStore.create_or_open(tmp_path / "n.zarr", plan.grid, {"model": "x", "halo": 0}, {}), options=QUIET)


def test_the_package_functions_stay_functions_whatever_was_imported_before():
    """``reefmap.run``/``reefmap.query`` once shared their names with submodules: the first access gave the
    function, every later one the module (the import system sets the submodule as a package attribute)."""
    import importlib
    import pkgutil

    import reefmap

    submodules = {m.name for m in pkgutil.iter_modules(reefmap.__path__)}
    for m in sorted(submodules - {"__main__"}):
        importlib.import_module(f"reefmap.{m}")
    for name in reefmap.__all__:
        if name == "__version__":
            continue
        assert name not in submodules, f"reefmap.{name} is both a function and a submodule"
        for _ in range(2):
            obj = getattr(reefmap, name)
            assert callable(obj) and obj.__name__ == name, (name, obj)


def test_concurrent_plan_records_and_error_marks_never_remove_each_others_files(tmp_path):
    """Two runs on one store record the same plan and may fail (then finish) the same tile at the same moment;
    a delete-then-create of the shared group let one remove the other's files mid-write (FileNotFoundError)."""
    from concurrent.futures import ThreadPoolExecutor

    from affine import Affine

    from reefmap.geometry.grid import GeoBox, Shape, Window
    from reefmap.planning.plan import plan_tiles

    plan = plan_tiles(GeoBox(Shape(256, 256), Affine(10.0, 0, 0, 0, -10.0, 0), "EPSG:32618"), 64, 8)
    store = MapStore.create_or_open(tmp_path / "m.zarr", plan.grid, {"model": "x", "halo": 8}, {})
    store.write_tile(Window(64, 128, 64, 128), np.full((64, 64), 9, np.uint8), np.full((64, 64), 2, np.uint8))

    def hammer(i):
        st = MapStore(store.url)  # each "run" has its own handle, as separate processes would
        for k in range(40):
            st.record_plan(plan)
            st.mark((1, 1), TileState.FAILED, f"run {i} attempt {k}")
            st.mark((1, 1), TileState.DONE)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(hammer, range(4)))
    assert store.states()[1, 1] == TileState.DONE and store.errors() == {}
    assert [p.token for p in store.plans()] == [plan.token]


# -- one meaning of client, one loop ------------------------------------------------------------------------------
class _FakeClient:
    """Enough of a distributed.Client for the executors: the scheduler's worker list, and how it was closed."""

    def __init__(self, workers=None):
        self.workers, self.closed = workers or {}, None
        self.scheduler = type("S", (), {"identity": None})()

    def sync(self, fn, **kw):
        return {"workers": self.workers}

    def shutdown(self):
        self.closed = "shutdown"

    def close(self):
        self.closed = "close"


def test_client_means_the_same_in_run_and_run_batch(monkeypatch):
    """None: launch the default profile (shut down after); 'inprocess': a thread here; a profile: launched; an
    address: connected (only disconnected after); a Client: used as it is."""
    import reefmap.cluster.launcher as launcher
    from reefmap.execute.executors import Distributed, InProcess, open_executor

    launched = []

    def fake_launch(profile, jobs=None):
        launched.append((profile, jobs))
        return _FakeClient()

    monkeypatch.setattr(launcher, "launch", fake_launch)
    with open_executor(None, jobs=3) as ex:
        assert isinstance(ex, Distributed) and launched[-1] == ("local", 3)
    assert ex.client.closed == "shutdown"
    with open_executor(None, profile="slurm-gpu", jobs=2) as ex:  # run_batch: the config's profile
        assert launched[-1] == ("slurm-gpu", 2)
    with open_executor("slurm-cpu", profile="slurm-gpu") as ex:  # an explicit client wins over the profile
        assert launched[-1] == ("slurm-cpu", None)
    with open_executor("tcp://10.0.0.5:8786") as ex:
        assert launched[-1] == ("tcp://10.0.0.5:8786", None)
    assert ex.client.closed == "close"
    n = len(launched)
    for client, profile in (("inprocess", "local"), (None, "inprocess")):
        with open_executor(client, profile=profile) as ex:
            assert isinstance(ex, InProcess) and ex.depth() == 2 * ex.io_threads + 2 and ex.depth(5) == 5
    mine = _FakeClient()
    with open_executor(mine, profile="slurm-gpu") as ex:
        assert ex.client is mine
    assert len(launched) == n and mine.closed is None


def test_in_flight_depth_is_the_executors_for_every_run():
    from reefmap.execute.executors import Distributed

    cpu = {f"w{i}": {"resources": {}} for i in range(3)}
    gpu = {f"w{i}": {"resources": {"GPU": 1}} for i in range(3)}
    assert Distributed(_FakeClient(cpu)).depth() == 6 and Distributed(_FakeClient(gpu)).depth() == 18
    assert Distributed(_FakeClient({})).depth() == 4 and Distributed(_FakeClient(gpu)).depth(7) == 7


def test_global_blocks_stream_through_one_loop_without_draining():
    """Blocks re-read the store between blocks while the loop keeps ``limit`` tasks in flight; every tile once."""
    from concurrent.futures import Future
    from types import SimpleNamespace

    from affine import Affine

    from reefmap.compute.tiles import TileOutcome
    from reefmap.execute.batch import Blocks
    from reefmap.execute.loop import submit_bounded
    from reefmap.execute.progress import RunProgress
    from reefmap.geometry.grid import GeoBox, Shape
    from reefmap.planning.plan import plan_tiles

    plan = plan_tiles(GeoBox(Shape(256, 256), Affine(10.0, 0, 0, 0, -10.0, 0), "EPSG:32618"), 16, 0)
    reads = []

    class Store:  # nothing is ever finished in it: only "submitted by this job" keeps a tile from coming back
        def states(self):
            reads.append(1)
            return np.zeros(tuple(plan.grid.shape), np.uint8)

    class Executor:
        def __init__(self):
            self.in_flight, self.order = [], []

        def submit(self, job, tasks, key):
            f = Future()
            f.tasks = tasks
            self.order.append(f)
            return f

        def wait_one(self, futures):
            self.in_flight.append(len(futures))
            f = next(f for f in self.order if f in futures)
            f.set_result([TileOutcome(t.index, int(TileState.DONE), 1, 0.0) for t in f.tasks])
            return f

    ex, outcomes = Executor(), []
    blocks = Blocks(Store(), plan.selection, block=20, in_flight=4, batch=2, rng=np.random.default_rng(0),
                    progress=RunProgress(plan.count, show=None))
    submit_bounded(blocks, plan, SimpleNamespace(store=None), ex, limit=4, on_outcome=outcomes.append)
    assert sorted(tuple(o.index) for o in outcomes) == sorted(map(tuple, plan.tiles().tolist()))
    assert blocks.rounds >= 256 // 20 and len(reads) == blocks.rounds + 1  # one read per block, one to see the end
    assert ex.in_flight[:-3] == [4] * (len(ex.in_flight) - 3)  # only the final drain runs below the limit


def test_a_small_job_with_the_default_client_runs_in_process(memory_mosaic, random_bundle, tmp_path, monkeypatch, caplog):
    """client=None starts no cluster for a job below the option inprocess_below_mpx (the summary says where it ran);
    above it, or with workers= asked for, the default profile is launched."""
    import logging

    import reefmap.cluster.launcher as launcher
    from reefmap.options import set_options

    launched = []

    class Launched(Exception):
        pass

    def fake_launch(profile, jobs=None):
        launched.append((profile, jobs))
        raise Launched

    monkeypatch.setattr(launcher, "launch", fake_launch)
    da, _ = memory_mosaic
    with caplog.at_level(logging.INFO, logger="reefmap.execute"):
        s = run(da, random_bundle.path, tmp_path / "m.zarr", tile=128, progress=False)
    assert s.executor == "inprocess" and s.computed == 48 and launched == []
    assert "small job" in caplog.text and "inprocess_below_mpx" in caplog.text
    assert json.loads(json.dumps(s.to_json()))["executor"] == "inprocess" and "inprocess)" in str(s)
    with set_options(inprocess_below_mpx=0.01), pytest.raises(Launched):
        run(da, random_bundle.path, tmp_path / "big.zarr", tile=128, progress=False)
    with pytest.raises(Launched):
        run(da, random_bundle.path, tmp_path / "asked.zarr", tile=128, workers=2, progress=False)
    assert launched == [("local", None), ("local", 2)]


def test_on_a_gpu_host_the_default_cluster_is_one_worker_per_gpu_fed_by_threads(zarr_mosaic, random_bundle, tmp_path,
                                                                                 monkeypatch):
    """Two GPUs visible (CUDA_VISIBLE_DEVICES=0,1; there is no GPU here, so torch runs on the CPU in each worker):
    the embedded default launches one worker per GPU, each with its own GPU id and cores/GPUs threads, advertising
    GPU=1; the runner then pins only the model step to it (read and write are tasks of their own), two model steps at
    a time per GPU. The map is the in-process map, byte for byte."""
    from distributed import get_task_stream

    from reefmap.cluster import launch
    from reefmap.cluster.local import gpu_layout

    assert gpu_layout({"n_workers": None}, None, ["0", "1", "2", "3"], 16) == {
        "n_workers": 4, "threads_per_worker": 4, "resources": {"GPU": 1}}
    assert gpu_layout({"n_workers": 3}, None, ["0"], 16) == {"n_workers": 3}  # the profile's own layout wins
    assert gpu_layout({"n_workers": None}, 2, ["0"], 16) == {"n_workers": None}  # so do explicit jobs
    assert gpu_layout({"n_workers": None}, None, [], 16) == {"n_workers": None}  # no GPU: one worker per core

    path, _ = zarr_mosaic
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    client = launch("local")
    try:
        info = client.run(lambda dask_worker: (os.environ.get("CUDA_VISIBLE_DEVICES"), dask_worker.state.nthreads,
                                               dict(dask_worker.state.total_resources)))
        assert sorted(v[0] for v in info.values()) == ["0", "1"]
        assert all(v[1] == max(2, (os.cpu_count() or 1) // 2) and v[2] == {"GPU": 1} for v in info.values())
        with get_task_stream(client) as ts:
            summary = run(open_mosaic(str(path)), random_bundle.path, tmp_path / "gpu.zarr", tile=128, client=client,
                          batch=1, progress=False)
    finally:
        client.close()
        client.cluster.close()
    assert summary.failed == 0 and summary.computed == summary.planned
    # a model step asks for half a GPU: two at once on a worker (each on its own CUDA stream there); with GPU=1 per
    # step they never overlapped
    spans: dict = {}
    for t in ts.data:
        if "-predict" in t["key"]:
            spans.setdefault(t["worker"], []).extend((s["start"], s["stop"]) for s in t["startstops"]
                                                     if s["action"] == "compute")
    assert len(spans) == 2
    pairs = [(a, b) for v in spans.values() for i, a in enumerate(v) for b in v[i + 1:]]
    assert any(min(a[1], b[1]) - max(a[0], b[0]) > 0.5 * min(a[1] - a[0], b[1] - b[0]) for a, b in pairs)
    run(open_mosaic(str(path)), random_bundle.path, tmp_path / "solo.zarr", tile=128, client="inprocess",
        progress=False)
    for a, b in zip(layers(tmp_path / "gpu.zarr"), layers(tmp_path / "solo.zarr")):
        np.testing.assert_array_equal(a, b)
