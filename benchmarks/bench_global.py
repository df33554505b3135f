"""Global runs at scale (issue: scale out / a batch script for full global runs).

Prints:
1. planning the full ±30° zoom-15 quad grid (737,280 quads) with the Natural Earth reef-line mask (and the
   0.05° shallow-tropical raster): seconds, peak memory of a fresh process (ru_maxrss; tracemalloc for Python
   allocations), tiles that survive. Targets: < 10 s and < 1 GB on one core.
2. progress at global scale: ``reefmap.store.status.status`` (and MapStore.states(), and the progress PNG) on
   a store with the 737k-quad grid and N tiles with a state (state chunks written directly, no model).
3. a simulated global run: pipelines/configs/caribbean-demo.yaml (the same quad tiles at zoom 10, 128 px, the
   reef-line mask keeping 242 tiles around the Caribbean) on the lazy synthetic world, through
   pipelines/global_run.py on the ``local`` cluster profile: tiles/s, Mpx/s; then a kill-and-resume: SIGKILL
   to the job's process group mid-run, resume, and count the work redone (target: <= the tiles in flight).

    .venv/bin/python benchmarks/bench_global.py [--states 10000 50000] [--workers 2] [--max-in-flight 4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "pipelines" / "configs"
PY = sys.executable

_PLAN_CHILD = r"""
import json, resource, sys, time, tracemalloc
t0 = time.perf_counter()
tracemalloc.start()
from reefmap.config import GlobalRunConfig
from reefmap.execute.batch import plan_global
cfg = GlobalRunConfig.from_yaml(sys.argv[1], mask=sys.argv[2] if len(sys.argv) > 2 else None,
                                buffer_km=float(sys.argv[3]) if len(sys.argv) > 3 else None)
t1 = time.perf_counter()
gp = plan_global(cfg)
t2 = time.perf_counter()
py_peak = tracemalloc.get_traced_memory()[1]
print(json.dumps({"tiles_total": gp.tiles_total, "tiles_planned": gp.tiles_planned, "plan_s": t2 - t1,
                  "with_imports_s": t2 - t0, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "tracemalloc_peak_mb": py_peak / 1e6, "mask": gp.mask.source if gp.mask else None}))
"""


def bench_planning() -> None:
    print("\n## 1. planning the ±30° zoom-15 quad grid (fresh process, one core)")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GDAL_NUM_THREADS": "1"}
    cfg = str(CONFIGS / "global-l15.yaml")
    shared = REPO.parent / "shared" / "data"
    cases = [("reef lines (GeoJSON), buffer 10 km", [cfg]),
             ("reef lines (GeoJSON), buffer 0", [cfg, str(shared / "natural-earth" / "ne_10m_reefs.json"), "0"]),
             ("shallow tropical water (0.05° GeoTIFF)", [cfg, str(shared / "masks" / "ne_shallow_tropical_0p05deg.tif"), "0"])]
    for label, args in cases:
        if not (shared / "natural-earth" / "ne_10m_reefs.json").exists():
            print("  shared data absent: skipped")
            return
        r = subprocess.run(["taskset", "-c", "0", PY, "-c", _PLAN_CHILD, *args], capture_output=True, text=True,
                           env=env) if shutil.which("taskset") else \
            subprocess.run([PY, "-c", _PLAN_CHILD, *args], capture_output=True, text=True, env=env)
        if r.returncode:
            print(f"  {label}: FAILED\n{r.stderr[-2000:]}")
            continue
        d = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"  {label:42s}: {d['tiles_planned']:6d} of {d['tiles_total']} quads survive "
              f"({100 * d['tiles_planned'] / d['tiles_total']:.2f}%) · plan {d['plan_s']:.2f} s "
              f"({d['with_imports_s']:.2f} s with imports) · peak RSS {d['maxrss_mb']:.0f} MB "
              f"(Python allocations {d['tracemalloc_peak_mb']:.0f} MB)")


def bench_status(work: Path, counts: list[int]) -> None:
    from reefmap.geometry.webmercator import web_mercator_quads
    from reefmap.planning.plan import Plan
    from reefmap.store.status import status
    from reefmap.viz.progress_map import progress_png
    from reefmap.store.mapstore import MapStore

    print("\n## 2. progress at global scale (737,280-quad zoom-15 grid)")
    grid = web_mercator_quads(15, 4096)
    for n in counts:
        path = work / f"status-{n}.zarr"
        shutil.rmtree(path, ignore_errors=True)
        t = time.perf_counter()
        st = MapStore.create_or_open(path, grid, {"model": "none", "halo": 0}, {})
        t_create = time.perf_counter() - t
        rng = np.random.default_rng(n)
        flat = np.sort(rng.choice(grid.count, size=n, replace=False))
        iy, ix = np.unravel_index(flat, tuple(grid.shape))
        vals = rng.choice([1, 1, 1, 1, 2, 3, 4, 9], size=n).astype(np.uint8)
        t = time.perf_counter()
        root = path / st.status_path / "c"  # the array's codec is bare `bytes`: a chunk file is the state byte
        data = path / "classification" / "c"  # a finished tile has its data chunk (existence is what status checks)
        for y, x, v in zip(iy.tolist(), ix.tolist(), vals.tolist()):
            for r, b in ((root, bytes([v])), (data, b"\0")):
                (r / str(y)).mkdir(parents=True, exist_ok=True)
                (r / str(y) / str(x)).write_bytes(b)
        t_write = time.perf_counter() - t
        sel = np.zeros(tuple(grid.shape), bool)
        sel[iy, ix] = True
        st.record_plan(Plan(grid, 0, sel))
        assert np.array_equal(st.array(st.status_path).vindex[iy[:50], ix[:50]], vals[:50])  # zarr reads them
        t = time.perf_counter()
        s = status(str(path))
        t_status = time.perf_counter() - t
        t = time.perf_counter()
        fs = MapStore(path).states()
        t_fast = time.perf_counter() - t
        assert (fs > 0).sum() == n and s["done"] == int((vals == 1).sum())
        t = time.perf_counter()
        info = progress_png(str(path), work / f"progress-{n}.png")
        t_png = time.perf_counter() - t
        print(f"  {n:6d} tiles with a state: reefmap.store.status.status {t_status:6.2f} s · MapStore.states() "
              f"{t_fast:5.2f} s · progress PNG {t_png:5.2f} s ({info.width}x{info.height}, coastline "
              f"{'yes' if info.coastline and not info.coastline.startswith('skipped') else 'no'}) · "
              f"(store created in {t_create:.1f} s, states written in {t_write:.1f} s)")


def _run_job(cfg: str, out: Path, model: str, workers: int, mif: int, summary: Path, log: Path):
    cmd = [PY, str(REPO / "pipelines" / "global_run.py"), cfg, "--out", str(out), "--model", model, "--profile",
           "local", "--jobs", str(workers), "--max-in-flight", str(mif), "--summary", str(summary), "--log-every", "10"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(log, "w"), text=True, start_new_session=True), cmd


def _finished(out: Path) -> int:
    from reefmap.store.mapstore import MapStore

    try:
        return int(np.isin(MapStore(out).states(), [1, 2, 3, 4]).sum())
    except Exception:
        return 0


def bench_run(work: Path, model: str | None, workers: int, mif: int, kill_at: float) -> None:
    print(f"\n## 3. simulated global run: caribbean-demo.yaml, local profile, {workers} workers, max_in_flight {mif}")
    cfg = str(CONFIGS / "caribbean-demo.yaml")
    if model is None:
        model = str(REPO / "reefmap" / "model" / "bundles" / "demo")
    print(f"  model: {model}")
    # a) straight through
    out = work / "run.zarr"
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    p, cmd = _run_job(cfg, out, model, workers, mif, work / "run.json", work / "run.log")
    p.communicate()
    wall = time.perf_counter() - t
    s = json.loads((work / "run.json").read_text())
    print(f"  straight run: {s['computed']} tiles ({s['done']} done, {s['skipped']} skipped, {s['failed']} failed) of "
          f"{s['tiles_planned']} planned · job {s['seconds']:.1f} s ({wall:.1f} s wall with Python start-up; "
          f"planning {s['plan_seconds']:.1f} s) → {s['tiles_per_s']:.2f} tiles/s, {s['mpx_per_s']:.3f} Mpx/s overall; "
          f"computing {s['compute_seconds']:.1f} s → {s['compute_tiles_per_s']:.2f} tiles/s, "
          f"{s['compute_mpx_per_s']:.3f} Mpx/s · exit {p.returncode}")
    print(f"  command: {' '.join(cmd)}")
    n = s["tiles_planned"]
    # b) SIGKILL mid-run, then resume
    out2 = work / "killed.zarr"
    shutil.rmtree(out2, ignore_errors=True)
    p, _ = _run_job(cfg, out2, model, workers, mif, work / "killed.json", work / "killed.log")
    target = int(kill_at * n)
    while p.poll() is None and _finished(out2) < target:
        time.sleep(0.05)
    if p.poll() is not None:
        print("  the run finished before the kill: raise --kill-at or use a bigger region")
        return
    os.killpg(p.pid, signal.SIGKILL)  # the job and its LocalCluster workers, as SLURM does at walltime + KillWait
    p.wait()
    time.sleep(1.0)
    finished_at_kill = _finished(out2)
    from reefmap.store.mapstore import MapStore

    states = MapStore(out2).states()
    planned = MapStore(out2).planned()
    keys = {tuple(map(int, k.split("/"))) for k in _chunk_keys(out2 / "reef_probability")}
    orphans = sum(1 for iy, ix in keys if planned[iy, ix] and states[iy, ix] == 0)  # pixels written, state not
    p, _ = _run_job(cfg, out2, model, workers, mif, work / "resumed.json", work / "resumed.log")
    p.communicate()
    s2 = json.loads((work / "resumed.json").read_text())
    redone_finished = finished_at_kill + s2["computed"] - n  # finished tiles computed again: must be 0
    print(f"  kill -9 at {finished_at_kill}/{n} finished tiles; the resume computed {s2['computed']} "
          f"(= {n} - {finished_at_kill}: finished tiles recomputed {redone_finished}) in {s2['seconds']:.1f} s, "
          f"complete={s2['complete']}")
    print(f"  work redone = tiles in flight at the kill: {orphans} had their pixels written but no state "
          f"(bound: max_in_flight {mif}) → {orphans / n:.1%} of the run ({mif / n:.1%} at most)")


def _chunk_keys(array_dir: Path) -> list[str]:
    root = array_dir / "c"
    return [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "partial" not in p.name]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--states", type=int, nargs="*", default=[10_000, 50_000], help="tile-state counts for section 2")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-in-flight", type=int, default=4)
    ap.add_argument("--kill-at", type=float, default=0.4, help="fraction of the tiles finished when the kill comes")
    ap.add_argument("--model", default=None, help="model bundle (default: the demo bundle, else random weights)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--skip", nargs="*", default=[], choices=["plan", "status", "run"])
    a = ap.parse_args(argv)
    work = Path(a.workdir or tempfile.mkdtemp(prefix="reefmap-bench-global-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"# reefmap global-run benchmark · {os.cpu_count()} cores · load average {os.getloadavg()[0]:.1f} · "
          f"work dir {work}")
    print(f"# reproduce: .venv/bin/python benchmarks/bench_global.py --states {' '.join(map(str, a.states))} "
          f"--workers {a.workers} --max-in-flight {a.max_in_flight} --kill-at {a.kill_at}")
    if "plan" not in a.skip:
        bench_planning()
    if "status" not in a.skip and a.states:
        bench_status(work, a.states)
    if "run" not in a.skip:
        bench_run(work, a.model, a.workers, a.max_in_flight, a.kill_at)
    print(f"# load average at the end {os.getloadavg()[0]:.1f} (a shared machine: compare ratios, not absolutes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
