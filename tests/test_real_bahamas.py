"""The pipeline on the real Landsat scene of the Bahamas (../shared/data/real; skipped when absent)."""

import numpy as np
import pytest
import rasterio
import xarray as xr
import zarr

from conftest import shared_data
from reefmap.execute.runner import run
from reefmap.sources import open_mosaic

# (row slice, col slice) boxes of RGB.byte.tif pixels, read off the image (see the README's figure notes)
# Cloud-free land on Andros: west, centre and south (fewer than 10% of their pixels are bright in all bands)
ANDROS_LAND = {"west": (slice(310, 360), slice(180, 215)), "centre": (slice(200, 260), slice(250, 300)),
               "south": (slice(540, 600), slice(380, 440))}
# Andros under scattered cumulus: about a third of the pixels are cloud, the rest land and lakes
ANDROS_CUMULUS = (slice(320, 380), slice(225, 290))
TONGUE_OF_THE_OCEAN = (slice(250, 300), slice(425, 475))
GREAT_BAHAMA_BANK = (slice(420, 480), slice(110, 170))
CLOUD = (slice(95, 120), slice(420, 470))
CODES = {"deep_water": 1, "shallow": 2, "reef": 3, "land": 4, "cloud": 5}


@pytest.fixture(scope="module")
def bahamas_map(tmp_path_factory):
    path = shared_data("real", "RGB.byte.tif")
    out = tmp_path_factory.mktemp("bahamas") / "map.zarr"
    summary = run(open_mosaic(str(path), chunks=256), None, out, tile=256, client="inprocess", progress=False)
    return path, out, summary


def share(cls, box, code):
    return float((cls[box] == code).mean())


def test_the_map_keeps_the_scene_georeferencing_exactly(bahamas_map):
    path, out, summary = bahamas_map
    assert summary.failed == 0 and summary.planned == 12  # 718 x 791 px in 256-px tiles: 3 x 4
    ds = xr.open_zarr(out, consolidated=False)
    with rasterio.open(path) as src:
        assert ds.rio.crs == src.crs
        assert ds.rio.transform() == src.transform
        assert (ds.sizes["y"], ds.sizes["x"]) == src.shape
        nodata = (src.read() == 0).all(axis=0)
    cls = ds.classification.values
    assert (cls[nodata] == 0).all() and (cls[~nodata] > 0).all()  # the rotated-scene collar stays nodata


def test_the_demo_model_is_sensible_on_the_real_scene(bahamas_map):
    _, out, _ = bahamas_map
    cls = zarr.open_group(str(out), mode="r")["classification"][:]
    assert share(cls, ANDROS_CUMULUS, CODES["land"]) + share(cls, ANDROS_CUMULUS, CODES["cloud"]) > 0.6
    assert share(cls, TONGUE_OF_THE_OCEAN, CODES["deep_water"]) > 0.7
    assert share(cls, GREAT_BAHAMA_BANK, CODES["shallow"]) + share(cls, GREAT_BAHAMA_BANK, CODES["reef"]) > 0.7
    assert share(cls, CLOUD, CODES["cloud"]) > 0.6


def test_four_overlapping_files_and_the_cog_give_the_same_map(bahamas_map, tmp_path):
    _, ref, _ = bahamas_map
    ref_g = zarr.open_group(str(ref), mode="r")
    parts = [str(shared_data("real", f"rgb{i}.tif")) for i in range(1, 5)]
    for name, source in (("four", parts), ("cog", str(shared_data("real", "RGB.byte.cog.tif")))):
        out = tmp_path / f"{name}.zarr"
        run(open_mosaic(source, chunks=256), None, out, tile=256, client="inprocess", progress=False)
        g = zarr.open_group(str(out), mode="r")
        for var in ("classification", "reef_probability"):
            np.testing.assert_array_equal(g[var][:], ref_g[var][:], err_msg=f"{name}: {var}")
        ds = xr.open_zarr(out, consolidated=False)
        assert ds.rio.transform() == xr.open_zarr(ref, consolidated=False).rio.transform()


def test_an_alpha_band_becomes_the_nodata_mask(tmp_path):
    out = tmp_path / "rgba.zarr"
    run(open_mosaic(str(shared_data("real", "RGBA.byte.tif")), chunks=256), None, out, tile=256, client="inprocess", progress=False)
    cls = zarr.open_group(str(out), mode="r")["classification"][:]
    with rasterio.open(shared_data("real", "RGBA.byte.tif")) as src:
        alpha = src.read(4)
    assert (cls[alpha == 0] == 0).all() and (cls[alpha > 0] > 0).all()


@pytest.mark.parametrize("where", sorted(ANDROS_LAND))
def test_the_demo_model_puts_land_on_andros(bahamas_map, where):
    _, out, _ = bahamas_map
    cls = zarr.open_group(str(out), mode="r")["classification"][:]
    box = ANDROS_LAND[where]
    counts = np.bincount(cls[box].ravel(), minlength=6)
    assert counts.argmax() == CODES["land"], f"{where} Andros: class shares {np.round(counts / counts.sum(), 2)}"
    assert share(cls, box, CODES["land"]) > 0.6


def test_the_andros_land_boxes_are_cloud_free_and_the_cumulus_box_is_not():
    with rasterio.open(shared_data("real", "RGB.byte.tif")) as src:
        rgb = src.read()
    bright = rgb.min(axis=0) > 150  # cloud tops are bright in every band; land, water and lakes are not
    for where, box in ANDROS_LAND.items():
        assert bright[box].mean() < 0.1, where
    assert bright[ANDROS_CUMULUS].mean() > 0.2
