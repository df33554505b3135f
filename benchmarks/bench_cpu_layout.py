"""CPU LocalCluster layouts vs the bare model (issue 11, item 1, CPU part): Mpx/s of the bare model (torch on all
cores, in-memory core tiles), of the bare model on the halo'd tiles the pipeline computes (the best a tiled
pipeline can do), and of the pipeline (Zarr in → Zarr out, screen off, warm workers) for each LocalCluster layout
``workers x threads`` (torch threads per worker = its threads), with the ratio of each to the bare model.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_cpu_layout.py [--size 4096] [--tile 1024] [--layouts 2x1 1x2]
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


def forget_chunks() -> None:
    """Empty this process's source-chunk cache (runs start cold; the model stays loaded)."""
    import reefmap.sources.base  # noqa: F401 - registers the cache (a fresh worker may not have imported it yet)
    from reefmap.caching import caches

    caches()["source chunks"].clear()


def main(argv=None) -> int:
    cores = os.cpu_count() or 1
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--tile", type=int, default=1024)
    ap.add_argument("--layouts", nargs="+", default=[f"{cores}x1", f"1x{cores}"])
    a = ap.parse_args(argv)

    from reefmap.cluster import launch
    from reefmap.compute import kernels
    from reefmap.execute.runner import run
    from reefmap.model.bundle import read_bundle
    from reefmap.model.segmenter import load_model
    from reefmap.options import set_options
    from reefmap.sources import open_mosaic, read_stats, reset_read_stats
    from reefmap.synthetic.reader import synthetic_mosaic

    meta, tile = read_bundle(None), a.tile
    work = Path(tempfile.mkdtemp(prefix="reefmap-bench-layout-"))
    print(f"# CPU layouts: {a.size}² synthetic mosaic in Zarr (chunks {tile}), tile {tile}, halo {meta.halo}, "
          f"{cores} cores, demo model")
    print(f"# reproduce: PYTHONPATH=. .venv/bin/python benchmarks/bench_cpu_layout.py --size {a.size} --tile {tile} "
          f"--layouts {' '.join(a.layouts)}")
    src = work / "mosaic.zarr"
    m = synthetic_mosaic(a.size, seed=7, chunks=tile)
    ds = m.drop_attrs().drop_vars("band").to_dataset(name="image").rio.write_crs(m.rio.crs)
    ds["image"].attrs["_FillValue"] = 0
    ds.to_zarr(src, consolidated=False, zarr_format=3)
    mosaic = open_mosaic(str(src), chunks=tile)
    raw = mosaic.values
    mpx = a.size * a.size / 1e6

    model = load_model(None, threads=cores)
    x, _ = kernels.normalize(raw, meta.kernel_scaling(), 0)
    h = meta.halo
    xp = np.pad(x, ((0, 0), (h, h), (h, h)))
    cores_t = [np.ascontiguousarray(x[:, r:r + tile, c:c + tile])[None]
               for r in range(0, a.size, tile) for c in range(0, a.size, tile)]
    haloed = [np.ascontiguousarray(xp[:, r:r + tile + 2 * h, c:c + tile + 2 * h])[None]
              for r in range(0, a.size, tile) for c in range(0, a.size, tile)]
    model.predict(cores_t[0])
    bare = mpx / best_of(lambda: [model.predict(t) for t in cores_t], 2)
    bare_halo = mpx / best_of(lambda: [model.predict(t) for t in haloed], 2)
    rows = [("bare model, core tiles", bare, None), ("bare model, halo'd tiles", bare_halo, None)]

    def pipeline(client, name):
        """Seconds of one run from cold source-chunk caches, and its read amplification."""
        out = work / f"{name}.zarr"
        shutil.rmtree(out, ignore_errors=True)
        c = None if client == "inprocess" else client
        forget_chunks()
        if c is not None:
            c.run(forget_chunks)
        reset_read_stats(c)
        t = time.perf_counter()
        run(mosaic, None, out, tile=tile, screen=False, client=client, progress=False)
        return time.perf_counter() - t, read_stats(c)["read_amplification"]

    for layout in a.layouts:
        n, threads = (int(v) for v in layout.split("x"))
        with set_options(inference_threads=threads):
            os.environ["REEFMAP_INFERENCE_THREADS"] = str(threads)  # the workers read their environment
            client = launch("local", n, threads_per_worker=threads)
            try:
                pipeline(client, "warm")  # workers load the model and the kernels once
                t, amp = min(pipeline(client, f"lc-{layout}") for _ in range(2))
            finally:
                client.shutdown()
                os.environ.pop("REEFMAP_INFERENCE_THREADS", None)
        rows.append((f"LocalCluster {layout}", mpx / t, amp))
    with set_options(inference_threads=cores):
        pipeline("inprocess", "warm-ip")
        t, amp = min(pipeline("inprocess", "ip") for _ in range(2))
    rows.append((f"in-process ({cores} torch threads)", mpx / t, amp))
    print(f"{'':<34}{'Mpx/s':>8}{'ratio to bare':>15}{'read amplification':>20}")
    for name, v, amp in rows:
        print(f"{name:<34}{v:>8.3f}{v / bare:>15.3f}{'' if amp is None else f'{amp:.2f}':>20}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
