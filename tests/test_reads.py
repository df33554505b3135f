"""Read amplification: the halo'd windows of neighbouring tiles decode each source chunk about once (the
per-process source-chunk cache + the tile order of ``cache_order``), with the same pixels as without the cache."""

from __future__ import annotations

import numpy as np
import pytest
import rioxarray  # noqa: F401 - the .rio accessor
import xarray as xr
from affine import Affine

from reefmap.caching import clear_caches
from reefmap.options import set_options
from reefmap.planning.plan import cache_order, plan_tiles
from reefmap.sources import open_reader, read_stats, reader_of, reset_read_stats


@pytest.fixture
def zarr_mosaic(tmp_path):
    """A 3-band uint8 mosaic of 4 x 4 chunks of 64 px in a Zarr store."""
    rng = np.random.default_rng(3)
    data = rng.integers(1, 255, (3, 256, 256), dtype=np.uint8)
    da = xr.DataArray(data, dims=("band", "y", "x"),
                      coords={"y": 1000.0 - 10 * (np.arange(256) + 0.5), "x": 10 * (np.arange(256) + 0.5)})
    da = da.rio.write_crs("EPSG:32618").rio.write_transform(Affine(10.0, 0, 0, 0, -10.0, 1000.0))
    da.encoding["chunks"] = (3, 64, 64)
    path = tmp_path / "m.zarr"
    da.to_dataset(name="image").to_zarr(path, consolidated=False, zarr_format=3)
    return str(path), data


def read_plan(path, budget_mb):
    """Every tile's halo'd window (tile 64, halo 8: each touches up to 3 x 3 chunks), in ``cache_order``."""
    clear_caches()
    reset_read_stats()
    from reefmap.sources import open_mosaic

    reader = reader_of(open_mosaic(path))
    plan = plan_tiles(reader.geobox, 64, 8)
    with set_options(chunk_cache_mb=budget_mb):
        (order,) = cache_order(plan.tiles())
        blocks = {tuple(t): open_reader(reader.spec()).read(plan.task(t).read) for t in order}
    return plan, blocks, read_stats()


def test_chunk_cache_decodes_each_chunk_once_with_the_same_pixels(zarr_mosaic):
    path, data = zarr_mosaic
    plan, cached, with_cache = read_plan(path, 16)
    _, direct, without = read_plan(path, 0)
    assert with_cache["needed_bytes"] == without["needed_bytes"] == data.nbytes  # every chunk is needed
    assert with_cache["read_amplification"] <= 1.3
    assert without["read_amplification"] >= 9 / 4  # interior tiles decode 9 chunks, edge ones 4 or 6
    for t, block in cached.items():
        assert block.dtype == np.uint8 and np.array_equal(block, direct[t])
        assert block.shape[1:] == tuple(plan.task(t).read.shape)
    r = plan.task((1, 1)).read
    assert np.array_equal(cached[(1, 1)], data[(slice(None), *r.slices)])


def test_a_tiny_cache_still_reads_right(zarr_mosaic):
    """A budget smaller than one chunk keeps nothing: every window decodes its chunks again, pixels unchanged."""
    path, data = zarr_mosaic
    plan, blocks, stats = read_plan(path, 0.001)
    assert stats["read_amplification"] >= 9 / 4
    r = plan.task((2, 1)).read
    assert np.array_equal(blocks[(2, 1)], data[(slice(None), *r.slices)])


def test_cache_order_keeps_bands_and_strips():
    tiles = np.argwhere(np.ones((4, 5), bool))
    a, b = cache_order(tiles, band=2, parts=2)
    assert a.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1], [0, 2], [0, 3], [1, 2], [1, 3], [0, 4], [1, 4]]
    assert set(map(tuple, b.tolist())) == {(r, c) for r in (2, 3) for c in range(5)}
    (whole,) = cache_order(tiles)
    assert whole.tolist() == tiles.tolist()  # one part, no bands: row-major


def test_a_source_rewritten_in_place_is_read_afresh_by_the_next_run(zarr_mosaic, random_bundle, tmp_path):
    """In one process (a notebook): map a Zarr mosaic, rewrite its pixels in place (same grid, same path), map it
    again: the second map is the new pixels' map, not the first one served from decoded blocks kept in memory."""
    import zarr

    from reefmap.execute.runner import run
    from reefmap.sources import open_mosaic

    path, data = zarr_mosaic

    def mapped(name):
        run(open_mosaic(path), random_bundle.path, tmp_path / name, tile=64, client="inprocess", progress=False)
        return zarr.open_group(str(tmp_path / name), mode="r")["classification"][:]

    first = mapped("first.zarr")
    arr = zarr.open_array(f"{path}/image", mode="r+")
    arr[:] = data[:, ::-1, ::-1]  # the same pixels upside down: a different map
    second = mapped("second.zarr")
    clear_caches()
    fresh = mapped("fresh.zarr")
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(second, fresh)
