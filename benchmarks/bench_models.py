"""Pipeline cost per pixel of model bundles, side by side: CPU seconds and wall seconds per output Mpx of an
in-process run (screen off) over the same in-memory synthetic scene, rounds interleaved, best round of each.

    .venv/bin/python benchmarks/bench_models.py [BUNDLE ...] [--size 2048] [--tile 1024] [--rounds 3]

With no bundle: the shipped demo. To compare with an older demo bundle, extract it from git first, e.g.
``git archive a9c2dcc reefmap/model/bundles/demo | tar -x -C /tmp/old`` then pass ``/tmp/old/reefmap/model/bundles/demo``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="*", default=[None])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--tile", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args(argv)

    import reefmap
    from reefmap.model.bundle import read_bundle
    from reefmap.sources import memory_reader
    from reefmap.sources.base import reader_of, reader_to_dataarray
    from reefmap.synthetic.reader import synthetic_mosaic

    m = synthetic_mosaic(a.size, 100)
    gb = reader_of(m).geobox
    mosaic = reader_to_dataarray(memory_reader(m.values, gb, nodata=0, band_names=["red", "green", "blue"]), a.tile)
    mpx = a.size * a.size / 1e6
    work = Path(tempfile.mkdtemp(prefix="reefmap-bench-models-"))
    best: dict = {}
    try:
        for r in range(a.rounds + 1):  # round 0 warms up (model load, kernels)
            for b in a.bundles:
                out = work / "m.zarr"
                shutil.rmtree(out, ignore_errors=True)
                c0, w0 = time.process_time(), time.perf_counter()
                reefmap.run(mosaic, b, out, tile=a.tile, client="inprocess", progress=False, screen=False)
                c, w = time.process_time() - c0, time.perf_counter() - w0
                if r:
                    best[b] = min(best.get(b, (c, w)), (c, w))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"# {a.size}x{a.size} px synthetic scene (world 100), tile {a.tile}, in-process, screen off, best of {a.rounds}")
    first = None
    for b, (c, w) in best.items():
        meta = read_bundle(b)
        first = first or c
        print(f"  {meta.name:40s} halo {meta.halo:3d}  CPU {c / mpx:.3f} s/Mpx  wall {w / mpx:.3f} s/Mpx  "
              f"CPU x{c / first:.2f} of the first")
    print(f"# reproduce: .venv/bin/python benchmarks/bench_models.py {' '.join(b or '' for b in a.bundles)} --size {a.size} "
          f"--tile {a.tile} --rounds {a.rounds}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
