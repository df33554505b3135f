"""Whole-chunk block reads of a Zarr mosaic through ``ZarrReader`` from 1 and 2 threads of one process: the raw
path (each chunk file read and decoded in the calling thread) against zarr's own (every synchronous read runs on
zarr-python's one event-loop thread), and against the bare floor (``open().read()`` + numcodecs zstd decode of the
chunk files, nothing else). Milliseconds of wall time per chunk, and their ratios.

    .venv/bin/python benchmarks/bench_reads.py [--size 4096] [--chunk 1024] [--passes 3] [--threads 1 2]

The store is the synthetic 3-band uint8 mosaic of ``bench_pipeline.py`` (bytes + zstd, chunks 3 x chunk x chunk),
written once to a temporary folder. The chunk cache is off, so every read decodes its chunk.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench_pipeline import synthetic_source
from timing import best_of


def chunk_reads_ms(reader, windows, threads: int, passes: int) -> float:
    """Best-of-``passes`` wall milliseconds per chunk of reading every window once with ``threads`` threads."""
    with ThreadPoolExecutor(threads) as pool:
        def read_all():
            for block in pool.map(reader.read, windows):
                assert block.shape[1:] == (windows[0].shape.y, windows[0].shape.x)

        read_all()  # warm up: threads, file cache
        return best_of(read_all, passes) / len(windows) * 1e3


def bare_chunk_reads_ms(store: Path, threads: int, passes: int) -> float:
    """``chunk_reads_ms`` of the bare floor: each chunk file read and zstd-decoded, nothing assembled."""
    from numcodecs import Zstd

    files = sorted(p for p in (store / "image" / "c").rglob("*") if p.is_file())

    def decode(p: Path) -> int:
        with open(p, "rb") as f:
            return len(Zstd().decode(f.read()))

    with ThreadPoolExecutor(threads) as pool:
        def read_all():
            assert len(set(pool.map(decode, files))) == 1  # every chunk decodes to the full chunk

        read_all()
        return best_of(read_all, passes) / len(files) * 1e3


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args(argv)

    from reefmap.options import set_options
    from reefmap.sources.base import block_window
    from reefmap.sources.zarr_source import ZarrReader

    with tempfile.TemporaryDirectory() as tmp:
        store = synthetic_source(Path(tmp) / "mosaic.zarr", args.size, args.chunk)
        raw, through_zarr = ZarrReader(store), ZarrReader(store)
        through_zarr.raw = None  # force zarr's path
        assert raw.raw is not None, "the synthetic store is not laid out simply: no raw path to measure"
        n = -(-args.size // args.chunk)
        windows = [block_window(raw.geobox, args.chunk, args.chunk, iy, ix) for iy in range(n) for ix in range(n)]
        print(f"$ {shlex.join([sys.executable, *sys.argv])}")
        print(f"{len(windows)} chunks of 3 x {args.chunk}² uint8 (bytes + zstd), best of {args.passes} passes")
        print(f"{'threads':>7} {'raw ms/chunk':>13} {'zarr ms/chunk':>14} {'zarr/raw':>9} {'bare ms/chunk':>14} {'raw/bare':>9}")
        rows = {}
        with set_options(chunk_cache_mb=0):
            for t in args.threads:
                before = raw.raw_chunk_reads
                r = chunk_reads_ms(raw, windows, t, args.passes)
                assert raw.raw_chunk_reads - before == len(windows) * (args.passes + 1)  # the raw path was taken
                z = chunk_reads_ms(through_zarr, windows, t, args.passes)
                b = bare_chunk_reads_ms(store, t, args.passes)
                rows[t] = (r, z, b)
                print(f"{t:>7} {r:>13.2f} {z:>14.2f} {z / r:>9.2f} {b:>14.2f} {r / b:>9.2f}")
        if len(rows) > 1:
            t0, t1 = min(rows), max(rows)
            print(f"speed-up {t0} → {t1} threads: raw {rows[t0][0] / rows[t1][0]:.2f}x, "
                  f"zarr {rows[t0][1] / rows[t1][1]:.2f}x, bare {rows[t0][2] / rows[t1][2]:.2f}x")


if __name__ == "__main__":
    main()
