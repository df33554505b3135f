"""Per-tile write and state mark (issue 11, item 5): milliseconds per tile of ``MapStore.write_tile`` (two uint8
layers of ``tile``² px, their proof) and of recording the tile's state, on local disk and, when the
``gcp-storage-emulator`` is installed, on ``gs://`` (the emulator); one core.

State marks are timed the way the runner records them: one ``mark_many`` per task of ``--batch`` tiles (the
per-tile ``mark`` too, for comparison). Target: write + mark <= 5 ms per tile locally for 1024² layers.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_writes.py [--tile 1024] [--tiles 16] [--batch 4] [--no-gcs]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def model_tiles(tile: int, n: int = 4) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` real tiles' layers (reef probability, classification): the demo model on the synthetic reef world,
    so that the chunks compress as a map's do."""
    from reefmap.compute.tiles import predict_blocks
    from reefmap.model.segmenter import load_model
    from reefmap.planning.plan import plan_tiles
    from reefmap.sources.base import reader_of
    from reefmap.synthetic.reader import synthetic_mosaic

    reader = reader_of(synthetic_mosaic(4 * tile, seed=0))
    plan, model = plan_tiles(reader.geobox, tile, 32), load_model(None)
    tasks = [plan.task(t) for t in plan.tiles()[5:5 + n]]
    out = predict_blocks([reader.read(t.read) for t in tasks], model, reader.nodata, [t.core for t in tasks], False)
    return [(prob, cls) for prob, cls, _ in out]


def bench(url: str, tile: int, n: int, batch: int, storage_options: dict | None = None) -> dict:
    from affine import Affine

    from reefmap.geometry.grid import GeoBox, Shape
    from reefmap.planning.plan import plan_tiles
    from reefmap.store.format import TileState
    from reefmap.store.mapstore import MapStore

    side = int(np.ceil(np.sqrt(n)))
    plan = plan_tiles(GeoBox(Shape(side * tile, side * tile), Affine(10.0, 0, 0, 0, -10.0, 0), "EPSG:32618"), tile, 0)
    store = MapStore.create_or_open(url, plan.grid, {"bench": 1}, {}, storage_options)
    tiles = [tuple(t) for t in plan.tiles()[:n]]
    data = model_tiles(tile)
    store.write_tile(plan.task(tiles[0]).write, *data[0])  # open the arrays once (every worker does it once)
    store.mark(tiles[0], TileState.DONE)
    wall, cpu = {"write": 0.0, "mark": 0.0, "mark_many": 0.0}, {"write": 0.0, "mark": 0.0, "mark_many": 0.0}

    def timed(what, fn, *args):
        w, c = time.perf_counter(), time.process_time()
        fn(*args)
        wall[what] += time.perf_counter() - w
        cpu[what] += time.process_time() - c

    for i, t in enumerate(tiles):
        timed("write", store.write_tile, plan.task(t).write, *data[i % len(data)])
        timed("mark", store.mark, t, TileState.DONE)
    for i in range(0, len(tiles), batch):
        timed("mark_many", store.mark_many, [(t, TileState.DONE, None) for t in tiles[i:i + batch]])
    assert (store.states()[tuple(np.array(tiles).T)] == TileState.DONE).all()
    return {f"{k}_ms": 1e3 * v / n for k, v in wall.items()} | {f"{k}_cpu_ms": 1e3 * v / n for k, v in cpu.items()}


def start_emulator():
    exe = Path(sys.executable).with_name("gcp-storage-emulator")
    if not exe.exists():
        return None, None
    sys.path.insert(0, str(REPO / "tests"))
    import gcs_emulator  # sets GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT and STORAGE_EMULATOR_HOST before gcsfs loads

    proc = subprocess.Popen([str(exe), "start", "--host=127.0.0.1", f"--port={gcs_emulator.PORT}", "--in-memory",
                             "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import urllib.request

    for _ in range(300):
        try:
            with urllib.request.urlopen(gcs_emulator.URL + "/storage/v1/b", timeout=1):
                return proc, gcs_emulator.STORAGE_OPTIONS
        except OSError:
            time.sleep(0.1)
    proc.kill()
    return None, None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tile", type=int, default=1024)
    ap.add_argument("--tiles", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--no-gcs", action="store_true")
    a = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(f"# per-tile write + state mark: {a.tiles} tiles of 2 x {a.tile}² uint8, state marks in tasks of {a.batch}")
    print(f"# reproduce: PYTHONPATH=. .venv/bin/python benchmarks/bench_writes.py --tile {a.tile} --tiles {a.tiles} "
          f"--batch {a.batch}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="reefmap-bench-writes-") as d:
        rows.append(("local", bench(str(Path(d) / "m.zarr"), a.tile, a.tiles, a.batch)))
    if not a.no_gcs:
        proc, opts = start_emulator()
        if proc is None:
            print("# gcs: gcp-storage-emulator not installed or not started: skipped")
        else:
            try:
                import gcsfs

                bucket = "bench-" + uuid.uuid4().hex[:8]
                gcsfs.GCSFileSystem(**opts).mkdir(bucket)
                rows.append(("gcs emulator", bench(f"gs://{bucket}/m.zarr", a.tile, a.tiles, a.batch, opts)))
            finally:
                proc.kill()
                proc.wait(timeout=10)
    print("ms per tile: wall (CPU time of this process: what one core spends, whatever else runs on the machine)")
    print(f"{'where':<14}{'write':>16}{'mark':>16}{'batched mark':>16}{'write + batched':>18}")
    for where, r in rows:
        cols = [f"{r[k + '_ms']:.2f} ({r[k + '_cpu_ms']:.2f})" for k in ("write", "mark", "mark_many")]
        both = f"{r['write_ms'] + r['mark_many_ms']:.2f} ({r['write_cpu_ms'] + r['mark_many_cpu_ms']:.2f})"
        print(f"{where:<14}{cols[0]:>16}{cols[1]:>16}{cols[2]:>16}{both:>18}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
