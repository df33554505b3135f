"""Scheduler overhead per tile: the local SLURM cluster vs a LocalCluster with the same workers (N x 1 thread).

Both clusters run the same reefmap tile plan (a textured mosaic in a Zarr store → a fresh Zarr map each time, screen
off so that every tile runs the model) through ``reefmap.execute.runner.execute``. Per tile it compares

- compute: ``TileOutcome.seconds``, measured inside the task (open reader, read with halo, predict, write, mark);
- wall per tile, from the client: ``workers x wall / tiles`` (each worker runs one tile at a time), where wall is
  the whole ``execute()`` call after the cluster is up and every worker has loaded the model;

and prints overhead per tile = wall per tile - mean compute (ms, and % of a tile's compute; target < 5%). Cluster
start-up (launch until the workers are connected) and the workers' first model load are reported separately.
The overhead includes the tail: when the tile count is not a multiple of the worker count, or tiles differ in
cost, a worker waits for the last tile; the "dispatch gap" line gives the part between consecutive tasks on a
worker (from the scheduler's task stream), which is the scheduler's own share.

    .venv/bin/python benchmarks/bench_cluster.py [--size 4096] [--tile 1024] [--workers 2] [--skip-slurm]

The model is the demo bundle (``reefmap/model/bundles/demo``) if it exists, else a random-weights bundle of the same
architecture (tiny_unet, base 8, levels 2). The SLURM half needs the local SLURM (``cluster/local-slurm/start.sh``)
and is skipped, with the reason, when it is down.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def textured(shape, seed=0):
    """A (3, y, x) uint8 image with smooth structure at several scales (no nodata)."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    yy = np.arange(ny, dtype=np.float32)[:, None]
    xx = np.arange(nx, dtype=np.float32)[None, :]
    img = np.empty((3, ny, nx), np.uint8)
    for b in range(3):
        acc = rng.normal(128, 12, (ny, nx)).astype(np.float32)
        for scale in (7.0, 23.0, 71.0, 311.0):
            fy, fx, ph = rng.uniform(0.5, 1.5), rng.uniform(0.5, 1.5), rng.uniform(0, 6.28)
            acc += np.sin(yy / scale * fy + ph) * np.cos(xx / scale * fx - ph) * 35
        img[b] = np.clip(acc, 1, 255)
    return img


def write_mosaic(path: Path, size: int, tile: int) -> None:
    from affine import Affine

    from reefmap.geometry.grid import GeoBox, Shape
    from reefmap.sources import memory_reader
    from reefmap.sources.base import reader_to_dataarray

    arr = textured((size, size), seed=11)
    gb = GeoBox(Shape(size, size), Affine(10.0, 0, 300000.0, 0, -10.0, 2600000.0), "EPSG:32618")
    reader = memory_reader(arr, gb, nodata=0, band_names=["red", "green", "blue"])
    da = reader_to_dataarray(reader, chunks=tile)
    ds = da.drop_attrs().drop_vars("band").to_dataset(name="image")
    ds["image"].attrs["_FillValue"] = 0
    ds.rio.write_crs(gb.crs).to_zarr(path, consolidated=False, zarr_format=3)
    reader.release()


def bundle_path(work: Path) -> tuple[str, str]:
    """The shipped demo bundle."""
    from reefmap.model.bundle import DEMO_BUNDLE

    return str(DEMO_BUNDLE), "demo bundle"


def _warm(job, tasks) -> float:  # runs on a worker: imports, model load, first forward of this tile shape
    from reefmap.compute.tiles import run_tiles

    t = time.perf_counter()
    run_tiles(job, tasks)
    return time.perf_counter() - t


def measure(client, mosaic, bundle: str, work: Path, name: str, tile: int) -> dict:
    """Warm every worker on a throw-away store, then time one execute() of the whole plan into a fresh store."""
    from distributed import get_task_stream

    from reefmap.execute.executors import Distributed
    from reefmap.execute.runner import RunOptions, execute, prepare

    workers = sorted(client.scheduler_info()["workers"])
    warm_out = work / f"{name}-warm.zarr"
    shutil.rmtree(warm_out, ignore_errors=True)
    plan, job, _ = prepare(mosaic, bundle, warm_out, tile=tile, screen=False)
    tiles = [plan.task(t) for t in np.argwhere(plan.selection)]
    t = time.perf_counter()
    futs = [client.submit(_warm, job, [tiles[i % len(tiles)]], workers=[w], allow_other_workers=False, pure=False)
            for i, w in enumerate(workers)]  # fmt: skip
    first = client.gather(futs)
    t_warm = time.perf_counter() - t

    out = work / f"{name}.zarr"
    shutil.rmtree(out, ignore_errors=True)
    plan, job, store = prepare(mosaic, bundle, out, tile=tile, screen=False)
    outcomes = []
    with get_task_stream(client) as ts:
        t = time.perf_counter()
        summary = execute(plan, job, store, Distributed(client), RunOptions(progress=False), on_outcome=outcomes.append)
        wall = time.perf_counter() - t
    assert summary.failed == 0 and summary.computed == plan.count, summary
    # gaps between consecutive tile tasks on the same worker (the scheduler's dispatch latency)
    per_worker: dict[str, list] = {}
    for rec in ts.data:
        if str(rec["key"]).startswith("reefmap-tile-"):
            span = [s for s in rec["startstops"] if s["action"] == "compute"]
            if span:
                per_worker.setdefault(rec["worker"], []).append((span[0]["start"], span[0]["stop"]))
    gaps = []
    for spans in per_worker.values():
        spans.sort()
        gaps += [b[0] - a[1] for a, b in zip(spans, spans[1:])]
    n, w = len(outcomes), len(workers)
    compute = np.array([o.seconds for o in outcomes])
    wall_per_tile = w * wall / n
    return {"name": name, "workers": w, "tiles": n, "wall": wall, "compute_mean": compute.mean(),
            "compute_sum": compute.sum(), "wall_per_tile": wall_per_tile,
            "overhead": wall_per_tile - compute.mean(), "gap_mean": float(np.mean(gaps)) if gaps else float("nan"),
            "gap_max": float(np.max(gaps)) if gaps else float("nan"), "warm": t_warm, "first_tile": max(first),
            "used": {k: len(v) for k, v in per_worker.items()}}  # fmt: skip


def report(r: dict, startup: float) -> None:
    pct = 100 * r["overhead"] / r["compute_mean"]
    print(f"{r['name']:>12}: {r['tiles']} tiles on {r['workers']} workers (tiles per worker: "
          f"{sorted(r['used'].values())}) in {r['wall']:.2f} s")
    print(f"{'':>12}  compute per tile (in the task) {1e3 * r['compute_mean']:8.1f} ms | wall per tile "
          f"(workers x wall / tiles) {1e3 * r['wall_per_tile']:8.1f} ms")
    print(f"{'':>12}  overhead per tile {1e3 * r['overhead']:8.1f} ms = {pct:5.2f}% of a tile's compute "
          f"({'meets' if pct < 5 else 'MISSES'} the < 5% target)")
    print(f"{'':>12}  dispatch gap between a worker's tasks: mean {1e3 * r['gap_mean']:.1f} ms, max "
          f"{1e3 * r['gap_max']:.1f} ms")
    print(f"{'':>12}  start-up (not in the figures above): cluster {startup:.2f} s, first tile per worker "
          f"(imports, model load, one tile) {r['first_tile']:.2f} s")


def reap_workers(marker: str, grace: float = 5.0) -> list[int]:
    """Kill worker processes (``--local-directory`` under ``marker``) that outlive their cancelled SLURM jobs.

    On the local SLURM (proctrack/linuxproc) a worker hung in ``Worker.close`` after the simultaneous scancel and
    scheduler-close of ``client.shutdown()`` is re-parented to init and never gets SLURM's SIGKILL.
    """
    import signal

    def pids():
        found = []
        for d in Path("/proc").iterdir():
            try:
                args = (d / "cmdline").read_bytes().split(b"\0") if d.name.isdigit() else []
            except OSError:
                continue
            if b"distributed.cli.dask_worker" in args and any(marker.encode() in a for a in args):
                found.append(int(d.name))
        return found

    deadline = time.monotonic() + grace
    while pids() and time.monotonic() < deadline:
        time.sleep(0.2)
    left = pids()
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def slurm_overrides(work: Path, workers: int) -> dict:
    return {
        "job_name": f"reefmap-bench-{os.getpid()}", "queue": None, "interface": "lo", "cores": 1, "memory": "2GB",
        "walltime": "00:20:00", "worker_extra_args": ["--lifetime", "15m", "--lifetime-stagger", "1m"],
        "log_directory": str(work / "slurm-logs"), "local_directory": str(work / "worker-space"),
        "dashboard_address": ":0", "death_timeout": 30, "nanny": False,
        "job_script_prologue": [f"source {sys.prefix}/bin/activate", "export REEFMAP_INFERENCE_THREADS=1",
                                "export OMP_NUM_THREADS=1"],
    }  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096, help="mosaic side in px (default 4096: 16 tiles of 1024)")
    ap.add_argument("--tile", type=int, default=1024, help="tile size in px (reefmap's default 1024)")
    ap.add_argument("--workers", type=int, default=2, help="workers (SLURM jobs) of one thread each")
    ap.add_argument("--skip-slurm", action="store_true", help="only the LocalCluster half")
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args(argv)

    os.environ["REEFMAP_INFERENCE_THREADS"] = "1"  # LocalCluster workers inherit it; one torch thread per worker
    os.environ["OMP_NUM_THREADS"] = "1"
    from reefmap.cluster import launcher as cluster
    from reefmap.sources import open_mosaic

    work = Path(a.workdir or tempfile.mkdtemp(prefix="reefmap-bench-cluster-"))
    work.mkdir(parents=True, exist_ok=True)
    src = work / f"mosaic-{a.size}.zarr"
    if not src.exists():
        write_mosaic(src, a.size, a.tile)
    mosaic = open_mosaic(str(src), chunks=a.tile)
    bundle, which = bundle_path(work)
    n_tiles = (-(-a.size // a.tile)) ** 2
    print(f"# reefmap scheduler overhead per tile: {a.size}x{a.size} px textured mosaic, {n_tiles} tiles of "
          f"{a.tile} px (+ halo), model {which}, {a.workers} workers x 1 thread, screen off, "
          f"{os.cpu_count()} CPUs on this machine")
    print(f"# reproduce: .venv/bin/python benchmarks/bench_cluster.py --size {a.size} --tile {a.tile} "
          f"--workers {a.workers}{' --skip-slurm' if a.skip_slurm else ''}")

    results = []
    t = time.perf_counter()
    client = cluster.launch("local", jobs=a.workers, threads_per_worker=1)
    startup = time.perf_counter() - t
    try:
        results.append((measure(client, mosaic, bundle, work, "LocalCluster", a.tile), startup))
    finally:
        client.shutdown()

    if a.skip_slurm:
        print("# SLURM half skipped (--skip-slurm)")
    else:
        sys.path.insert(0, str(REPO / "tests"))
        from slurm_fixtures import slurm_down_reason

        reason = slurm_down_reason()
        if reason:
            print(f"# SLURM half skipped: {reason}")
        else:
            t = time.perf_counter()
            client = cluster.launch("slurm-cpu", jobs=a.workers, timeout=120, **slurm_overrides(work, a.workers))
            startup = time.perf_counter() - t
            try:
                results.append((measure(client, mosaic, bundle, work, "SLURM", a.tile), startup))
            finally:
                client.shutdown()
                left = reap_workers(str(work / "worker-space"))
                if left:
                    print(f"# note: {len(left)} worker process(es) outlived their cancelled SLURM jobs; killed {left}")
    print()
    for r, startup in results:
        report(r, startup)
    if len(results) == 2:
        (lc, _), (sl, _) = results
        print(f"\nSLURM - LocalCluster overhead per tile: {1e3 * (sl['overhead'] - lc['overhead']):+.1f} ms")
    print(f"# inputs and maps under {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
