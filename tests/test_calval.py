"""reefmap calval: metrics against hand-computed confusion matrices, truth and baselines on other grids and as
polygons, the report directory, and the CLI's answers to bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling

import reefmap
from reefmap.classes import CLASSES, REEF
from reefmap.cli.main import main
from reefmap.errors import TruthError
from reefmap.geometry.grid import GeoBox
from reefmap.products.calval import Truth, calval, scheme_of
from reefmap.products.calval_metrics import Tally
from reefmap.synthetic.reader import synthetic_truth

CODES, NAMES = tuple(CLASSES.values()), tuple(CLASSES)
SEED, SIZE = 5, 256  # this synthetic scene has no cloud: an empty class in the truth


# ------------------------------------------------------------------------------------------------------------
# metrics on tiny arrays
# ------------------------------------------------------------------------------------------------------------
def test_metrics_match_a_hand_computed_confusion_matrix_and_leave_empty_classes_undefined():
    # deep_water 1, shallow 2, reef 3, land 4 (never true, predicted once), cloud 5 (never true nor predicted)
    truth = np.array([[1, 1, 1, 2], [2, 3, 3, 3], [0, 3, 2, 1]], np.uint8)
    pred = np.array([[1, 1, 2, 2], [3, 3, 3, 4], [1, 1, 2, 1]], np.uint8)
    evaluated = truth != 0
    m = Tally(CODES).add(truth, pred, evaluated, np.ones((3, 1)), (REEF,)).metrics(NAMES, (REEF,))
    expected = np.zeros((5, 5), int)
    for t, p in zip(truth[evaluated], pred[evaluated]):
        expected[t - 1, p - 1] += 1
    assert m["confusion"] == expected.tolist()
    assert expected.tolist() == [[3, 1, 0, 0, 0], [0, 2, 1, 0, 0], [1, 0, 2, 1, 0], [0] * 5, [0] * 5]
    dw, reef, land, cloud = (m["per_class"][k] for k in ("deep_water", "reef", "land", "cloud"))
    assert dw["precision"] == pytest.approx(3 / 4) and dw["recall"] == pytest.approx(3 / 4)
    assert dw["f1"] == pytest.approx(3 / 4) and dw["iou"] == pytest.approx(3 / 5)
    assert reef["precision"] == pytest.approx(2 / 3) and reef["recall"] == pytest.approx(2 / 4)
    assert reef["f1"] == pytest.approx(2 * (2 / 3) * (2 / 4) / (2 / 3 + 2 / 4)) and reef["iou"] == pytest.approx(2 / 5)
    assert m["overall_accuracy"] == pytest.approx(7 / 11)
    # land: never true but predicted once → precision 0 (a defined, wrong prediction), recall/F1/IoU undefined
    assert land["precision"] == 0.0 and land["recall"] is None and land["f1"] is None and land["iou"] is None
    assert all(cloud[k] is None for k in ("precision", "recall", "f1", "iou")) and cloud["support"] == 0
    assert m["macro_f1"] == pytest.approx(np.mean([dw["f1"], m["per_class"]["shallow"]["f1"], reef["f1"]]))
    assert m["reef"]["f1"] == pytest.approx(reef["f1"]) and m["calibration"] is None


def test_area_weighted_f_and_areas_by_hand():
    # two true reefs (A: 4 px on the left, B: 2 px on the right); one predicted reef blob covers A plus 2 non-reef
    # pixels; B is missed. Pixel areas differ by row.
    truth = np.array([[3, 3, 1, 1, 1, 3],
                      [3, 3, 1, 1, 1, 3],
                      [1, 1, 1, 1, 1, 1]], np.uint8)
    pred = np.array([[3, 3, 3, 1, 1, 1],
                     [3, 3, 3, 1, 1, 1],
                     [1, 1, 1, 1, 1, 1]], np.uint8)
    area = np.array([[1.0], [2.0], [3.0]]) * 1e6
    m = Tally(CODES).add(truth, pred, np.ones_like(truth, bool), area, (REEF,)).metrics(NAMES, (REEF,))["reef"]
    a_area, b_area = 1 + 1 + 2 + 2, 1 + 2                      # km²
    f_a = 2 * (6 / 9) * 1.0 / (6 / 9 + 1.0)                     # precision 6/9 (blob: 9 km², 6 reef), recall 1
    assert m["reef_objects"] == 2
    assert m["area_weighted_f"] == pytest.approx((a_area * f_a + b_area * 0.0) / (a_area + b_area))
    assert m["area_weighted_recall"] == pytest.approx(a_area / (a_area + b_area))
    assert m["area_weighted_precision"] == pytest.approx(6 / 9)  # B has no overlapping prediction: not averaged
    assert m["area_true_km2"] == pytest.approx(9) and m["area_mapped_km2"] == pytest.approx(9)
    assert m["area_correct_km2"] == pytest.approx(6)


def test_ece_by_hand():
    truth = np.array([[3, 1, 3, 1, 3]], np.uint8)
    pred = np.array([[3, 1, 3, 3, 1]], np.uint8)
    prob = np.array([[0.95, 0.01, 0.9, 0.99, np.nan]], np.float32)  # the NaN pixel has no probability
    m = Tally(CODES).add(truth, pred, np.ones_like(truth, bool), np.ones((1, 1)), (REEF,), prob=prob).metrics(NAMES, (REEF,))
    # bins: 0.01 → bin 0 (reef fraction 0); 0.9, 0.95, 0.99 → bin 13 (0.9), 14, 14
    ece = (abs(0.01 - 0) + abs(0.9 - 1) + abs((0.95 + 0.99) - 1)) / 4
    assert m["calibration"]["ece"] == pytest.approx(ece, abs=1e-6)
    assert m["calibration"]["pixels"] == 4


# ------------------------------------------------------------------------------------------------------------
# a real map
# ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synth_map(tmp_path_factory):
    d = tmp_path_factory.mktemp("calval")
    store = str(d / "map.zarr")
    reefmap.run(reefmap.synthetic_mosaic(SIZE, seed=SEED, chunks=SIZE), None, store, client="inprocess", tile=SIZE)
    return store, synthetic_truth(SIZE, seed=SEED, chunks=SIZE)


def reef_f1(truth: np.ndarray, pred: np.ndarray) -> float:
    ok = (truth != 0) & (pred != 0)
    t, p = truth[ok] == REEF, pred[ok] == REEF
    return 2 * np.sum(t & p) / (np.sum(t) + np.sum(p))


def test_a_synthetic_map_validated_against_its_truth(synth_map, tmp_path):
    store, truth = synth_map
    r = reefmap.calval({"demo": store}, truth, tmp_path / "rep")
    m = r["regions"][0]["products"]["demo"]
    pred = reefmap.open_map(store).classification.values
    expected = reef_f1(truth.values, pred)
    assert m["reef"]["f1"] == pytest.approx(expected, rel=1e-12)
    assert 0.3 < expected <= 1.0
    assert m["per_class"]["cloud"]["support"] == 0 and m["per_class"]["cloud"]["f1"] is None
    assert m["pixels"]["evaluated"] == np.count_nonzero((truth.values != 0) & (pred != 0))
    assert 0 <= m["calibration"]["ece"] <= 1
    files = sorted(p.name for p in (tmp_path / "rep").iterdir())
    assert files == sorted(r["files"]) and {"report.json", "report.md", "regions.png"} <= set(files)
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["regions"][0]["products"]["demo"]["reef"] == m["reef"]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Ranking by `reef.f1`" in md and f"{expected:.3f}" in md
    for f in files:
        if f.endswith(".png"):
            assert (tmp_path / "rep" / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def write_tif(path, arr, gb: GeoBox, nodata):
    with rasterio.open(path, "w", driver="GTiff", width=gb.shape.x, height=gb.shape.y, count=1, dtype=arr.dtype,
                       crs=gb.crs, transform=gb.transform, nodata=nodata) as f:
        f.write(arr, 1)


def lonlat_copy(da, path, res_deg):
    """``da`` reprojected nearest-neighbour onto a lon/lat grid, written as a GeoTIFF; returns its array."""
    out = da.rio.write_nodata(0).rio.reproject("EPSG:4326", resolution=res_deg, resampling=Resampling.nearest, nodata=0)
    out.rio.to_raster(path)
    return out


def test_truth_on_another_grid_and_crs_is_reprojected(synth_map, tmp_path):
    store, truth = synth_map
    lonlat_copy(truth, tmp_path / "truth4326.tif", 0.0015)  # ≈ 150 m pixels: finer than the 300 m map
    info = reefmap.products.mapview.inspect_map(store)
    codes, valid, _ = Truth(str(tmp_path / "truth4326.tif")).read(info.grid.geobox, scheme_of(store))
    orig = truth.values
    both = valid & (orig != 0)
    assert both.mean() > 0.9
    assert np.mean(codes[both] == orig[both]) > 0.97  # nearest neighbour both ways: only edges may differ
    r = calval({"demo": store}, str(tmp_path / "truth4326.tif"), tmp_path / "rep", pictures=False)
    assert r["regions"][0]["products"]["demo"]["reef"]["f1"] == pytest.approx(
        reef_f1(np.where(valid, codes, 0), reefmap.open_map(store).classification.values), rel=1e-12)


def test_polygon_truth_is_rasterised_with_names_or_codes(synth_map, tmp_path):
    store, _ = synth_map
    gb = reefmap.products.mapview.inspect_map(store).grid.geobox
    w, s, e, n = gb.geographic_bounds()
    dx, dy = (e - w) / 10, (n - s) / 10
    box = lambda x0, y0, x1, y1: {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}
    fc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"cls": "reef"}, "geometry": box(w + dx, s + dy, w + 3 * dx, s + 3 * dy)},
        {"type": "Feature", "properties": {"cls": 1}, "geometry": box(w + 5 * dx, s + 5 * dy, w + 8 * dx, s + 8 * dy)}]}
    path = tmp_path / "truth.geojson"
    path.write_text(json.dumps(fc))
    codes, valid, objects = Truth(str(path), attribute="cls").read(gb, scheme_of(store))
    assert set(np.unique(codes[valid])) == {1, REEF}
    assert 0.05 < valid.mean() < 0.3 and np.all(codes[~valid] == 0)
    assert set(np.unique(objects)) == {0, 1} and np.array_equal(objects > 0, valid & (codes == REEF))
    r = calval([store], str(path), tmp_path / "rep", truth_attribute="cls", pictures=False)
    assert r["regions"][0]["products"]["map"]["pixels"]["evaluated"] == int(valid.sum())
    gpkg = write_gpkg(tmp_path / "truth.gpkg", fc)
    codes2, valid2, objects2 = Truth(gpkg, attribute="cls").read(gb, scheme_of(store))
    assert np.array_equal(codes2, codes) and np.array_equal(valid2, valid) and np.array_equal(objects2, objects)
    fc["features"][1]["properties"]["cls"] = "seagrass"
    path.write_text(json.dumps(fc))
    with pytest.raises(TruthError, match=r"\['seagrass'\].*not in the class scheme"):
        Truth(str(path), attribute="cls").read(gb, scheme_of(store))


def write_gpkg(path, fc: dict) -> str:
    """A minimal GeoPackage (one feature table, EPSG:4326) written with sqlite3: the binary header + WKB."""
    import sqlite3
    import struct

    import shapely

    con = sqlite3.connect(path)
    con.executescript("""
        CREATE TABLE gpkg_spatial_ref_sys (srs_name TEXT, srs_id INTEGER PRIMARY KEY, organization TEXT,
            organization_coordsys_id INTEGER, definition TEXT, description TEXT);
        INSERT INTO gpkg_spatial_ref_sys VALUES ('WGS 84', 4326, 'EPSG', 4326, 'GEOGCS["WGS 84"]', '');
        CREATE TABLE gpkg_geometry_columns (table_name TEXT, column_name TEXT, geometry_type_name TEXT,
            srs_id INTEGER, z INTEGER, m INTEGER);
        INSERT INTO gpkg_geometry_columns VALUES ('labels', 'geom', 'POLYGON', 4326, 0, 0);
        CREATE TABLE labels (fid INTEGER PRIMARY KEY, geom BLOB, cls TEXT);""")
    for f in fc["features"]:
        g = shapely.geometry.shape(f["geometry"])
        env = struct.pack("<4d", g.bounds[0], g.bounds[2], g.bounds[1], g.bounds[3])  # envelope kind 1: 32 bytes
        blob = b"GP" + bytes([0, 0b011]) + struct.pack("<i", 4326) + env + shapely.to_wkb(g, byte_order=1)
        con.execute("INSERT INTO labels (geom, cls) VALUES (?, ?)", (blob, str(f["properties"]["cls"])))
    con.commit()
    con.close()
    return str(path)


def test_baselines_on_another_grid_and_a_buffered_reef_layer(synth_map, tmp_path):
    store, truth = synth_map
    pred = reefmap.open_map(store).classification
    lonlat_copy(pred.rio.write_crs(truth.rio.crs), tmp_path / "coarse.tif", 0.006)  # ≈ 600 m, another CRS
    gb = reefmap.products.mapview.inspect_map(store).grid.geobox
    w, s, e, n = gb.geographic_bounds()
    line = {"type": "LineString", "coordinates": [[w + 0.1 * (e - w), (s + n) / 2], [w + 0.6 * (e - w), (s + n) / 2]]}
    (tmp_path / "reefs.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": line}]}))
    r = calval({"demo": store}, truth, tmp_path / "rep",
               baselines={"coarse": str(tmp_path / "coarse.tif"), "lines": str(tmp_path / "reefs.geojson")},
               buffer_m=1500, regions=["all=" + ",".join(map(str, (w, s, e, n)))])
    m = r["regions"][0]["products"]
    assert m["coarse"]["calibration"] is None and m["lines"]["calibration"] is None
    assert 0.5 < m["coarse"]["overall_accuracy"] < 1.0  # a coarsened copy of the map: close, not equal
    assert m["coarse"]["pixels"]["evaluated"] > 0.9 * m["demo"]["pixels"]["evaluated"]
    assert m["lines"]["classes"] == ["not_reef", "reef"]
    # the buffered line is ≈ 3 km wide (10 px of 300 m) along half the map's width
    assert 8 * 0.5 * SIZE < m["lines"]["reef"]["predicted"] < 12 * 0.5 * SIZE
    assert [row["product"] for row in r["ranking"]][0] == "demo"
    assert "excerpt_all.png" in r["files"]


# ------------------------------------------------------------------------------------------------------------
# the command line and bad input
# ------------------------------------------------------------------------------------------------------------
def run_cli(capsys, *argv):
    rc = main(["calval", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_writes_a_report_from_the_synthetic_truth(synth_map, tmp_path, capsys):
    store, _ = synth_map
    rc, out, err = run_cli(capsys, "--map", f"demo={store}", "--truth", "synthetic", "--out", str(tmp_path / "r"),
                           "--no-pictures")
    assert rc == 0, err
    assert "1. demo: reef.f1 0." in out
    assert json.loads((tmp_path / "r" / "report.json").read_text())["ranking"][0]["product"] == "demo"


@pytest.mark.parametrize("case", ["region_outside", "unreadable", "missing", "codes", "empty_region", "no_crs"])
def test_cli_bad_input_one_line_errors(synth_map, tmp_path, capsys, case):
    store, truth = synth_map
    gb = reefmap.products.mapview.inspect_map(store).grid.geobox
    tif = tmp_path / "truth.tif"
    args = ["--map", store, "--out", str(tmp_path / "r"), "--truth", str(tif)]
    if case == "region_outside":
        write_tif(tif, truth.values, gb, 0)
        args += ["--region", "far=10,10,11,11"]
        expect = "validation region 'far'.*does not intersect"
    elif case == "unreadable":
        tif.write_bytes(b"II*\x00 this is not a GeoTIFF")
        expect = "cannot be read"
    elif case == "missing":
        expect = "does not exist"
    elif case == "codes":
        bad = truth.values.copy()
        bad[:3, :3] = 7
        bad[5, 5] = 42
        write_tif(tif, bad, gb, 0)
        expect = r"codes not in the class scheme: 7 \(9 px\), 42 \(1 px\)"
    elif case == "no_crs":
        with rasterio.open(tif, "w", driver="GTiff", width=SIZE, height=SIZE, count=1, dtype="uint8",
                           transform=gb.transform, nodata=0) as f:
            f.write(truth.values, 1)
        expect = "has no CRS; assign one"
    else:  # a region inside the map where the truth has no data
        arr = truth.values.copy()
        arr[:, : SIZE // 2] = 0
        write_tif(tif, arr, gb, 0)
        w, s, e, n = gb.geographic_bounds()
        args += ["--region", f"west={w},{s},{w + 0.3 * (e - w)},{n}"]
        expect = "region 'west'.*has no truth pixel"
    rc, out, err = run_cli(capsys, *args)
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("reefmap: error: ")
    import re

    assert re.search(expect, err), err
    assert not (tmp_path / "r" / "report.json").exists()


def test_report_numbers_too_small_for_three_decimals_keep_their_digits():
    """A well-calibrated map's ECE (0.0004 on the demo) was printed as 0.000, which reads as perfect calibration."""
    from reefmap.products.calval_report import fmt

    assert fmt(0.0004336886773149488) == "0.00043" and fmt(-0.0004) == "-0.0004"
    assert fmt(0.0) == "0.000" and fmt(0.8) == "0.800" and fmt(0.0005) == "0.001" and fmt(0.12, 2) == "0.12"
    assert fmt(None) == "n/a" and fmt(1234) == "1,234"
