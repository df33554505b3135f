"""Zarr mosaics read chunk file by chunk file in the calling thread (``ZarrReader.raw``): the same pixels as zarr,
only where the store is laid out simply, and a damaged chunk still fails only the windows over it."""

from __future__ import annotations

import os
import shutil
import uuid

import numpy as np
import pytest
import rioxarray  # noqa: F401 - the .rio accessor
import xarray as xr
import zarr
from affine import Affine

from reefmap.caching import clear_caches
from reefmap.errors import CorruptSource, SourceNotFound
from reefmap.geometry.grid import Window
from reefmap.options import set_options
from reefmap.planning.plan import plan_tiles
from reefmap.sources.base import block_window
from reefmap.sources.zarr_source import ZarrReader

pytestmark = pytest.mark.filterwarnings("ignore::zarr.errors.UnstableSpecificationWarning")

SHAPE = (3, 200, 300)  # 64 px chunks: the last chunk row and column are partial


def write_store(url, dtype="uint8", chunks=(3, 64, 64), seed=1, **encoding):
    """A (band, y, x) mosaic of incompressible pixels written by xarray (Zarr 3), and its pixels."""
    info = np.iinfo(dtype)
    data = np.random.default_rng(seed).integers(1, info.max, SHAPE, dtype=dtype)
    da = xr.DataArray(data, dims=("band", "y", "x"),
                      coords={"y": 1000.0 - 10 * (np.arange(SHAPE[1]) + 0.5), "x": 10 * (np.arange(SHAPE[2]) + 0.5)})
    da = da.rio.write_crs("EPSG:32618").rio.write_transform(Affine(10.0, 0, 0, 0, -10.0, 1000.0))
    da.encoding.update(chunks=chunks, **encoding)
    da.to_dataset(name="image").to_zarr(url, mode="w", consolidated=False, zarr_format=3)
    return str(url), data


def chunk_path(store, coords):
    return os.path.join(store, "image", "c", *map(str, coords))


def blocks(reader):
    """Every cache block (= Zarr chunk in y/x) of the reader's grid."""
    _, cy, cx = zarr.open_group(reader.url, mode="r")["image"].chunks
    g = reader.geobox
    return [block_window(g, cy, cx, iy, ix) for iy in range(-(-g.shape.y // cy)) for ix in range(-(-g.shape.x // cx))]


@pytest.fixture(autouse=True)
def empty_caches():
    clear_caches()
    yield
    clear_caches()


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
@pytest.mark.parametrize("chunks", [(3, 64, 64), (1, 64, 64), (2, 64, 64)])
def test_raw_reads_equal_zarr(tmp_path, dtype, chunks):
    """Whole blocks (edge ones partial), all bands and band subsets, band chunks smaller than the band count:
    the raw path gives zarr's pixels, and it is the path taken (one chunk file decoded per band chunk needed)."""
    store, data = write_store(tmp_path / "m.zarr", dtype, chunks)
    raw, forced = ZarrReader(store), ZarrReader(store)
    forced.raw = None  # the same store through zarr
    assert raw.raw is not None and raw.raw.shape == chunks
    cb = chunks[0]
    for bands in (None, (2, 0), (1,)):
        clear_caches()
        picked = list(range(3)) if bands is None else list(bands)
        for w in blocks(raw):
            before = raw.raw_chunk_reads
            got = raw.read(w, bands)
            assert raw.raw_chunk_reads - before == len({b // cb for b in picked})
            assert got.dtype == np.dtype(dtype)
            np.testing.assert_array_equal(got, forced.read(w, bands))
            np.testing.assert_array_equal(got, data[(picked, *w.slices)])
    with set_options(chunk_cache_mb=0):  # no cache: a window of several whole chunks is read directly, raw
        before = raw.raw_chunk_reads
        whole = raw.read(Window(64, 200, 0, 300))
        assert raw.raw_chunk_reads - before == 3 * 5 * (-(-3 // cb))
        np.testing.assert_array_equal(whole, data[:, 64:200])


def test_a_missing_chunk_reads_as_the_fill_value(tmp_path):
    store, data = write_store(tmp_path / "m.zarr", fill_value=7)
    os.remove(chunk_path(store, (0, 1, 4)))  # the partial chunk at rows 64:128, cols 256:300
    r = ZarrReader(store)
    assert r.raw is not None and r.raw.fill == 7
    w = Window(64, 128, 256, 300)
    got = r.read(w)
    assert (got == 7).all()
    np.testing.assert_array_equal(got, zarr.open_group(store, mode="r")["image"][:, 64:128, 256:300])
    np.testing.assert_array_equal(r.read(Window(0, 64, 256, 300)), data[:, :64, 256:300])  # its neighbour
    shutil.rmtree(store)  # a store gone is not a store of missing chunks
    clear_caches()
    with pytest.raises(SourceNotFound, match="disappeared while reading window"):
        r.read(Window(0, 64, 0, 64))


@pytest.mark.parametrize("layout", ["gzip", "blosc", "sharded"])
def test_other_layouts_are_read_through_zarr(tmp_path, layout):
    encoding = {"gzip": dict(compressors=zarr.codecs.GzipCodec()),
                "blosc": dict(compressors=zarr.codecs.BloscCodec()),
                "sharded": dict(shards=(3, 128, 128))}[layout]
    store, data = write_store(tmp_path / "m.zarr", "uint16", **encoding)
    r = ZarrReader(store)
    assert r.raw is None
    for w in blocks(r):
        np.testing.assert_array_equal(r.read(w, (1, 2)), data[(slice(1, 3), *w.slices)])
    assert r.raw_chunk_reads == 0


def test_remote_stores_and_unaligned_windows_are_read_through_zarr(tmp_path):
    url = f"memory://reefmap-test-{uuid.uuid4().hex}/m.zarr"
    _, data = write_store(url)
    assert ZarrReader(url).raw is None
    store, data = write_store(tmp_path / "m.zarr")
    r = ZarrReader(store)
    with set_options(chunk_cache_mb=0):  # a halo'd window, read directly: not whole chunks
        np.testing.assert_array_equal(r.read(Window(56, 136, 56, 136)), data[:, 56:136, 56:136])
    assert r.raw_chunk_reads == 0


def test_a_truncated_chunk_fails_only_the_windows_over_it(tmp_path):
    """The raw path's error is the zarr path's, word for word (it names the store and the window), so the chunk
    cache's fallback (read just the window) fails only the tiles whose windows reach the damaged chunk."""
    store, data = write_store(tmp_path / "m.zarr")
    p = chunk_path(store, (0, 1, 2))  # rows 64:128, cols 128:192
    with open(p, "rb") as f:
        b = f.read()
    with open(p, "wb") as f:
        f.write(b[: len(b) // 2])
    raw, forced = ZarrReader(store), ZarrReader(store)
    forced.raw = None
    bad = Window(64, 128, 128, 192)
    with pytest.raises(CorruptSource) as by_raw:
        raw.read(bad)
    with pytest.raises(CorruptSource) as by_zarr:
        forced.read(bad)
    assert str(by_raw.value) == str(by_zarr.value)
    assert store in str(by_raw.value) and "rows 64:128, cols 128:192" in str(by_raw.value)

    plan = plan_tiles(raw.geobox, 64, 8)
    failed = []
    for t in plan.tiles():
        w = plan.task(tuple(t)).read
        try:
            got = raw.read(w)
        except CorruptSource as e:
            assert f"rows {max(w.row_start, 0)}:" in str(e)  # the error names this tile's own window
            failed.append(tuple(int(i) for i in t))
            continue
        np.testing.assert_array_equal(got, forced.read(w))
    assert sorted(failed) == [(iy, ix) for iy in (0, 1, 2) for ix in (1, 2, 3)]  # the tiles whose halo reaches it
