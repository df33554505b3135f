"""The cost of integrity (issue: a map you can trust, item 4): proofs on write, the run's check, ``reefmap verify``.

Prints:
1. per tile (default 1024 px, the demo model, a synthetic-world tile): the time to infer it (read + predict + encode),
   to write its two chunks, and the proof's extra cost (reading both chunks back, CRC32C, writing the 40-byte proof)
   as a share of the inferred tile (target < 2 %); and the write of an all-nodata tile (format 2 writes its
   classification chunk of nodata);
2. on a finished store of N tiles (default 50,176: 224 x 224 tiles of 16 px; data written in bulk, proofs and states
   as each tile would record them): ``reefmap status``, the run's check of the tiles it skips (existence + size),
   ``reefmap.run`` on the finished store end to end (it computes nothing), ``run(verify=True)``, and
   ``reefmap verify`` (every chunk read and hashed), with the time per 1,000 tiles.

    .venv/bin/python benchmarks/bench_integrity.py [--tile 1024] [--tiles-side 224] [--small-tile 16] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from timing import best_of


def bench_write(work: Path, tile: int) -> None:
    from reefmap.compute.tiles import predict_blocks
    from reefmap.compute import kernels
    from reefmap.execute.runner import prepare
    from reefmap.model.segmenter import load_model
    from reefmap.sources.base import reader_of
    from reefmap.store.mapstore import chunk_proof
    from reefmap.synthetic.reader import synthetic_mosaic

    print(f"\n## 1. per tile ({tile} px, demo model, CPU)")
    mosaic = synthetic_mosaic(4 * tile, seed=0)
    out = work / "write.zarr"
    plan, job, store = prepare(mosaic, None, out, tile=tile)
    reader, model = reader_of(mosaic), load_model(job.bundle)
    task = next(plan.task(t) for t in np.argwhere(plan.selection)[5:])
    block = reader.read(task.read)
    predict_blocks([block], model, reader.nodata, [task.core], screen=False)  # warm-up (model, numba)
    t_read = best_of(lambda: reader.read(task.read), 3)
    t_pred = best_of(lambda: predict_blocks([block], model, reader.nodata, [task.core], screen=False), 3)
    prob, cls, _ = predict_blocks([block], model, reader.nodata, [task.core], screen=False)[0]
    rs, cs = task.write.slices
    tix = tuple(int(v) for v in task.index)

    def data_only():
        store.array("reef_probability")[rs, cs] = prob
        store.array("classification")[rs, cs] = cls

    def proof_only():
        p = [1, *chunk_proof(store.chunk_bytes("reef_probability", tix)), *chunk_proof(store.chunk_bytes("classification", tix))]
        store.proof_array()[tix[0], tix[1], :] = np.array(p, np.uint64)

    data_only()
    t_data = best_of(data_only, 7)
    t_proof = best_of(proof_only, 7)
    t_write = best_of(lambda: store.write_tile(task.write, prob, cls), 7)
    t_tile = t_read + t_pred + t_write
    sizes = [len(store.chunk_bytes(n, tix)) for n in ("reef_probability", "classification")]
    nprob, ncls = kernels.encode_nodata(task.write.shape)
    t_nodata = best_of(lambda: store.write_tile(task.write, nprob, ncls), 7)
    print(f"  inferred tile: read {t_read * 1e3:.1f} ms + predict {t_pred * 1e3:.1f} ms + write_tile "
          f"{t_write * 1e3:.1f} ms = {t_tile * 1e3:.1f} ms")
    print(f"  data chunks written ({sizes[0] / 1e3:.0f} + {sizes[1] / 1e3:.0f} kB stored): {t_data * 1e3:.2f} ms; "
          f"the proof (read back both, CRC32C, write it): {t_proof * 1e3:.2f} ms = "
          f"{100 * t_proof / t_tile:.2f}% of the inferred tile (target < 2%)")
    print(f"  an all-nodata tile: write_tile {t_nodata * 1e3:.2f} ms (its classification chunk of nodata + proof)")


def build_finished_store(work: Path, side: int, tile: int):
    """A finished map of side x side tiles: the data written in bulk, then each tile's proof and state written as
    raw chunk files (the bare ``bytes`` codec: a proof chunk is its 5 little-endian uint64, a state chunk its byte)."""
    from reefmap.execute.runner import prepare
    from reefmap.store.format import PROOF_PATH, TileState
    from reefmap.synthetic.reader import synthetic_mosaic

    mosaic = synthetic_mosaic(side * tile, seed=1)
    out = work / f"finished-{side * side}.zarr"
    shutil.rmtree(out, ignore_errors=True)
    plan, job, store = prepare(mosaic, None, out, tile=tile)
    n = side * tile
    r, c = np.mgrid[0:n, 0:n]
    t = time.perf_counter()
    store.array("reef_probability")[...] = ((r * 7 + c * 3) % 251).astype(np.uint8)
    store.array("classification")[...] = (1 + (r // 5 + c // 7) % 5).astype(np.uint8)
    t_data = time.perf_counter() - t
    t = time.perf_counter()
    dig = {name: store.chunk_digests(name) for name in ("reef_probability", "classification")}
    for iy in range(side):
        for d in (out / PROOF_PATH / "c" / str(iy), out / store.status_path / "c" / str(iy)):
            d.mkdir(parents=True, exist_ok=True)
        for ix in range(side):
            k = (iy, ix)
            proof = np.array([1, *dig["reef_probability"][k], *dig["classification"][k]], "<u8")
            (out / PROOF_PATH / "c" / str(iy) / str(ix) / "0").parent.mkdir(exist_ok=True)
            (out / PROOF_PATH / "c" / str(iy) / str(ix) / "0").write_bytes(proof.tobytes())
            (out / store.status_path / "c" / str(iy) / str(ix)).write_bytes(bytes([TileState.DONE]))
    print(f"  (store built: data {t_data:.1f} s, proofs and states {time.perf_counter() - t:.1f} s)")
    return mosaic, out


def bench_store(work: Path, side: int, tile: int) -> None:
    from reefmap.execute.runner import run
    from reefmap.store.integrity import states_for_run, verify
    from reefmap.store.mapstore import MapStore
    from reefmap.store.status import status

    n = side * side
    print(f"\n## 2. a finished store of {n} tiles ({side} x {side} tiles of {tile} px)")
    mosaic, out = build_finished_store(work, side, tile)
    t = time.perf_counter()
    s = status(str(out))
    t_status = time.perf_counter() - t
    assert s["percent_done"] == 100.0 and s["done"] == n, s
    t = time.perf_counter()
    states, damaged = states_for_run(MapStore.open_readonly(out))
    t_check = time.perf_counter() - t
    assert not damaged and (states == 1).all()
    t = time.perf_counter()
    r = run(mosaic, None, out, tile=tile, client="inprocess", progress=False)
    t_run = time.perf_counter() - t
    assert r.computed == 0 and not r.damaged
    t = time.perf_counter()
    r = run(mosaic, None, out, tile=tile, client="inprocess", progress=False, verify=True)
    t_run_v = time.perf_counter() - t
    assert r.computed == 0 and not r.damaged
    t = time.perf_counter()
    v = verify(out)
    t_verify = time.perf_counter() - t
    assert v["clean"] and v["intact"] == n
    print(f"  reefmap status: {t_status:.2f} s")
    print(f"  the run's check of the tiles it skips (states + one listing with sizes of each data array + the "
          f"proofs): {t_check:.2f} s")
    print(f"  reefmap.run on the finished store (computes nothing): {t_run:.2f} s; with verify=True: {t_run_v:.2f} s")
    print(f"  reefmap verify: {t_verify:.2f} s = {1000 * t_verify / n:.3f} s per 1,000 tiles")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tile", type=int, default=1024)
    ap.add_argument("--tiles-side", type=int, default=224)
    ap.add_argument("--small-tile", type=int, default=16)
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args(argv)
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    work = Path(a.workdir or tempfile.mkdtemp(prefix="reefmap-bench-integrity-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        bench_write(work, a.tile)
        bench_store(work, a.tiles_side, a.small_tile)
    finally:
        if a.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
