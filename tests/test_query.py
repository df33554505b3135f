"""Querying a map: lazy opening, boxes in any CRS, the antimeridian, polygons, pending tiles, chunk reads, bad input."""

from __future__ import annotations

import json
import os

try:  # before anything imports gcsfs: it sets the GCS emulator's environment
    from gcs_emulator import STORAGE_OPTIONS, gcs_emulator, gcs_fs  # noqa: F401  (pytest fixtures)
except ImportError:  # pragma: no cover - run from another directory
    from tests.gcs_emulator import STORAGE_OPTIONS, gcs_emulator, gcs_fs  # noqa: F401

import dask
import numpy as np
import pytest
import xarray as xr
from affine import Affine

from reefmap.errors import BBoxError, GeometryError, NotAReefmapStore, ReefmapError, UnknownLayer
from reefmap.geometry.grid import GeoBox, Shape, TileGrid, Window
from reefmap.products.mapview import open_map, tile_states
from reefmap.products.query import query
from reefmap.viz.render import geobox_of
from map_fixtures import CountingReads, make_map
from reefmap.store.format import OUTSIDE, UNFINISHED, TileState

P, D, F = TileState.PENDING, TileState.DONE, TileState.FAILED


def expected(prob, cls, states, tile):
    """The decoded layers a query must return, from the numpy truth."""
    st = np.repeat(np.repeat(states, tile, 0), tile, 1)[: prob.shape[0], : prob.shape[1]]
    fin = np.isin(st, [1, 2, 3, 4])
    p = np.where(fin & (prob != 255), prob / np.float32(250), np.nan).astype(np.float32)
    c = np.where(fin, cls, UNFINISHED).astype(np.uint8)
    return p, c, st


def no_compute(dsk, keys, **kw):
    raise AssertionError("a dask graph was computed where everything should stay lazy")


GB_UTM = GeoBox(Shape(200, 260), Affine(30.0, 0, 300000.0, 0, -30.0, 2600000.0), "EPSG:32618")
STATES_UTM = [[D, D, P, 2, D, D, F, D, D], [D, P, D, D, D, D, D, D, D], [D, D, D, D, 3, D, D, D, P], [4, D, D, D, D, D, D, D, D],
              [D, D, D, D, D, P, D, D, D], [D, D, D, D, D, D, D, D, D], [D, D, D, D, D, D, D, D, D]]


@pytest.fixture(scope="module")
def utm_map(tmp_path_factory):
    return make_map(tmp_path_factory.mktemp("q") / "utm.zarr", GB_UTM, 32, STATES_UTM, write_pending=True)


def test_open_map_is_lazy_georeferenced_and_shows_pending(utm_map):
    store, prob, cls, states = utm_map
    with dask.config.set(scheduler=no_compute):
        ds = open_map(store.url)
    assert ds.rio.crs.to_epsg() == 32618 and ds.rio.transform() == GB_UTM.transform
    np.testing.assert_allclose(ds.x.values, GB_UTM.xs())
    np.testing.assert_allclose(ds.y.values, GB_UTM.ys())
    assert ds.reef_probability.dtype == np.float32 and ds.classification.dtype == np.uint8
    assert ds.reef_probability.data.chunksize == (32, 32)
    p, c, st = expected(prob, cls, np.asarray(states), 32)
    assert "tile_status" not in ds.variables  # the per-tile states are not on the pixel grid ...
    ts = tile_states(store.url)  # ... but reachable, on (tile_y, tile_x)
    assert ts.dims == ("tile_y", "tile_x") and ts.attrs["tile_size"] == 32
    np.testing.assert_array_equal(ts.values, states)
    np.testing.assert_array_equal(ds.tile_state.values, st)
    np.testing.assert_array_equal(ds.classification.values, c)  # pending tiles read as 254 though pixels exist
    np.testing.assert_allclose(ds.reef_probability.values, p, equal_nan=True)
    fin = np.isin(st, [1, 2, 3, 4])
    assert ds.attrs["complete_fraction"] == pytest.approx(fin.mean())
    assert "unfinished" in ds.classification.attrs["flag_meanings"].split()


def test_open_map_from_fsspec_urls(tmp_path):
    gb = GeoBox(Shape(40, 50), Affine(0.01, 0, 10.0, 0, -0.01, 5.0), "EPSG:4326")
    url = f"memory://reefmap-query-{os.getpid()}-{id(tmp_path)}/m.zarr"
    _, prob, cls, states = make_map(url, gb, 16, [[D, P, D, D], [D, D, D, D], [D, D, D, P]])
    ds = open_map(url)
    p, c, _ = expected(prob, cls, np.asarray(states), 16)
    np.testing.assert_array_equal(ds.classification.values, c)
    make_map(tmp_path / "f.zarr", gb, 16, [[D] * 4] * 3)
    ds = open_map(f"file://{tmp_path / 'f.zarr'}")
    assert ds.rio.crs.to_epsg() == 4326 and ds.attrs["complete_fraction"] == 1.0


def test_open_map_and_query_on_gcs(gcs_fs):
    fs, bucket = gcs_fs
    gb = GeoBox(Shape(32, 40), Affine(0.01, 0, 10.0, 0, -0.01, 5.0), "EPSG:4326")
    url = f"gs://{bucket}/maps/m.zarr"
    _, prob, cls, states = make_map(url, gb, 16, [[D, P, D], [D, D, P]], storage_options=STORAGE_OPTIONS)
    p, c, _ = expected(prob, cls, np.asarray(states), 16)
    ds = open_map(url, storage_options=STORAGE_OPTIONS)
    assert ds.rio.crs.to_epsg() == 4326
    np.testing.assert_array_equal(ds.classification.values, c)
    res = query(url, bbox=(10.1, 4.8, 10.3, 4.9), storage_options=STORAGE_OPTIONS)
    np.testing.assert_array_equal(res.classification.values, c[10:20, 10:30])
    with pytest.raises(NotAReefmapStore):
        open_map(f"gs://{bucket}/nothing.zarr", storage_options=STORAGE_OPTIONS)


def test_not_a_reefmap_store(tmp_path):
    import zarr

    with pytest.raises(NotAReefmapStore, match="not a reefmap map"):
        open_map(tmp_path / "missing.zarr")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotAReefmapStore):
        query(tmp_path / "empty", bbox=(0, 0, 1, 1))
    xr.Dataset({"a": (("y", "x"), np.zeros((3, 3)))}).to_zarr(tmp_path / "other.zarr", zarr_format=3, consolidated=False)
    with pytest.raises(NotAReefmapStore, match="not a reefmap map"):
        open_map(tmp_path / "other.zarr")
    zarr.open_array(str(tmp_path / "arr.zarr"), mode="w", shape=(2,), dtype="u1", zarr_format=3)
    with pytest.raises(NotAReefmapStore):
        open_map(tmp_path / "arr.zarr")
    (tmp_path / "x.tif").write_bytes(b"not a map")
    with pytest.raises(NotAReefmapStore):
        open_map(tmp_path / "x.tif")


def test_bbox_in_a_projected_store_covers_every_pixel_inside_the_box(utm_map):
    from pyproj import Transformer

    store, prob, cls, states = utm_map
    box = (-76.99, 23.42, -76.95, 23.46)
    res = query(store.url, bbox=box)
    ds = res
    # every pixel whose centre is inside the lon/lat box is in the result (densified box edges)
    inv = Transformer.from_crs(GB_UTM.crs, "EPSG:4326", always_xy=True)
    xx, yy = np.meshgrid(GB_UTM.xs(), GB_UTM.ys())
    lon, lat = inv.transform(xx, yy)
    inside = (lon >= box[0]) & (lon <= box[2]) & (lat >= box[1]) & (lat <= box[3])
    rows, cols = np.nonzero(inside)
    assert inside.any()
    assert ds.y.values.max() >= GB_UTM.ys()[rows.min()] and ds.y.values.min() <= GB_UTM.ys()[rows.max()]
    assert ds.x.values.min() <= GB_UTM.xs()[cols.min()] and ds.x.values.max() >= GB_UTM.xs()[cols.max()]
    # and the values are the map's
    r0 = int(round((GB_UTM.transform.f - ds.y.values[0]) / 30 - 0.5))
    c0 = int(round((ds.x.values[0] - GB_UTM.transform.c) / 30 - 0.5))
    p, c, st = expected(prob, cls, np.asarray(states), 32)
    sl = (slice(r0, r0 + ds.sizes["y"]), slice(c0, c0 + ds.sizes["x"]))
    np.testing.assert_array_equal(ds.classification.values, c[sl])
    np.testing.assert_array_equal(ds.tile_state.values, st[sl])
    assert geobox_of(res).transform == GB_UTM.window(Window(r0, r0 + 1, c0, c0 + 1)).transform
    assert ds.rio.crs.to_epsg() == 32618
    fin = np.isin(st[sl], [1, 2, 3, 4])
    assert res.attrs["complete_fraction"] == pytest.approx(fin.mean())


def test_pending_is_distinct_from_nodata_and_from_no_reef(utm_map):
    store, prob, cls, states = utm_map
    res = query(store.url)  # the whole map
    ds = res.load()
    st = ds.tile_state.values
    c = ds.classification.values
    assert set(np.unique(c[st == P])) == {UNFINISHED} and set(np.unique(c[st == F])) == {UNFINISHED}
    assert np.isnan(ds.reef_probability.values[st == P]).all()
    fin = np.isin(st, [1, 2, 3, 4])
    assert (c[fin] == 0).any() and (c[fin] == 1).any() and not (c[fin] == UNFINISHED).any()
    assert 0 < res.attrs["complete_fraction"] < 1
    assert res.attrs["unfinished_code"] == UNFINISHED


GB_WORLD = GeoBox(Shape(180, 360), Affine(1.0, 0, -180.0, 0, -1.0, 90.0), "EPSG:4326")


@pytest.fixture(scope="module")
def world_map(tmp_path_factory):
    states = np.full((6, 12), D)
    states[3, 0] = P
    return make_map(tmp_path_factory.mktemp("q") / "world.zarr", GB_WORLD, 32, states)


def test_antimeridian_box_on_a_geographic_map(world_map):
    store, prob, cls, states = world_map
    res = query(store.url, bbox="170,-20,-170,-10")
    ds = res
    np.testing.assert_allclose(ds.x.values, np.arange(170.5, 190.0, 1.0))
    np.testing.assert_allclose(ds.y.values, np.arange(-10.5, -20.0, -1.0))
    p, c, st = expected(prob, cls, states, 32)
    rows = slice(100, 110)
    want = np.concatenate([c[rows, 350:360], c[rows, 0:10]], axis=1)
    np.testing.assert_array_equal(ds.classification.values, want)
    assert geobox_of(res).shape == Shape(10, 20) and geobox_of(res).transform.c == 170.0
    assert ds.rio.transform() == geobox_of(res).transform
    # the western piece lies in a pending tile (row 3, col 0): visible, and counted in complete_fraction
    assert (ds.classification.values[:, 10:] == UNFINISHED).all()
    assert res.attrs["complete_fraction"] == pytest.approx(0.5)


def test_antimeridian_box_on_web_mercator_and_on_a_store_away_from_it(tmp_path):
    from pyproj import Transformer

    fwd = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)
    x0, y0 = fwd.transform(165.0, -5.0)
    x1, y1 = fwd.transform(-165.0, -25.0)
    period = 2 * 20037508.342789244
    res_m = 20000.0
    nx = int(np.ceil((x1 + period - x0) / res_m))
    ny = int(np.ceil((y0 - y1) / res_m))
    gb = GeoBox(Shape(ny, nx), Affine(res_m, 0, x0, 0, -res_m, y0), "EPSG:3857")  # a grid that runs past 180°
    t = TileGrid(gb, 32).shape
    store, prob, cls, states = make_map(tmp_path / "wm.zarr", gb, 32, np.full(tuple(t), D))
    res = query(store.url, bbox=(170, -20, -170, -10))
    xs = res.x.values
    assert np.all(np.diff(xs) > 0) and xs[0] < period / 2 < xs[-1]  # one stretch across 180°
    # a store that runs from -180 to 180 in Web Mercator: two pieces, the eastern one shifted by one period
    gb2 = GeoBox(Shape(64, 200), Affine(period / 200, 0, -period / 2, 0, -period / 200, 0.0), "EPSG:3857")
    store2, prob2, cls2, _ = make_map(tmp_path / "wm2.zarr", gb2, 32, np.full((2, 7), D))
    res2 = query(store2.url, bbox=(170, -20, -170, -10))
    x = res2.x.values
    assert np.allclose(np.diff(x), period / 200) and x[0] < period / 2 < x[-1]
    assert res2.sizes["x"] == 12  # 6 columns each side of 180° (each 1.8° wide)
    np.testing.assert_array_equal(res2.classification.values[:, :6], cls2[res2_rows(res2, gb2), 194:200])
    np.testing.assert_array_equal(res2.classification.values[:, 6:], cls2[res2_rows(res2, gb2), 0:6])
    # a UTM zone 1 store (lon -180..-174): only the western piece intersects it
    fwd1 = Transformer.from_crs("EPSG:4326", "EPSG:32701", always_xy=True)
    ux, uy = fwd1.transform(-177.0, -15.0)
    gb3 = GeoBox(Shape(100, 100), Affine(1000.0, 0, ux - 50000, 0, -1000.0, uy + 50000), "EPSG:32701")
    store3, *_ = make_map(tmp_path / "utm1.zarr", gb3, 32, np.full((4, 4), D))
    res3 = query(store3.url, bbox=(170, -20, -177, -10))
    assert res3.sizes["x"] > 0 and res3.x.values.max() <= gb3.bounds.right


def res2_rows(res, gb):
    r0 = int(round((gb.transform.f - res.y.values[0]) / abs(gb.transform.e) - 0.5))
    return slice(r0, r0 + res.sizes["y"])


def test_geometry_masks_to_the_polygon(world_map, tmp_path):
    from rasterio.features import geometry_mask
    from shapely.geometry import Polygon, mapping

    store, prob, cls, states = world_map
    poly = Polygon([(10, 10), (40, 12), (35, 40), (12, 30), (10, 10)])
    feature = {"type": "Feature", "properties": {}, "geometry": mapping(poly)}
    path = tmp_path / "aoi.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    results = [query(store.url, geometry=g) for g in (poly, mapping(poly), feature, str(path))]
    ds = results[0]
    gb = geobox_of(ds)
    inside = geometry_mask([poly], out_shape=tuple(gb.shape), transform=gb.transform, invert=True)
    for r in results:
        np.testing.assert_array_equal(r.tile_state.values == OUTSIDE, ~inside)
        assert r.attrs["has_geometry"] == 1
    assert ds.rio.transform() == gb.transform and gb.bounds == (10.0, 10.0, 40.0, 40.0)
    assert np.isnan(ds.reef_probability.values[~inside]).all() and (ds.classification.values[~inside] == 0).all()
    p, c, st = expected(prob, cls, states, 32)
    np.testing.assert_array_equal(ds.classification.values[inside], c[50:80, 190:220][inside])
    assert results[0].attrs["complete_fraction"] == 1.0


def test_unknown_layer_and_layer_selection(world_map):
    store, *_ = world_map
    res = query(store.url, bbox=(0, 0, 10, 10), layers=["classification"])
    assert set(res.data_vars) == {"classification", "tile_state"}
    with pytest.raises(UnknownLayer, match="reef_probability, classification"):
        query(store.url, bbox=(0, 0, 10, 10), layers=["reef_prob"])


@pytest.mark.parametrize("bbox, match", [
    ("0,10,5,5", "south"),                      # S > N
    ("0,5,0,10", "zero width"),
    ("0,5,10", "four"),
    ("a,b,c,d", "four numbers"),
    ((300000, 2500000, 310000, 2600000), "lon/lat"),  # projected coordinates
])
def test_malformed_bbox(world_map, bbox, match):
    store, *_ = world_map
    with pytest.raises(BBoxError, match=match):
        query(store.url, bbox=bbox)


def test_bbox_outside_the_map_names_its_extent(utm_map):
    store, *_ = utm_map
    with pytest.raises(BBoxError, match=r"does not intersect the map .*extent is W=-76\.9\d+, S=23\.4\d+"):
        query(store.url, bbox=(10, 10, 11, 11))


@pytest.mark.parametrize("geometry, match", [
    ({"type": "Polygon", "coordinates": [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]}, "Self-intersection"),
    ({"type": "Polygon", "coordinates": [[[300000, 2500000], [310000, 2500000], [310000, 2510000], [300000, 2500000]]]},
     "not lon/lat"),
    ({"type": "Point", "coordinates": [1, 2]}, "Point"),
    ({"type": "Feature", "geometry": None}, "no geometry"),
    ({"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::3857"}},
      "features": []}, "EPSG::3857"),
    ("/nonexistent/aoi.geojson", "does not exist"),
    ({"type": "Polygon", "coordinates": [[[20.1, 20.1], [20.2, 20.1], [20.2, 20.2], [20.1, 20.1]]]}, "no pixel centre"),
])
def test_bad_geometry(world_map, geometry, match):
    store, *_ = world_map
    with pytest.raises(GeometryError, match=match) as e:
        query(store.url, geometry=geometry)
    assert isinstance(e.value, ReefmapError)


def test_a_small_box_reads_only_the_chunks_it_touches(tmp_path, monkeypatch):
    gb = GeoBox(Shape(2048, 2048), Affine(0.01, 0, 100.0, 0, -0.01, 10.0), "EPSG:4326")  # 20°×20°, 16×16 tiles
    states = np.full((16, 16), D)
    states[5, 6] = P
    store, *_ = make_map(tmp_path / "big.zarr", gb, 128, states)
    counter = CountingReads(monkeypatch)
    res = query(store.url, bbox=(107.5, 3.5, 108.5, 4.5))  # a 1°×1° box: rows 550..650, cols 750..850
    assert counter.chunks("reef_probability") == []  # nothing read before computing
    res.load()
    want = [f"{i}/{j}" for i in (4, 5) for j in (5, 6)]
    assert counter.chunks("classification") == [k for k in want if k != "5/6"]  # the pending tile is not read
    assert counter.chunks("reef_probability") == [k for k in want if k != "5/6"]
    assert res.attrs["complete_fraction"] == pytest.approx(1 - (10 * 82) / (100 * 100))  # tile (5,6) covers 10×82 px of it


def test_query_of_a_map_made_by_run(random_bundle, tmp_path):
    import zarr

    from reefmap.execute.runner import run
    from reefmap.sources import memory_reader

    from conftest import textured

    arr = textured((128, 160), seed=7, nodata_box=(0, 40, 0, 60))
    gb = GeoBox(Shape(128, 160), Affine(0.001, 0, -77.5, 0, -0.001, 24.5), "EPSG:4326")
    reader = memory_reader(arr, gb, nodata=0, band_names=["red", "green", "blue"])
    try:
        run(reader, random_bundle.path, tmp_path / "run.zarr", tile=64, client="inprocess", progress=False)
    finally:
        reader.release()
    res = query(tmp_path / "run.zarr", bbox=(-77.45, 24.40, -77.36, 24.45))
    g = zarr.open_group(str(tmp_path / "run.zarr"), mode="r")
    raw = g["classification"][:]
    ds = res
    r0 = int(round((24.5 - ds.y.values[0]) / 0.001 - 0.5))
    c0 = int(round((ds.x.values[0] + 77.5) / 0.001 - 0.5))
    np.testing.assert_array_equal(ds.classification.values, raw[r0:r0 + ds.sizes["y"], c0:c0 + ds.sizes["x"]])
    assert res.attrs["complete_fraction"] >= 1.0 and ds.rio.crs.to_epsg() == 4326


def test_tile_states_read_directly_or_through_a_listing_agree(utm_map, monkeypatch):
    from reefmap.products.mapview import MapInfo, inspect_map

    store, prob, cls, states = utm_map
    mask = np.zeros(np.asarray(states).shape, bool)
    mask[1:5, 2:8] = True
    want = np.where(mask, states, 0)
    for n in (0, 1000):  # 0: always list; 1000: always read tile by tile
        monkeypatch.setattr(MapInfo, "DIRECT_READS", n)
        np.testing.assert_array_equal(inspect_map(store.url).read_states(mask), want)
        np.testing.assert_array_equal(inspect_map(store.url).states, states)


def test_a_polygon_query_stays_lazy(world_map):
    from shapely.geometry import Polygon

    store, prob, cls, states = world_map
    poly = Polygon([(-175, -40), (-100, -35), (-120, -5), (-170, -10), (-175, -40)])  # over the pending tile (3, 0)
    with dask.config.set(scheduler=no_compute):
        ds = query(store.url, geometry=poly)
    frac = ds.attrs["complete_fraction"]
    inside = ds.tile_state.values != OUTSIDE
    fin = np.isin(ds.tile_state.values, [1, 2, 3, 4]) & inside
    assert 0 < frac < 1 and frac == pytest.approx(fin.sum() / inside.sum())
    assert (ds.classification.values[inside & ~fin] == UNFINISHED).all()


def test_the_result_is_a_plain_georeferenced_dataset(utm_map, tmp_path):
    import reefmap

    store, prob, cls, states = utm_map
    ds = reefmap.query(store.url, bbox=(-76.99, 23.42, -76.95, 23.46))
    assert isinstance(ds, xr.Dataset) and ds.rio.crs.to_epsg() == 32618
    for k, v in ds.attrs.items():  # JSON-able scalars, strings, or lists of numbers (no nested dicts)
        assert isinstance(v, (str, int, float, list)) and not isinstance(v, dict), (k, v)
    json.dumps(ds.attrs)
    ds.to_netcdf(tmp_path / "plain.nc")  # xarray's own writer takes it as it is
    x0, x1 = float(ds.x[2]), float(ds.x[10])
    y0, y1 = float(ds.y[12]), float(ds.y[3])
    clipped = ds.rio.clip_box(x0, y0, x1, y1)  # rioxarray works on every variable of the result
    assert clipped.sizes["x"] >= 9 and clipped.sizes["y"] >= 10
    np.testing.assert_array_equal(clipped.classification.values,
                                  ds.classification.sel(x=clipped.x, y=clipped.y).values)
    assert reefmap.stats(store.url, bbox=(-76.99, 23.42, -76.95, 23.46))["pixels"] == ds.sizes["y"] * ds.sizes["x"]
    assert reefmap.tile_states(store.url).shape == np.asarray(states).shape
