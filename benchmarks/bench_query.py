"""Query latency and bytes read on a large synthetic map: reefmap.query (full resolution and overviews) against a
plain ``xr.open_zarr(...).sel(...)`` of the same region.

The map (built once and cached; ``--rebuild`` to redo): EPSG:4326 at 0.0025° over 40°×40° (lon 100..140,
lat -20..20) = 16000² px in 1024-px tiles (16×16 = 256 tiles), written directly with ``MapStore.write_tile`` +
``mark`` (no model): about half the tiles done, some skipped (land / deep water), some pending, a few failed;
pixel values are deterministic patterns. Then its overview pyramid is built.

    .venv/bin/python benchmarks/bench_query.py [--store DIR/map.zarr] [--repeat 3] [--rebuild]

Reads are counted by patching ``zarr.storage.LocalStore.get`` (every chunk and metadata read goes through it).
Timings are wall-clock seconds of query + ``.load()`` (the result in memory), median of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

SIZE, TILE, RES = 16000, 1024, 0.0025
WEST, NORTH = 100.0, 20.0


def tile_state(iy: int, ix: int) -> int:
    """A deterministic mix: ~50% done, ~20% skipped, ~27% pending, ~3% failed."""
    h = (iy * 7919 + ix * 104729 + iy * ix * 31) % 100
    if h < 50:
        return 1
    if h < 60:
        return 3  # skipped: land
    if h < 70:
        return 4  # skipped: deep water
    if h < 73:
        return 9  # failed
    return 0      # pending


def tile_pixels(win) -> tuple[np.ndarray, np.ndarray]:
    r = np.arange(win.row_start, win.row_stop, dtype=np.float32)[:, None]
    c = np.arange(win.col_start, win.col_stop, dtype=np.float32)[None, :]
    field = np.sin(r / 97.0) * np.cos(c / 131.0) + 0.5 * np.sin((r + c) / 41.0)
    prob = np.clip((field + 1.5) / 3.0 * 250.0, 0, 250).astype(np.uint8)
    cls = np.select([field < -0.6, field < 0.2, field < 0.9], [1, 2, 3], 4).astype(np.uint8)
    return prob, cls


def build(path: str) -> None:
    from affine import Affine

    from reefmap.geometry.grid import GeoBox, Shape, TileGrid, TileIndex
    from reefmap.compute.kernels import encode_constant
    from reefmap.products.overviews import build_overviews
    from reefmap.store.format import TileState
    from reefmap.store.mapstore import MapStore

    t0 = time.perf_counter()
    gb = GeoBox(Shape(SIZE, SIZE), Affine(RES, 0, WEST, 0, -RES, NORTH), "EPSG:4326")
    grid = TileGrid(gb, TILE)
    store = MapStore.create_or_open(path, grid, {"model": "bench-synthetic"}, {"note": "bench_query synthetic map"})
    for iy, ix in np.ndindex(*grid.shape):
        st = tile_state(iy, ix)
        if st in (0, 9):
            if st == 9:
                store.mark(TileIndex(iy, ix), TileState.FAILED, error="synthetic failure")
            continue
        w = grid.window(TileIndex(iy, ix))
        if st == 1:
            prob, cls = tile_pixels(w)
        else:  # a skipped tile: its constant class (land 4 / deep water 1), probability 0
            prob, cls = encode_constant(np.ones(tuple(w.shape), bool), 4 if st == 3 else 1)
        store.write_tile(w, prob, cls)
        store.mark(TileIndex(iy, ix), TileState(st))
    t1 = time.perf_counter()
    ov = build_overviews(path)
    t2 = time.perf_counter()
    print(f"built {path}: {SIZE}x{SIZE} px, {grid.count} tiles in {t1 - t0:.1f}s; "
          f"overviews ({len(ov['levels'])} levels, {ov['chunks_written']} chunks) in {t2 - t1:.1f}s")


class ReadCounter:
    def __init__(self):
        from zarr.storage import LocalStore

        self.bytes = 0
        self.keys = 0
        self._orig = LocalStore.get
        counter = self

        async def get(store, key, *a, **kw):
            buf = await counter._orig(store, key, *a, **kw)
            counter.keys += 1
            if buf is not None:
                counter.bytes += len(buf)
            return buf

        LocalStore.get = get

    def reset(self):
        self.bytes = self.keys = 0


def measure(fn, counter: ReadCounter, repeat: int):
    times, out = [], None
    for _ in range(repeat):
        counter.reset()
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), counter.bytes, counter.keys, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", default=os.path.join(tempfile.gettempdir(), "reefmap-bench-query", "map.zarr"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rebuild", action="store_true")
    a = ap.parse_args(argv)
    import dask
    import xarray as xr

    from reefmap.products.query import query

    path = os.path.abspath(a.store)
    if a.rebuild and os.path.exists(path):
        shutil.rmtree(path)
    if not os.path.exists(os.path.join(path, "zarr.json")):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        build(path)
    else:
        print(f"using the cached map {path} (--rebuild to rebuild it)")
    counter = ReadCounter()
    dask.config.set(scheduler="threads")
    boxes = {"1°×1°": (120.3, 0.3, 121.3, 1.3), "30°×30°": (105.0, -15.0, 135.0, 15.0)}
    overview_res = {"1°×1°": 0.01, "30°×30°": 0.04}
    rows = []
    for name, (w, s, e, n) in boxes.items():
        def plain():
            ds = xr.open_zarr(path, consolidated=False)[["reef_probability", "classification"]]
            return ds.sel(x=slice(w, e), y=slice(n, s)).load()

        def ours(resolution=None):
            return query(path, bbox=(w, s, e, n), resolution=resolution).load()

        t, b, k, r = measure(plain, counter, a.repeat)
        rows.append((name, "xr.open_zarr().sel()", 0, r.sizes["y"], r.sizes["x"], t, b, k))
        t, b, k, r = measure(ours, counter, a.repeat)
        rows.append((name, "reefmap query", r.attrs["level"], r.sizes["y"], r.sizes["x"], t, b, k))
        t, b, k, r = measure(lambda: ours(overview_res[name]), counter, a.repeat)
        rows.append((name, f"reefmap query res={overview_res[name]}", r.attrs["level"], r.sizes["y"], r.sizes["x"], t, b, k))
        del r
    print(f"\n{'box':8} {'method':34} {'level':>5} {'shape':>13} {'seconds':>8} {'MB read':>9} {'reads':>6}")
    for name, m, lvl, ny, nx, t, b, k in rows:
        print(f"{name:8} {m:34} {lvl:>5} {f'{ny}x{nx}':>13} {t:8.3f} {b / 1e6:9.2f} {k:6d}")
    print("\nseconds: median of", a.repeat, "runs of query + load (result in memory); reads: LocalStore.get calls "
          "(chunks + metadata). The plain open_zarr reads every chunk in the box, pending tiles included, and "
          "decodes reef_probability to float64; reefmap skips unfinished tiles, adds tile_state and uses overviews.")
    print(f"reproduce: {os.path.relpath(sys.executable)} benchmarks/bench_query.py --store {path} --repeat {a.repeat}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
