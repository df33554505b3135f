import json

import numpy as np
import pytest
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st

from reefmap.errors import BBoxError, InvalidParameter
from reefmap.geometry.grid import BBox, GeoBox, Shape, TileGrid, Window
from reefmap.planning.plan import Plan, plan_tiles

UTM = GeoBox(Shape(700, 900), Affine(30.0, 0, 200000.0, 0, -30.0, 2700000.0), "EPSG:32618")


@settings(max_examples=60, deadline=None)
@given(ny=st.integers(1, 300), nx=st.integers(1, 300), tile=st.integers(1, 128), halo=st.integers(0, 40))
def test_tiles_cover_every_pixel_once_and_halo_windows_contain_them(ny, nx, tile, halo):
    grid = TileGrid(GeoBox(Shape(ny, nx), Affine(1, 0, 0, 0, -1, 0), "EPSG:3857"), tile)
    count = np.zeros((ny, nx), int)
    for iy in range(grid.shape.y):
        for ix in range(grid.shape.x):
            w = grid.window((iy, ix))
            r = grid.read_window((iy, ix), halo)
            count[w.slices] += 1
            assert r.intersect(w) == w
            assert r.row_start == max(0, w.row_start - halo) and r.col_stop == min(nx, w.col_stop + halo)
    assert (count == 1).all()


def test_geobox_json_and_bounds():
    g = GeoBox.from_json(json.loads(json.dumps(UTM.to_json())))
    assert g == UTM and g.same_grid(UTM)
    assert UTM.bounds == BBox(200000.0, 2700000.0 - 700 * 30, 200000.0 + 900 * 30, 2700000.0)
    assert UTM.xs()[0] == 200015.0 and UTM.ys()[0] == 2699985.0


def test_bbox_window_and_errors():
    gb = UTM.geographic_bounds()
    w = UTM.window_of_bbox(BBox(gb.left, gb.bottom, (gb.left + gb.right) / 2, gb.top))
    assert w.col_start == 0 and w.row_start == 0 and w.row_stop == 700 and 400 < w.col_stop < 500
    with pytest.raises(BBoxError, match="does not intersect the mosaic"):
        UTM.window_of_bbox(BBox(10, 10, 11, 11))
    with pytest.raises(BBoxError, match="S < N"):
        BBox.parse("-78,25,-77,24")
    with pytest.raises(BBoxError, match="four numbers"):
        BBox.parse("a,b,c,d")
    with pytest.raises(BBoxError, match="four finite"):
        BBox.parse("1,2,3")


def test_plan_json_roundtrip_token_and_remaining():
    plan = plan_tiles(UTM, 256, 32, size_multiple=4)
    assert plan.count == 3 * 4 and plan.grid.shape == Shape(3, 4)
    again = Plan.from_json(json.loads(json.dumps(plan.to_json())))
    assert again == plan and again.token == plan.token
    assert plan_tiles(UTM, 256, 32).token == plan.token  # deterministic
    assert plan_tiles(UTM, 256, 36).token != plan.token
    finished = np.zeros((3, 4), bool)
    finished[0, :2] = True
    assert plan.remaining(finished).sum() == 10
    t = plan.task((2, 3))
    assert t.write == Window(512, 700, 768, 900) and t.read == Window(480, 700, 736, 900)
    assert t.core == Window(32, 220, 32, 164)


def test_plan_bbox_selects_touching_tiles_only():
    gb = UTM.geographic_bounds()
    plan = plan_tiles(UTM, 256, 32, bbox=BBox(gb.left, gb.bottom, gb.left + 0.01, gb.bottom + 0.01))
    assert plan.count >= 1 and plan.selection[-1, 0]
    assert not plan.selection[0, -1]


def test_plan_validation_names_the_fix():
    with pytest.raises(InvalidParameter, match="use tile 1024"):
        plan_tiles(UTM, 1022, 32, size_multiple=4)
    with pytest.raises(InvalidParameter, match="use halo 32"):
        plan_tiles(UTM, 1024, 30, size_multiple=4)
    with pytest.raises(InvalidParameter):
        plan_tiles(UTM, 0, 32)


# -- one bbox -> tiles rule, the CRS normaliser, the GeoJSON reader ----------------------------------------------
def test_tiles_touching_splits_a_box_crossing_the_antimeridian():
    from reefmap.geometry.webmercator import web_mercator_quads

    g = web_mercator_quads(9, 256, -30, 30)  # 512 tile columns round the world
    sel = g.tiles_touching("170,-20,-170,-10")  # W > E: 20 degrees across the antimeridian
    cols = np.nonzero(sel.any(axis=0))[0]
    assert set(cols) == set(range(0, 15)) | set(range(497, 512))  # both ends of the grid, nothing between
    a, b = g.geobox.bbox_pieces("170,-20,-170,-10")
    assert a.window.col_stop == g.geobox.shape.x and b.window.col_start == 0
    assert a.x_shift == 0 and b.x_shift == pytest.approx(2 * 20037508.342789244)
    assert set(np.nonzero(g.tiles_touching("-170,-20,170,-10").any(axis=0))[0]) == set(range(14, 498))  # W < E: the long way
    with pytest.raises(BBoxError, match="both ends"):
        g.geobox.window_of_bbox(BBox(170, -20, -170, -10))


def test_bbox_pieces_take_each_longitude_once_on_a_grid_past_the_globe():
    # 7201 columns of 0.05° from -180.025°: the first and the last column both straddle ±180°
    gb = GeoBox(Shape(3600, 7201), Affine(0.05, 0, -180.025, 0, -0.05, 90.0), "EPSG:4326")
    (p,) = gb.bbox_pieces("170,-20,180,-10")
    assert (p.window.col_start, p.window.col_stop, p.x_shift) == (7000, 7201, 0)
    a, b = gb.bbox_pieces("170,-20,-170,-10", contiguous=True)  # the west end continues after the last column
    assert (a.window.col_start, a.window.col_stop, b.window.col_start, b.window.col_stop) == (7000, 7201, 1, 201)
    assert b.x_shift == 360
    # a grid from 0° to 360°: the pieces' shifts put them back where the box lies
    a, b = GeoBox(Shape(3600, 7200), Affine(0.05, 0, 0.0, 0, -0.05, 90.0), "EPSG:4326").bbox_pieces("-10,-20,10,-10")
    assert (a.window.col_start, a.x_shift, b.window.col_stop, b.x_shift) == (7000, -360, 200, 0)


def test_plan_bbox_uses_the_one_rule():
    gb = UTM.geographic_bounds()
    box = BBox(gb.left, gb.bottom, (gb.left + gb.right) / 2, gb.top)
    plan = plan_tiles(UTM, 256, 0, bbox=box)
    np.testing.assert_array_equal(plan.selection, TileGrid(UTM, 256).tiles_touching(box))
    # a box in the grid's own CRS whose edges lie on pixel edges (up to float noise) is not widened
    assert TileGrid(UTM, 100).tiles_touching(BBox(200000.0, 2700000.0 - 3000.0, 200000.0 + 3000.0 + 1e-9, 2700000.0),
                                              "EPSG:32618").sum() == 1
    with pytest.raises(BBoxError, match="does not intersect the mosaic"):
        plan_tiles(UTM, 256, 0, bbox=BBox(10, 10, 11, 11))


def test_norm_crs():
    from reefmap.geometry.crs import norm_crs, wrap_period

    assert norm_crs("epsg:4326") == norm_crs(4326) == norm_crs("urn:ogc:def:crs:EPSG::4326") == "EPSG:4326"
    assert wrap_period("EPSG:4326") == 360.0 and wrap_period("EPSG:32618") is None
    assert wrap_period("EPSG:3857") == pytest.approx(2 * 20037508.342789244)


def test_read_geojson_crs_rules(tmp_path):
    from reefmap.errors import GeometryError
    from reefmap.geometry.vector import read_geojson

    poly = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}
    fc = {"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": poly}]}
    shapes, crs = read_geojson(fc)
    assert len(shapes) == 1 and crs == "EPSG:4326"  # RFC 7946
    legacy = {**fc, "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::3857"}}}
    assert read_geojson(legacy)[1] == "EPSG:3857"
    assert read_geojson(legacy, crs="EPSG:32618")[1] == "EPSG:32618"  # crs= wins
    crs84 = {**fc, "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:OGC:1.3:CRS84"}}}
    assert read_geojson(json.dumps(crs84))[1] == "EPSG:4326"
    p = tmp_path / "aoi.geojson"
    p.write_text(json.dumps(fc))
    assert read_geojson(p)[0][0].equals(shapes[0])
    assert read_geojson({"type": "FeatureCollection", "features": []})[0] == []
    with pytest.raises(GeometryError, match="EPSG::3857"):
        read_geojson(legacy, expect_crs="EPSG:4326")
    with pytest.raises(GeometryError, match="does not exist"):
        read_geojson(tmp_path / "nope.geojson")


# -- options and configs --------------------------------------------------------------------------------------
def test_options_table_env_and_set_options(monkeypatch):
    from reefmap.options import OPTIONS, get_option, set_options

    assert all(o.env.startswith("REEFMAP_") and o.meaning for o in OPTIONS.values())
    monkeypatch.delenv("REEFMAP_INFERENCE_THREADS", raising=False)
    assert get_option("inference_threads") is None
    monkeypatch.setenv("REEFMAP_INFERENCE_THREADS", "3")
    assert get_option("inference_threads") == get_option("REEFMAP_INFERENCE_THREADS") == 3
    with set_options(inference_threads=2):
        assert get_option("inference_threads") == 2
        with set_options(inference_threads=None):  # None: the default, whatever the environment says
            assert get_option("inference_threads") is None
        assert get_option("inference_threads") == 2
    assert get_option("inference_threads") == 3
    monkeypatch.setenv("REEFMAP_INFERENCE_THREADS", "zero")
    with pytest.raises(InvalidParameter, match="REEFMAP_INFERENCE_THREADS"):
        get_option("inference_threads")
    with pytest.raises(InvalidParameter, match="positive"):
        set_options(inference_threads=0).__enter__()
    with pytest.raises(InvalidParameter, match="known options"):
        get_option("colour")
    monkeypatch.setenv("REEFMAP_PROFILES", f"/a{__import__('os').pathsep}/b")
    assert get_option("profiles") == ("/a", "/b")


def test_config_path_rule_and_checks(tmp_path):
    from reefmap.config import RunConfig, resolve_path

    assert resolve_path("m.zarr", tmp_path) == str(tmp_path / "m.zarr")
    assert resolve_path("../m.zarr", tmp_path / "c") == str(tmp_path / "m.zarr")
    assert resolve_path("/abs/m.zarr", tmp_path) == "/abs/m.zarr"
    assert resolve_path("gs://b/m.zarr", tmp_path) == "gs://b/m.zarr"
    assert resolve_path(None, tmp_path) is None
    cfg = tmp_path / "run.yaml"
    cfg.write_text("mosaic: scene.tif\nout: sub/../m.zarr\nhalo: 0\n")
    rc = RunConfig.from_yaml(cfg)
    assert rc.mosaic == (str(tmp_path / "scene.tif"),) and rc.out == str(tmp_path / "m.zarr") and rc.halo == 0
    with pytest.raises(InvalidParameter, match="tile must be a whole number positive"):
        RunConfig(("a.tif",), "m.zarr", tile=0)
