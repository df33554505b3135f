"""Exports of a query: COG (validated), NetCDF with a CF grid mapping, Zarr, PNG; overwrite refusal; the CLI."""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import pytest
import rasterio
import xarray as xr
from affine import Affine

from reefmap.errors import (BBoxError, InvalidParameter, NotAReefmapStore, OutputExists, ReefmapError, UnknownLayer,
                            UnsupportedFormat)
from reefmap.products.export import export, validate_cog
from reefmap.geometry.grid import GeoBox, Shape, TileGrid
from reefmap.products.query import query
from reefmap.viz.render import geobox_of
from map_fixtures import patterns, write_map
from reefmap.store.format import PROB_NODATA, UNFINISHED, TileState

P, D = TileState.PENDING, TileState.DONE
GB = GeoBox(Shape(700, 900), Affine(30.0, 0, 300000.0, 0, -30.0, 2600000.0), "EPSG:32618")
TILE = 128


@pytest.fixture(scope="module")
def utm_map(tmp_path_factory):
    grid = TileGrid(GB, TILE)
    states = np.full(tuple(grid.shape), D, np.uint8)
    states[1, 2] = P
    states[4, 6] = TileState.FAILED
    prob, cls = patterns(tuple(GB.shape))
    store, st = write_map(tmp_path_factory.mktemp("e") / "m.zarr", GB, TILE, prob, cls, states, written=states == D)
    fin = st == D
    return store.url, prob, cls, st, fin


WHOLE = (-77.2, 23.0, -76.5, 23.6)  # covers the whole map
SMALL = (-76.9, 23.42, -76.83, 23.47)  # a part of it, with the pending tile (1, 2) in it


def cli(argv):
    """The subcommands through a tiny local parser, as the main CLI runs them."""
    from reefmap.cli.query_cmds import add_commands

    p = argparse.ArgumentParser(prog="reefmap")
    add_commands(p.add_subparsers(dest="cmd", required=True))
    a = p.parse_args(argv)
    return a.fn(a)


def test_cog_export_is_valid_and_georeferenced(utm_map, tmp_path):
    url, prob, cls, st, fin = utm_map
    res = query(url, bbox=WHOLE)
    assert geobox_of(res).shape == GB.shape and geobox_of(res).transform == GB.transform
    out = export(res, tmp_path / "p.tif")
    assert validate_cog(out) == []
    with rasterio.open(out) as src:
        assert src.crs.to_epsg() == 32618 and src.transform == GB.transform
        assert src.nodata == 255 and src.dtypes == ("uint8", "uint8") and src.overviews(1) == [2, 4]
        assert src.block_shapes[0] == (256, 256) and src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.descriptions == ("reef_probability", "unfinished") and src.scales == (0.004, 0.004)
        data, unfinished = src.read()
    np.testing.assert_array_equal(data, np.where(fin, prob, PROB_NODATA))
    np.testing.assert_array_equal(unfinished, np.where(fin, 0, 250))
    out2 = export(res, tmp_path / "c.tif", layer="classification")
    assert validate_cog(out2) == []
    with rasterio.open(out2) as src:
        np.testing.assert_array_equal(src.read(1), np.where(fin, cls, UNFINISHED))
        assert src.nodata == 0 and src.colormap(1)[UNFINISHED][:3] == (90, 90, 90)


def test_probability_cog_of_a_partial_map_decodes_to_probabilities_or_masked(utm_map, tmp_path):
    """Every reader decodes the probability GeoTIFF to values in [0, 1] or masks them; unfinished pixels are masked
    (band 1) and told apart by the ``unfinished`` band, at full resolution and in the overviews."""
    import rioxarray

    url, prob, cls, st, fin = utm_map
    out = export(query(url, bbox=WHOLE), tmp_path / "p.tif")
    nodata = prob == PROB_NODATA
    da = rioxarray.open_rasterio(out, mask_and_scale=True)
    p = da.sel(band=1).values
    assert np.nanmin(p) == 0.0 and np.nanmax(p) == 1.0  # 254 "unfinished" once decoded as 1.016
    np.testing.assert_array_equal(np.isnan(p), ~fin | nodata)
    np.testing.assert_allclose(p[fin & ~nodata], prob[fin & ~nodata] / 250, rtol=1e-6)
    np.testing.assert_array_equal(da.sel(band=2).values, np.where(fin, 0.0, 1.0))
    with rasterio.open(out) as src:  # GDAL, through rasterio: nodata covers unfinished pixels
        m = src.read(1, masked=True)
        np.testing.assert_array_equal(m.mask, ~fin | nodata)
        assert (m.compressed() * src.scales[0] <= 1.0).all()
    for level in (0, 1):
        with rasterio.open(out, OVERVIEW_LEVEL=level) as ov:
            m, u = ov.read(1, masked=True), ov.read(2)
            assert m.compressed().max() <= 250 and u.max() <= 250 and (m.mask | (u < 250)).all()
            assert 0 < (u == 250).sum() and m.mask.any() and not m.mask.all()


def test_cog_validator_rejects_a_plain_geotiff(tmp_path):
    path = tmp_path / "striped.tif"
    with rasterio.open(path, "w", driver="GTiff", width=1200, height=900, count=1, dtype="uint8",
                       crs="EPSG:4326", transform=Affine(0.01, 0, 0, 0, -0.01, 10)) as dst:
        dst.write(np.zeros((1, 900, 1200), np.uint8))
    errors = validate_cog(path)
    assert any("not tiled" in e for e in errors) and any("overviews" in e for e in errors)
    assert any("LAYOUT" in e for e in errors)


def test_antimeridian_cog(tmp_path):
    gb = GeoBox(Shape(180, 360), Affine(1.0, 0, -180.0, 0, -1.0, 90.0), "EPSG:4326")
    prob, cls = patterns((180, 360))
    store, _ = write_map(tmp_path / "w.zarr", gb, 64, prob, cls, np.ones(tuple(TileGrid(gb, 64).shape), np.uint8))
    out = export(query(store.url, bbox=(170, -20, -170, -10)), tmp_path / "am.tif", layer="classification")
    with rasterio.open(out) as src:
        assert src.transform == Affine(1.0, 0, 170.0, 0, -1.0, -10.0) and src.width == 20
        np.testing.assert_array_equal(src.read(1), np.concatenate([cls[100:110, 350:], cls[100:110, :10]], axis=1))


def test_netcdf_has_a_cf_grid_mapping(utm_map, tmp_path):
    import netCDF4

    url, prob, cls, st, fin = utm_map
    res = query(url, bbox=SMALL)
    out = export(res, tmp_path / "r.nc")
    with netCDF4.Dataset(out) as nc:
        gm = nc.variables["spatial_ref"]
        assert gm.grid_mapping_name == "transverse_mercator" and "UTM zone 18N" in gm.crs_wkt
        for v in ("reef_probability", "classification", "tile_state"):
            assert nc.variables[v].grid_mapping == "spatial_ref"
        assert nc.variables["x"].standard_name == "projection_x_coordinate"
        p = nc.variables["reef_probability"]
        assert p.dtype == np.uint8 and p.scale_factor == pytest.approx(0.004) and p._FillValue == 255
        assert nc.Conventions.startswith("CF")
    ds = xr.open_dataset(out, engine="netcdf4").load()
    assert ds.rio.crs.to_epsg() == 32618 and ds.rio.transform() == geobox_of(res).transform
    ref = res.load()
    np.testing.assert_array_equal(ds.classification.values, ref.classification.values)
    np.testing.assert_array_equal(ds.tile_state.values, ref.tile_state.values)
    np.testing.assert_allclose(ds.reef_probability.values, ref.reef_probability.values, atol=1e-6, equal_nan=True)
    assert (ref.classification.values == UNFINISHED).any()  # the box holds a pending tile


def test_zarr_and_single_layer_exports(utm_map, tmp_path):
    url, *_ = utm_map
    res = query(url, bbox=SMALL)
    out = export(res, tmp_path / "r.zarr", layer="classification")
    z = xr.open_zarr(out, consolidated=False)
    assert set(z.data_vars) == {"classification", "tile_state"} and z.rio.crs.to_epsg() == 32618
    np.testing.assert_array_equal(z.classification.values, res.classification.values)


def _colour_mask(img, rgb, tol=0):
    return (np.abs(img.astype(int) - np.array(rgb)) <= tol).all(-1)


def test_png_quicklook_with_legend(utm_map, tmp_path):
    from PIL import Image

    from reefmap.classes import DEMO_SCHEME
    from reefmap.viz.quicklook import PENDING_RGB, palette
    from reefmap.viz.render import NODATA_FACE

    PALETTE = palette(DEMO_SCHEME)  # a map that records no scheme (map_fixtures) is drawn in the demo scheme
    url, prob, cls, st, fin = utm_map
    out = export(query(url, bbox=WHOLE), tmp_path / "q.png")
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape[1] >= 2 * 900 and img.shape[0] > 700  # two panels side by side at full size, a legend below
    # the two map areas: the class panel left, the probability panel right (found by their known colours)
    reef = _colour_mask(img, PALETTE[3])
    cols = np.nonzero(reef.any(0))[0]
    rows = np.nonzero(reef.any(1))[0]
    map_bottom = rows[rows < img.shape[0] - 60].max()
    grey = _colour_mask(img, PENDING_RGB)
    assert grey[: map_bottom + 1].any() and grey[map_bottom + 1:].any()  # unfinished tiles drawn grey, and in the legend
    for code in (1, 2, 3, 4, 5):  # every class colour in the map and again in the legend
        m = _colour_mask(img, PALETTE[code])
        assert m[: map_bottom + 1].any() and m[map_bottom + 1:].any(), code
    viridis0, viridis1 = (68, 1, 84), (253, 231, 37)
    right = img[:, cols.max() + 1:]
    assert _colour_mask(right, viridis0, 1).any() and _colour_mask(right, viridis1, 1).any()  # p = 0 and p = 1 ...
    assert _colour_mask(right, NODATA_FACE).any()  # ... and nodata, which is neither
    assert tuple(NODATA_FACE) not in {viridis0, viridis1, tuple(PENDING_RGB)}


def test_png_of_a_small_region_is_enlarged_and_keeps_nodata_apart_from_zero(tmp_path):
    """A 4 x 8 px map: the picture's map area is at least 600 px long; nodata, p = 0 and unfinished pixels each keep
    their own colour; the colour bar is there."""
    from PIL import Image

    from reefmap.viz.quicklook import PENDING_RGB
    from reefmap.viz.render import NODATA_FACE, NODATA_HATCH

    gb = GeoBox(Shape(4, 8), Affine(10.0, 0, 500000.0, 0, -10.0, 1000040.0), "EPSG:32655")
    prob = np.zeros((4, 8), np.uint8)           # p = 0 in columns 0-1 ...
    prob[:, 2:4] = PROB_NODATA                  # ... nodata in columns 2-3 ...
    cls = np.full((4, 8), 1, np.uint8)
    states = np.array([[D, P]], np.uint8)       # ... and columns 4-7 in a pending tile (tile size 4)
    store, _ = write_map(tmp_path / "s.zarr", gb, 4, prob, cls, states, written=np.ones((1, 2), bool))
    out = export(query(store.url, bbox=(147.0, 9.0, 147.01, 9.05)), tmp_path / "s.png", layer="reef_probability")
    img = np.asarray(Image.open(out).convert("RGB"))
    zero = _colour_mask(img, (68, 1, 84), 1)
    rows, cols = np.nonzero(zero.any(1))[0], np.nonzero(zero.any(0))[0]
    assert cols.max() - cols.min() + 1 >= 120 and rows.max() - rows.min() + 1 >= 250  # enlarged
    ny, nx = img.shape[:2]
    assert max(ny, nx) >= 600
    assert _colour_mask(img, PENDING_RGB).sum() > 1000  # the pending half, drawn as unfinished
    # nodata: hatched (background and hatch colours), never the colour of p = 0
    assert _colour_mask(img, NODATA_FACE).any() and _colour_mask(img, NODATA_HATCH, 30).any()
    assert not _colour_mask(np.array([[NODATA_FACE, NODATA_HATCH]]), (68, 1, 84), 30).any()
    # a colour bar: the whole viridis ramp in a narrow column right of the map
    bar = img[:, cols.max() + 2:]
    assert all(_colour_mask(bar, rgb, tol).any() for rgb, tol in [((253, 231, 37), 12), ((33, 145, 140), 4),
                                                                  ((68, 1, 84), 12)])


def test_png_of_a_query_polygon(utm_map, tmp_path):
    url, *_ = utm_map
    poly = {"type": "Polygon", "coordinates": [[[-76.9, 23.42], [-76.83, 23.43], [-76.86, 23.47], [-76.9, 23.42]]]}
    out = export(query(url, geometry=poly), tmp_path / "poly.png")
    from PIL import Image

    assert Image.open(out).size[0] >= 600


def test_existing_output_is_refused_unless_overwrite(utm_map, tmp_path):
    url, *_ = utm_map
    res = query(url, bbox=SMALL)
    for name in ("x.tif", "x.nc", "x.png", "x.zarr"):
        target = tmp_path / name
        export(res, target, layer="classification")
        before = sorted(p.name for p in target.iterdir()) if target.is_dir() else target.read_bytes()
        with pytest.raises(OutputExists, match="--overwrite"):
            export(res, target)
        assert (sorted(p.name for p in target.iterdir()) if target.is_dir() else target.read_bytes()) == before
        export(res, target, overwrite=True, layer=None if name != "x.tif" else "reef_probability")
        if name == "x.tif":
            assert rasterio.open(target).tags()["LAYER"] == "reef_probability"
        elif name != "x.png":
            kw = {"engine": "zarr", "consolidated": False} if name.endswith(".zarr") else {}
            assert "reef_probability" in xr.open_dataset(target, **kw)
    assert sorted(os.listdir(tmp_path)) == ["x.nc", "x.png", "x.tif", "x.zarr"]  # no temporary leftovers


def test_overwrite_replaces_only_an_earlier_export_of_the_same_kind(utm_map, tmp_path):
    """`--out X.tif --overwrite` where X.tif is a folder tree, `--out x.zarr` on a Zarr store that is not an export,
    or on a symlink: refused, naming the path, nothing touched."""
    url, *_ = utm_map
    res = query(url, bbox=SMALL)
    tree = tmp_path / "X.tif"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "keep.txt").write_text("mine")
    store = tmp_path / "other.zarr"
    store.mkdir()
    (store / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {"a": 1}}))
    (store / "keep.txt").write_text("mine")
    link = tmp_path / "link.nc"
    link.symlink_to(tree / "sub" / "keep.txt")
    for target, why in ((tree, "is a folder"), (store, "not a Zarr export"), (link, "symbolic link")):
        with pytest.raises(OutputExists, match=rf"{target}.*{why}"):
            export(res, target, overwrite=True)
        with pytest.raises(OutputExists, match=why):
            cli(["query", url, f"--bbox={','.join(map(str, SMALL))}", "--out", str(target), "--overwrite",
                 "--layer", "classification"])
    assert (tree / "sub" / "keep.txt").read_text() == "mine" and (store / "keep.txt").read_text() == "mine"
    assert link.is_symlink() and link.read_text() == "mine"


def test_the_queried_map_is_never_the_output(tmp_path):
    """`reefmap query MAP --out MAP --overwrite` (and an output inside the map, or a folder holding it, by any
    spelling of the path) is refused before anything is read or written: the map stays whole."""
    grid = TileGrid(GB, TILE)
    states = np.full(tuple(grid.shape), D, np.uint8)
    prob, cls = patterns(tuple(GB.shape))
    outer = tmp_path / "outer.zarr"
    outer.mkdir()
    m = outer / "m.zarr"
    write_map(m, GB, TILE, prob, cls, states)
    (tmp_path / "alias").symlink_to(outer, target_is_directory=True)
    box = f"--bbox={','.join(map(str, SMALL))}"
    for out, where in ((m, "is the queried map"), (tmp_path / "x" / ".." / "outer.zarr", "holds the queried map"),
                       (f"{m}/", "is the queried map"), (tmp_path / "alias" / "m.zarr", "is the queried map"),
                       (m / "classification" / "x.tif", "is inside the queried map"), (outer, "holds the queried map")):
        with pytest.raises(InvalidParameter, match=rf"{where}.*would destroy the map"):
            cli(["query", str(m), box, "--out", str(out), "--overwrite", "--layer", "classification"])
    with pytest.raises(InvalidParameter, match="would destroy the map"):
        export(query(str(m), bbox=SMALL), m, overwrite=True)
    np.testing.assert_array_equal(query(str(m))["classification"].values, cls)
    assert sorted(p.name for p in outer.iterdir()) == ["m.zarr"]


def test_bad_export_requests(utm_map, tmp_path):
    url, *_ = utm_map
    res = query(url, bbox=SMALL)
    with pytest.raises(UnsupportedFormat, match=r"\.nc, \.png"):
        export(res, tmp_path / "x.jpg")
    with pytest.raises(InvalidParameter, match="one layer"):
        export(res, tmp_path / "x.tif", layer="both")
    with pytest.raises(UnknownLayer, match="reef_probability, classification, both"):
        export(res, tmp_path / "x.nc", layer="depth")
    with pytest.raises(InvalidParameter, match="does not exist"):
        export(res, tmp_path / "no" / "x.nc")


def test_cli_query(utm_map, tmp_path, capsys):
    url, prob, cls, st, fin = utm_map
    aoi = tmp_path / "aoi.geojson"
    aoi.write_text(json.dumps({"type": "Polygon", "coordinates": [[[-76.9, 23.42], [-76.83, 23.43], [-76.86, 23.47],
                                                                   [-76.9, 23.42]]]}))
    assert cli(["query", url, "--bbox=-76.9,23.42,-76.83,23.47", "--out", str(tmp_path / "a.tif")]) == 0
    assert "wrote" in capsys.readouterr().out and validate_cog(tmp_path / "a.tif") == []
    assert cli(["query", url, "--geometry", str(aoi), "--out", str(tmp_path / "g.nc"), "--layer", "classification",
                "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["geometry"] is True and 0 < s["complete_fraction"] < 1 and s["format"] == "netcdf"
    assert set(xr.open_dataset(tmp_path / "g.nc").data_vars) == {"classification", "tile_state"}
    with pytest.raises(OutputExists):
        cli(["query", url, "--bbox=-76.9,23.42,-76.83,23.47", "--out", str(tmp_path / "a.tif")])
    assert cli(["query", url, "--bbox=-76.9,23.42,-76.83,23.47", "--out", str(tmp_path / "a.tif"), "--overwrite",
                "--layer", "classification"]) == 0
    for argv, err in [
        (["query", url, "--bbox=0,5,1,2", "--out", str(tmp_path / "b.tif")], BBoxError),
        (["query", url, "--bbox=10,10,11,11", "--out", str(tmp_path / "b.tif")], BBoxError),
        (["query", url, "--out", str(tmp_path / "b.tif")], InvalidParameter),
        (["query", url, "--bbox=-77,23.4,-76.9,23.5", "--out", str(tmp_path / "b.tif"), "--layer", "x"], UnknownLayer),
        (["query", str(tmp_path), "--bbox=-77,23.4,-76.9,23.5", "--out", str(tmp_path / "b.tif")], NotAReefmapStore),
    ]:
        with pytest.raises(err) as e:
            cli(argv)
        assert isinstance(e.value, ReefmapError)
    assert not (tmp_path / "b.tif").exists()


def test_main_cli_prints_one_line_errors(utm_map, tmp_path, capsys):
    """Through reefmap.cli.main.main once the lead registers the subcommands (skipped until then)."""
    from reefmap.cli import main as main_cli

    if "query" not in main_cli.build_parser()._subparsers._group_actions[0].choices:
        pytest.skip("reefmap.cli.main does not register cli_query.add_commands yet")
    url, *_ = utm_map
    assert main_cli.main(["query", url, "--bbox=0,5,1,2", "--out", str(tmp_path / "b.tif")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("reefmap: error: bbox") and "Traceback" not in err and err.count("\n") == 1
