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
