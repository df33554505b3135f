"""Pipeline vs bare model, in one run on the same machine and threads (issue: the reefmap core).

Prints: the bare model's throughput on in-memory tiles; the end-to-end pipeline's throughput (a synthetic
mosaic read from a Zarr store, written to a Zarr map) on the embedded LocalCluster and in-process; their
ratios; the halo's compute overhead; and the per-tile cost of a skipped empty tile vs an inferred one.

    .venv/bin/python benchmarks/bench_pipeline.py [--size 4096] [--tile 1024] [--workers 2] [--device cpu]
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

from timing import best_of


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--tile", type=int, default=1024)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--device", default=None)
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args(argv)

    import torch

    from reefmap.compute.tiles import TileJob, run_tiles
    from reefmap.model.bundle import read_bundle
    from reefmap.model.segmenter import load_model
    from reefmap.planning.plan import plan_tiles
    from reefmap.execute.runner import run
    from reefmap.sources import open_mosaic
    from reefmap.store.format import TileState
    from reefmap.store.mapstore import MapStore
    from reefmap.synthetic.reader import synthetic_mosaic

    threads = a.workers
    torch.set_num_threads(threads)
    meta = read_bundle(None)
    halo, tile = meta.halo, a.tile
    work = Path(a.workdir or tempfile.mkdtemp(prefix="reefmap-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    print(f"# reefmap pipeline benchmark: {a.size}x{a.size} px synthetic mosaic, tile {tile}, halo {halo}, "
          f"{threads} threads/workers, device {device}, torch {torch.__version__}")
    print(f"# reproduce: .venv/bin/python benchmarks/bench_pipeline.py --size {a.size} --tile {tile} --workers {a.workers}")

    # the input: a synthetic mosaic written once to a Zarr store (the pipeline reads it back)
    src = work / "mosaic.zarr"
    if not src.exists():
        m = synthetic_mosaic(a.size, seed=7, chunks=tile)
        ds = m.drop_attrs().drop_vars("band").to_dataset(name="image").rio.write_crs(m.rio.crs)
        ds["image"].attrs["_FillValue"] = 0
        ds.to_zarr(src, consolidated=False, zarr_format=3)
    mosaic = open_mosaic(str(src), chunks=tile)
    raw = mosaic.values  # in-memory copy for the bare model

    # 1. bare model on in-memory tiles (normalised once, outside the timing), output px / s
    model = load_model(None, device=a.device, threads=threads)
    x = (raw.astype(np.float32) - np.array(meta.mean, np.float32)[:, None, None]) / np.array(meta.std, np.float32)[:, None, None]
    tiles = [np.ascontiguousarray(x[:, r:r + tile, c:c + tile])[None] for r in range(0, a.size, tile) for c in range(0, a.size, tile)]
    model.predict(tiles[0])
    t_bare = best_of(lambda: [model.predict(t) for t in tiles], 2)  # pipelines below: best of 2 as well
    bare = a.size * a.size / t_bare / 1e6
    # 2. halo overhead: the same tiles read with their halo
    hal = [np.ascontiguousarray(np.pad(t, ((0, 0), (0, 0), (halo, halo), (halo, halo)))) for t in tiles[:4]]
    t_core = best_of(lambda: [model.predict(t) for t in tiles[:4]], 2)
    t_halo = best_of(lambda: [model.predict(t) for t in hal], 2)

    # 3. the pipeline, end to end (Zarr in → Zarr out), screen off so every tile runs the model
    def pipeline(client, name, screen=False):
        out = work / f"{name}.zarr"
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        s = run(mosaic, None, out, tile=tile, screen=screen, client=client, workers=a.workers, progress=False)
        return s, time.perf_counter() - t

    from reefmap.cluster import launch

    os.environ["REEFMAP_INFERENCE_THREADS"] = "1"  # workers inherit it: workers x 1 thread = the bare model's threads
    client = launch("local", a.workers)  # the profile run() launches by default
    try:
        pipeline(client, "map-localcluster-warm")  # workers load the model and compile the kernels once
        s_lc, t_lc = min((pipeline(client, "map-localcluster") for _ in range(2)), key=lambda r: r[1])
    finally:
        client.shutdown()
    os.environ["REEFMAP_INFERENCE_THREADS"] = str(threads)
    pipeline("inprocess", "map-inprocess-warm")
    s_ip, t_ip = min((pipeline("inprocess", "map-inprocess") for _ in range(2)), key=lambda r: r[1])
    s_sc, t_sc = pipeline("inprocess", "map-inprocess-screened", screen=True)
    mpx = a.size * a.size / 1e6

    # 4. per-tile cost of a skipped empty tile vs an inferred tile (same reader, model and store): three tile
    # rows, the first two empty (so the first tile's halo'd window is all nodata), the third full of mosaic
    from reefmap.geometry.grid import GeoBox, Shape
    from reefmap.sources import memory_reader

    g = GeoBox(Shape(tile * 3, tile * 2), mosaic.rio.transform(), str(mosaic.rio.crs))
    arr = np.zeros((3, tile * 3, tile * 2), np.uint8)
    arr[:, 2 * tile:, :] = raw[:, :tile, : tile * 2]
    rd = memory_reader(arr, g, nodata=0, band_names=meta.bands)
    plan = plan_tiles(g, tile, halo, size_multiple=meta.size_multiple)
    shutil.rmtree(work / "skip.zarr", ignore_errors=True)
    st = MapStore.create_or_open(work / "skip.zarr", plan.grid, {"model": meta.sha256, "halo": halo}, {})
    job = TileJob(rd.spec(), meta.path, st, screen=True)
    empty, full = plan.task((0, 0)), plan.task((2, 0))
    run_tiles(job, [empty]), run_tiles(job, [full])
    t_empty = best_of(lambda: run_tiles(job, [empty]), 5)
    t_full = best_of(lambda: run_tiles(job, [full]), 2)
    state_empty = run_tiles(job, [empty])[0].state

    print()
    print(f"bare model, in-memory {tile}px tiles:            {bare:8.2f} Mpx/s")
    print(f"pipeline, LocalCluster {a.workers}x1 thread (Zarr→Zarr): {mpx / t_lc:8.2f} Mpx/s  "
          f"(ratio {mpx / t_lc / bare:.2f}; warm workers; {s_lc.done} tiles)")
    print(f"pipeline, in-process {threads} threads (Zarr→Zarr):  {mpx / t_ip:8.2f} Mpx/s  (ratio {mpx / t_ip / bare:.2f})")
    print(f"pipeline, in-process, empty-tile screen on:   {mpx / t_sc:8.2f} Mpx/s  ({s_sc.skipped} of {s_sc.computed} tiles skipped)")
    print(f"halo overhead: pixels computed per output pixel {((tile + 2 * halo) / tile) ** 2:.3f}; "
          f"measured time ratio {t_halo / t_core:.3f}")
    print(f"skipped empty tile: {t_empty * 1e3:.2f} ms vs inferred tile {t_full * 1e3:.1f} ms "
          f"= {100 * t_empty / t_full:.2f}% ({TileState(state_empty).name})")
    print(f"# inputs and maps under {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
