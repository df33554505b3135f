"""The halo'd inference: tile-size invariance, the two faces agree, screening, bad pixels."""

import numpy as np
import pytest
import xarray as xr

from reefmap.errors import BandMismatch, InvalidParameter
from reefmap.compute.segment import segment
from reefmap.compute.tiles import predict_block
from reefmap.model.segmenter import load_model


def whole_image(arr, model, nodata=0):
    prob, cls, _ = predict_block(arr, model, nodata, None, screen=False)
    return prob, cls


@pytest.mark.parametrize("tile", [128, 256, 512])
def test_segment_is_identical_whatever_the_tile_size(memory_mosaic, random_bundle, tile):
    da, arr = memory_mosaic
    model = load_model(random_bundle)
    ref_prob, ref_cls = whole_image(arr, model)
    ds = segment(da, model, tile=tile, screen=False).compute(scheduler="threads")
    cls = ds.classification.values
    prob = ds.reef_probability.values
    np.testing.assert_array_equal(cls, ref_cls)
    np.testing.assert_array_equal(np.where(np.isnan(prob), 255, np.round(prob * 250)).astype(np.uint8), ref_prob)
    assert (cls[:300, :300] == 0).all() and np.isnan(prob[:300, :300]).all()  # nodata stays nodata
    assert ds.rio.crs == da.rio.crs and ds.rio.transform() == da.rio.transform()


@pytest.mark.parametrize("width,tile", [(791, 256), (2064, None)])  # None: the default 1024 px chunks
def test_segment_writes_to_zarr_when_an_edge_sliver_joins_the_last_chunk(tmp_path, random_bundle, width, tile):
    """An edge strip narrower than the halo (23 px at tile 256, 16 px at 1024) is merged into the last chunk for the
    computation; the result still has regular chunks, so ``to_zarr`` takes it, and what it writes is exact."""
    from affine import Affine

    from conftest import textured
    from reefmap.geometry.grid import GeoBox, Shape
    from reefmap.sources import memory_reader
    from reefmap.sources.base import reader_to_dataarray

    arr = textured((200, width), seed=4, nodata_box=(0, 50, 0, 60))
    reader = memory_reader(arr, GeoBox(Shape(200, width), Affine(30.0, 0, 200000.0, 0, -30.0, 2700000.0), "EPSG:32618"),
                           nodata=0, band_names=["red", "green", "blue"])
    try:
        model = load_model(random_bundle)
        ds = segment(reader_to_dataarray(reader, chunks=1024), model, tile=tile, screen=False)
        ds.to_zarr(tmp_path / "seg.zarr", consolidated=False)
        back = xr.open_zarr(tmp_path / "seg.zarr", consolidated=False).compute()
    finally:
        reader.release()
    ref_prob, ref_cls = whole_image(arr, model)
    np.testing.assert_array_equal(back.classification.values, ref_cls)
    prob = back.reef_probability.values
    np.testing.assert_array_equal(np.where(np.isnan(prob), 255, np.round(prob * 250)).astype(np.uint8), ref_prob)


def test_a_short_halo_shows_seams(memory_mosaic, random_bundle):
    """The property above is not vacuous: with halo 4 the tiled result differs from the whole image."""
    da, arr = memory_mosaic
    model = load_model(random_bundle)
    _, ref_cls = whole_image(arr, model)
    with pytest.warns(UserWarning, match="seams"):
        ds = segment(da, model, tile=128, halo=4, screen=False)
    assert (ds.classification.values != ref_cls).sum() > 0


def test_segment_is_lazy_and_checks_inputs(memory_mosaic, random_bundle):
    da, _ = memory_mosaic
    model = load_model(random_bundle)
    ds = segment(da, model, tile=256)
    assert hasattr(ds.classification.data, "dask")
    with pytest.raises(BandMismatch, match="expects 3"):
        segment(da.isel(band=[0, 1]), model)
    with pytest.raises(InvalidParameter, match="multiples of 4"):
        segment(da, model, tile=250)


def test_nan_and_out_of_range_pixels_become_nodata(random_bundle):
    model = load_model(random_bundle)
    block = np.full((3, 64, 64), 100.0, np.float32)
    block[:, 0, 0] = np.nan
    block[1, 1, 1] = 300.0
    block[0, 2, 2] = -5.0
    prob, cls, _ = predict_block(block, model, None, None, screen=False)
    assert cls[0, 0] == 0 and cls[1, 1] == 0 and cls[2, 2] == 0 and prob[0, 0] == 255
    assert (cls[3:, 3:] > 0).all()


def test_screen_skips_all_nodata_all_deep_and_all_land_blocks(random_bundle):
    from reefmap.store.format import TileState

    model = load_model(random_bundle)
    nod = np.zeros((3, 64, 64), np.uint8)
    deep = np.zeros((3, 64, 64), np.uint8)
    deep[:] = np.array([10, 30, 80], np.uint8)[:, None, None]
    land = np.zeros((3, 64, 64), np.uint8)
    land[:] = np.array([150, 140, 60], np.uint8)[:, None, None]
    mixed = deep.copy()
    mixed[:, 10, 10] = (200, 220, 230)
    assert predict_block(nod, model, 0)[2] == TileState.SKIPPED_NODATA
    p, c, s = predict_block(deep, model, 0)
    assert s == TileState.SKIPPED_DEEP_WATER and (c == 1).all() and (p == 0).all()
    assert predict_block(land, model, 0)[2] == TileState.SKIPPED_LAND
    assert predict_block(mixed, model, 0)[2] == TileState.DONE


def test_batched_forward_equals_one_by_one(memory_mosaic, random_bundle):
    from reefmap.compute.tiles import predict_blocks

    _, arr = memory_mosaic
    model = load_model(random_bundle)
    blocks = [np.ascontiguousarray(arr[:, 200:456, 300:556]), np.ascontiguousarray(arr[:, 400:656, 100:356])]
    together = predict_blocks(blocks, model, 0, [None, None], screen=False)
    for b, t in zip(blocks, together):
        one = predict_block(b, model, 0, None, screen=False)
        np.testing.assert_array_equal(one[1], t[1])
        np.testing.assert_array_equal(one[0], t[0])


def test_model_loads_once_per_process(random_bundle):
    assert load_model(random_bundle) is load_model(random_bundle)
    import pickle

    assert pickle.loads(pickle.dumps(load_model(random_bundle))) is load_model(random_bundle)
