"""Reef area statistics (checked against pyproj.Geod geodesic areas) and the multiscale overviews inside a map."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import xarray as xr
from affine import Affine

from reefmap.products.stats import area_model, stats
from reefmap.errors import InvalidParameter, NotAReefmapStore
from reefmap.geometry.grid import GeoBox, Shape, TileGrid, TileIndex
from reefmap.products.overviews import build_overviews
from reefmap.products.mapview import open_map
from reefmap.products.query import query
from map_fixtures import CountingReads, write_map
from reefmap.store.format import UNFINISHED, TileState
from reefmap.store.mapstore import MapStore

P, D = TileState.PENDING, TileState.DONE


def geod_area(west, south, east, north, crs="EPSG:4326", n=1000):
    """Geodesic area (m²) of a box, its edges densified (so parallels/projected lines are followed closely)."""
    from pyproj import Geod, Transformer

    xs = np.concatenate([np.linspace(west, east, n), np.full(n, east), np.linspace(east, west, n), np.full(n, west)])
    ys = np.concatenate([np.full(n, north), np.linspace(north, south, n), np.full(n, south), np.linspace(south, north, n)])
    if crs != "EPSG:4326":
        xs, ys = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(xs, ys)
    return abs(Geod(ellps="WGS84").polygon_area_perimeter(xs, ys)[0])


def cli(argv):
    from reefmap.cli.query_cmds import add_commands

    p = argparse.ArgumentParser(prog="reefmap")
    add_commands(p.add_subparsers(dest="cmd", required=True))
    a = p.parse_args(argv)
    return a.fn(a)


# ------------------------------------------------------------------------------------------------------------
# areas
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gb", [
    GeoBox(Shape(400, 400), Affine(0.0025, 0, 150.0, 0, -0.0025, -19.0), "EPSG:4326"),
    GeoBox(Shape(200, 300), Affine(0.05, 0, 10.0, 0, -0.05, 65.0), "EPSG:4326"),
    GeoBox(Shape(300, 400), Affine(250.0, 0, 16000000.0, 0, -250.0, -2000000.0), "EPSG:3857"),
    GeoBox(Shape(300, 400), Affine(300.0, 0, 200000.0, 0, -300.0, 2700000.0), "EPSG:32618"),
    GeoBox(Shape(500, 400), Affine(30.0, 0, 650000.0, 0, -30.0, 7700000.0), "EPSG:32755"),
], ids=["4326-tropics", "4326-high-lat", "3857", "utm18n-edge", "utm55s"])
def test_pixel_areas_match_geodesic_areas(gb):
    m = area_model(gb)
    total = np.broadcast_to(m.block(slice(0, gb.shape.y), slice(0, gb.shape.x)), gb.shape).sum()
    # blocks add up to the same total (offsets handled)
    parts = sum(np.broadcast_to(m.block(slice(r, min(r + 128, gb.shape.y)), slice(c, min(c + 128, gb.shape.x))),
                                (min(128, gb.shape.y - r), min(128, gb.shape.x - c))).sum()
                for r in range(0, gb.shape.y, 128) for c in range(0, gb.shape.x, 128))
    b = gb.bounds
    ref = geod_area(b.left, b.bottom, b.right, b.top, gb.crs)
    assert total == pytest.approx(ref, rel=1e-7)
    assert parts == pytest.approx(total, rel=1e-9)
    assert m.method == {"EPSG:4326": "geographic", "EPSG:3857": "cylindrical"}.get(gb.crs, "areal-scale")


GB = GeoBox(Shape(400, 400), Affine(0.0025, 0, 150.0, 0, -0.0025, -19.0), "EPSG:4326")  # 1°×1°, 4×4 tiles of 100


def lonlat(r0, r1, c0, c1, gb=GB):
    t = gb.transform
    return t.c + t.a * c0, t.f + t.e * r1, t.c + t.a * c1, t.f + t.e * r0


@pytest.fixture(scope="module")
def reef_map(tmp_path_factory):
    cls = np.ones((400, 400), np.uint8)             # deep water
    prob = np.full((400, 400), 50, np.uint8)        # p = 0.2
    cls[100:300, 100:300], prob[100:300, 100:300] = 3, 200   # a reef block, p = 0.8
    cls[0:10, :], prob[0:10, :] = 0, 255            # a nodata strip
    states = np.full((4, 4), D)
    states[0, 3] = P                                 # a pending tile (top right)
    store, st = write_map(tmp_path_factory.mktemp("s") / "reef.zarr", GB, 100, prob, cls, states)
    return store


def test_reef_area_statistics_against_geod(reef_map):
    s = stats(reef_map.url)
    km2 = 1e-6
    reef = geod_area(*lonlat(100, 300, 100, 300)) * km2
    total = geod_area(*lonlat(0, 400, 0, 400)) * km2
    pending = geod_area(*lonlat(0, 100, 300, 400)) * km2
    nodata = geod_area(*lonlat(0, 10, 0, 300)) * km2
    assert s["reef_area_km2"] == pytest.approx(reef, rel=1e-7)
    assert s["area_km2"] == pytest.approx(total, rel=1e-7)
    assert s["unfinished_area_km2"] == pytest.approx(pending, rel=1e-7)
    assert s["class_area_km2"]["nodata"] == pytest.approx(nodata, rel=1e-7)
    water = total - pending - nodata - reef
    assert s["class_area_km2"]["deep_water"] == pytest.approx(water, rel=1e-7)
    assert s["class_area_km2"]["land"] == 0.0
    assert s["expected_reef_area_km2"] == pytest.approx(0.8 * reef + 0.2 * water, rel=1e-6)
    assert s["mean_reef_probability"] == pytest.approx((0.8 * reef + 0.2 * water) / (reef + water), rel=1e-6)
    assert s["complete_fraction"] == pytest.approx(15 / 16)
    assert s["complete_area_fraction"] == pytest.approx(1 - pending / total, rel=1e-9)
    assert s["area_method"] == "geographic" and json.dumps(s)


def test_stats_of_a_box_and_a_polygon(reef_map):
    from pyproj import Geod
    from shapely.geometry import Polygon

    s = stats(reef_map.url, bbox=(150.25, -19.75, 150.75, -19.25))  # exactly the reef block
    assert s["reef_area_km2"] == pytest.approx(geod_area(150.25, -19.75, 150.75, -19.25) * 1e-6, rel=1e-7)
    assert s["class_area_km2"]["deep_water"] == 0.0 and s["complete_fraction"] == 1.0
    poly = Polygon([(150.3, -19.7), (150.7, -19.6), (150.6, -19.3), (150.35, -19.4)])
    s = stats(reef_map.url, geometry=poly)
    lon, lat = poly.exterior.xy
    ref = abs(Geod(ellps="WGS84").polygon_area_perimeter(lon, lat)[0]) * 1e-6
    assert s["reef_area_km2"] == pytest.approx(ref, rel=3e-3)  # pixel-centre rasterisation of the outline
    assert s["area_km2"] == s["reef_area_km2"] and s["geometry"]


def test_stats_across_the_antimeridian_and_in_projected_maps(tmp_path):
    gb = GeoBox(Shape(180, 360), Affine(1.0, 0, -180.0, 0, -1.0, 90.0), "EPSG:4326")
    cls = np.full((180, 360), 3, np.uint8)
    store, _ = write_map(tmp_path / "w.zarr", gb, 64, np.zeros((180, 360), np.uint8), cls, np.full((3, 6), D))
    s = stats(store.url, bbox=(170, -20, -170, -10))
    ref = (geod_area(170, -20, 180, -10) + geod_area(-180, -20, -170, -10)) * 1e-6
    assert s["reef_area_km2"] == pytest.approx(ref, rel=1e-7) and s["mean_reef_probability"] == 0.0
    gbu = GeoBox(Shape(300, 260), Affine(100.0, 0, 640000.0, 0, -100.0, 7800000.0), "EPSG:32755")
    store, _ = write_map(tmp_path / "u.zarr", gbu, 64, np.zeros((300, 260), np.uint8), np.full((300, 260), 3, np.uint8),
                         np.full((5, 5), D))
    s = stats(store.url)
    b = gbu.bounds
    assert s["area_km2"] == pytest.approx(geod_area(b.left, b.bottom, b.right, b.top, gbu.crs) * 1e-6, rel=1e-7)
    assert s["area_method"] == "areal-scale"


@pytest.fixture(scope="module")
def world_maps(tmp_path_factory, random_bundle):
    """Maps of the real global GeoTIFF world.rgb.tif (EPSG:4326, 512×256 pixels of 0.703125°, -180..180°) and of the
    same picture with one more column past 180° (a global raster that overlaps itself by a column), run on the
    tiles east of 0° only (the western tiles stay pending)."""
    import rasterio

    from reefmap.execute.runner import run
    from reefmap.sources import open_mosaic

    from conftest import shared_data

    src = shared_data("real", "world.rgb.tif")
    tmp = tmp_path_factory.mktemp("world")
    with rasterio.open(src) as f:
        data, profile = f.read(), f.profile
    wide = tmp / "world_plus_one_column.tif"
    profile.update(width=data.shape[2] + 1, tiled=False)
    profile.pop("blockxsize", None), profile.pop("blockysize", None)
    with rasterio.open(wide, "w", **profile) as f:
        f.write(np.concatenate([data, data[:, :, :1]], axis=2))
    maps = []
    for path in (src, wide):
        out = tmp / (path.stem + ".zarr")
        run(open_mosaic(str(path)), random_bundle.path, out, tile=64, bbox=(0, -90, 180, 90), client="inprocess",
            progress=False)
        maps.append(str(out))
    return maps


def test_stats_of_a_box_crossing_the_antimeridian_equal_its_halves_on_a_real_global_map(world_maps):
    for m in world_maps:
        both = stats(m, bbox=(170, -20, -170, -10))
        east, west = stats(m, bbox=(170, -20, 180, -10)), stats(m, bbox=(-180, -20, -170, -10))
        assert both["pixels"] == east["pixels"] + west["pixels"] == 2 * 15 * 15, m
        for k in ("area_km2", "unfinished_area_km2", "reef_area_km2", "expected_reef_area_km2"):
            assert both[k] == pytest.approx(east[k] + west[k], rel=1e-9), (m, k)
        assert both["area_km2"] == pytest.approx(2 * geod_area(169.453125, -20.390625, 180, -9.84375) * 1e-6, rel=1e-7)
        assert east["unfinished_area_km2"] == 0 and west["unfinished_area_km2"] == pytest.approx(both["area_km2"] / 2)
        q = query(m, bbox=(170, -20, -170, -10))
        dx = np.diff(q.x.values)  # one regular grid from 170° to 190°, not past it
        assert q.sizes["x"] == 30 and np.allclose(dx, 0.703125) and 169.45 < q.x.values[0] and q.x.values[-1] < 190.55


def test_cli_stats(reef_map, capsys):
    assert cli(["stats", reef_map.url, "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["reef_area_km2"] > 0 and "deep_water" in s["class_area_km2"]
    assert cli(["stats", reef_map.url, "--bbox=150.25,-19.75,150.75,-19.25"]) == 0
    out = capsys.readouterr().out
    assert "reef area" in out and "complete 100.0%" in out


# ------------------------------------------------------------------------------------------------------------
# overviews
# ------------------------------------------------------------------------------------------------------------
OGB = GeoBox(Shape(300, 420), Affine(0.01, 0, 140.0, 0, -0.01, -10.0), "EPSG:4326")
OT = 32


def layers(shape, seed=0):
    rng = np.random.default_rng(seed)
    prob = rng.integers(0, 251, shape, dtype=np.uint8)
    cls = rng.integers(1, 6, shape, dtype=np.uint8)
    nod = rng.random(shape) < 0.1
    prob[nod], cls[nod] = 255, 0
    return prob, cls


def reference(prob, cls, fin, k):
    """Level k from the map pixels: mean of valid finished probabilities, mode of finished classes (ties → lowest)."""
    f = 2 ** k
    h, w = -(-prob.shape[0] // f), -(-prob.shape[1] // f)

    def blocks(a, fill):
        out = np.full((h * f, w * f), fill, a.dtype)
        out[: a.shape[0], : a.shape[1]] = a
        return out.reshape(h, f, w, f)

    valid = blocks(fin & (prob != 255), False)
    n = valid.sum((1, 3))
    s = (blocks(prob, 0).astype(np.float64) * valid).sum((1, 3))
    p = np.where(n > 0, np.floor(s / np.maximum(n, 1) + 0.5), 255).astype(np.uint8)
    counts = np.stack([(blocks(cls, 0) == c) & blocks(fin, False) for c in range(1, 6)]).sum((2, 4))
    c = np.where(counts.sum(0) > 0, counts.argmax(0) + 1, 0).astype(np.uint8)
    return p, c


@pytest.fixture
def ov_map(tmp_path):
    prob, cls = layers(tuple(OGB.shape))
    states = np.full((10, 14), D)
    states[2, 3] = P
    states[7, 10] = TileState.FAILED
    states[4, 4] = TileState.SKIPPED_LAND
    store, st = write_map(tmp_path / "ov.zarr", OGB, OT, prob, cls, states, written=np.ones(states.shape, bool))
    return store, prob, cls, states


def test_overviews_values_layout_and_root_untouched(ov_map, monkeypatch):
    from reefmap.store.status import status

    store, prob, cls, states = ov_map
    before = xr.open_zarr(store.url, consolidated=False).load()
    status_before = {k: v for k, v in status(store.url).items() if k != "seconds"}
    counter = CountingReads(monkeypatch)
    s = build_overviews(store.url)
    n_fin = int(np.isin(states, [1, 2, 3, 4]).sum())
    # each finished map chunk read once, no unfinished one read
    assert len(counter.chunks("reef_probability")) == n_fin
    assert len([k for k in counter.keys if k.startswith("classification/c/")]) == n_fin
    assert [d["level"] for d in s["levels"]] == [1, 2, 3, 4] and s["full"]
    fin = np.repeat(np.repeat(np.isin(states, [1, 2, 3, 4]), OT, 0), OT, 1)[:300, :420]
    for k in (1, 2, 3, 4):
        lv = xr.open_zarr(store.url, group=f"overviews/{k}", consolidated=False, mask_and_scale=False)
        assert lv.rio.crs.to_epsg() == 4326 and lv.rio.transform() == OGB.transform @ Affine.scale(2 ** k)
        p, c = reference(prob, cls, fin, k)
        np.testing.assert_array_equal(lv.reef_probability.values, p)
        np.testing.assert_array_equal(lv.classification.values, c)
        assert lv.reef_probability.encoding["chunks"] == (OT, OT)
    after = xr.open_zarr(store.url, consolidated=False).load()
    assert set(after.variables) == set(before.variables)
    xr.testing.assert_identical(after, before)
    assert {k: v for k, v in status(store.url).items() if k != "seconds"} == status_before
    grid = TileGrid(OGB, OT)
    MapStore.create_or_open(store.url, grid, {"model": "synthetic"}, {})  # a resumed run still opens the map


def test_query_resolution_uses_the_best_level_and_updates_are_incremental(ov_map, capsys):
    store, prob, cls, states = ov_map
    build_overviews(store.url, levels=3)
    assert query(store.url, bbox=(141, -12, 143, -11), resolution=0.005).attrs["level"] == 0
    assert query(store.url, bbox=(141, -12, 143, -11), resolution=0.02).attrs["level"] == 1
    assert query(store.url, bbox=(141, -12, 143, -11), resolution=0.039).attrs["level"] == 1
    res = query(store.url, bbox=(141, -12, 143, -11), resolution=0.04)
    assert res.attrs["level"] == 2 and res.attrs["resolution"] == pytest.approx(0.04)
    assert query(store.url, resolution=10).attrs["level"] == 3
    ds = open_map(store.url, level=2)
    fin = np.repeat(np.repeat(np.isin(states, [1, 2, 3, 4]), OT, 0), OT, 1)[:300, :420]
    p, c = reference(prob, cls, fin, 2)
    st2 = np.repeat(np.repeat(states, OT // 4, 0), OT // 4, 1)[: p.shape[0], : p.shape[1]]
    fin2 = np.isin(st2, [1, 2, 3, 4])
    np.testing.assert_array_equal(ds.classification.values, np.where(fin2, c, UNFINISHED))
    np.testing.assert_array_equal(ds.tile_state.values, st2)
    # the pending tile gets finished: the overviews lag behind until rebuilt, and say so
    s = MapStore(store.url)
    s.mark(TileIndex(2, 3), TileState.DONE)
    stale = query(store.url, resolution=0.04)
    assert stale.attrs["stale_overview_tiles"] == 1 and (stale.classification.values[16:24, 24:32] == UNFINISHED).all()
    assert open_map(store.url, level=2).attrs["stale_overview_tiles"] == 1
    assert stats(store.url, resolution=0.04)["stale_overview_tiles"] == 1  # the numbers say they are stale
    assert cli(["stats", store.url, "--resolution", "0.04"]) == 0
    assert "WARNING: overview level 2 is stale: 1 tile(s) finished since it was built" in capsys.readouterr().out
    up = build_overviews(store.url, levels=3)
    assert up["tiles_updated"] == 1 and up["chunks_written"] == 2 * 3 and not up["full"]
    assert build_overviews(store.url, levels=3)["up_to_date"]
    states2 = states.copy()
    states2[2, 3] = D
    fin = np.repeat(np.repeat(np.isin(states2, [1, 2, 3, 4]), OT, 0), OT, 1)[:300, :420]
    for k in (1, 2, 3):
        lv = xr.open_zarr(store.url, group=f"overviews/{k}", consolidated=False, mask_and_scale=False)
        p, c = reference(prob, cls, fin, k)
        np.testing.assert_array_equal(lv.reef_probability.values, p)
        np.testing.assert_array_equal(lv.classification.values, c)
    assert query(store.url, resolution=0.04).attrs["stale_overview_tiles"] == 0


def test_a_run_refreshes_the_overviews_built_when_the_map_was_partial(memory_mosaic, random_bundle, tmp_path):
    """The issue's scenario: overviews built at ~17% done, then the run finishes. The numbers at the overview level
    equal the level-0 answer at both moments (before the fix they stayed at 17% complete after the run)."""
    import shutil

    from reefmap.execute.runner import run
    from reefmap.geometry.grid import BBox

    da, _ = memory_mosaic  # 700 x 900 px of 30 m (UTM 18N): 6 x 8 tiles of 128 px
    url = str(tmp_path / "m.zarr")
    t = da.rio.transform()
    part = BBox(t.c, t.f - 256 * 30, t.c + 384 * 30, t.f)  # 2 x 3 tiles of 48: 12.5% of the tiles (17% of pixels)
    run(da, random_bundle.path, url, tile=128, bbox=part, bbox_crs="EPSG:32618", client="inprocess", progress=False)
    build_overviews(url, levels=2)

    def both():
        return stats(url), stats(url, resolution=120)  # level 0; level 2 (120 m pixels)

    def agree(s0, s2):
        assert s2["level"] == 2 and s2["stale_overview_tiles"] == 0
        assert s2["complete_fraction"] == pytest.approx(s0["complete_fraction"], abs=1e-12)
        for k in ("area_km2", "unfinished_area_km2"):
            assert s2[k] == pytest.approx(s0[k], rel=1e-6, abs=1e-9), k

    s0, s2 = both()
    assert 0.15 < s0["complete_fraction"] < 0.2
    agree(s0, s2)
    run(da, random_bundle.path, url, tile=128, client="inprocess", progress=False)
    s0, s2 = both()
    assert s0["complete_fraction"] == 1.0 and s0["unfinished_area_km2"] == 0.0
    agree(s0, s2)
    # the refreshed levels are what a full build writes
    shutil.copytree(url, tmp_path / "full.zarr")
    build_overviews(str(tmp_path / "full.zarr"), levels=2, full=True)
    for k in (1, 2):
        a = xr.open_zarr(url, group=f"overviews/{k}", consolidated=False, mask_and_scale=False)
        b = xr.open_zarr(tmp_path / "full.zarr", group=f"overviews/{k}", consolidated=False, mask_and_scale=False)
        xr.testing.assert_equal(a[["reef_probability", "classification"]], b[["reef_probability", "classification"]])


def test_overview_bad_input(ov_map, tmp_path, capsys):
    store, *_ = ov_map
    with pytest.raises(InvalidParameter, match="1..5"):
        build_overviews(store.url, levels=6)
    with pytest.raises(InvalidParameter, match="1..5"):
        build_overviews(store.url, levels=0)
    with pytest.raises(NotAReefmapStore):
        build_overviews(tmp_path / "nothing.zarr")
    odd, _ = write_map(tmp_path / "odd.zarr", GeoBox(Shape(20, 20), OGB.transform, OGB.crs), 5,
                       np.zeros((20, 20), np.uint8), np.ones((20, 20), np.uint8), np.full((4, 4), D))
    with pytest.raises(InvalidParameter, match="odd"):
        build_overviews(odd.url)
    assert cli(["overviews", store.url, "--levels", "2"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert cli(["overviews", store.url, "--levels", "2"]) == 0
    assert "up to date" in capsys.readouterr().out
