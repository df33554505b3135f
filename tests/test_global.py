"""Global runs: the quad grid, candidate masks, ``reefmap plan``, the batch job (stop, resume, concurrency), the
progress map. Fast (no SLURM, no GPU): the simulated runs use the zoom-15 quad *tiles* at zoom 9 with 64 px tiles."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, shared_data
from reefmap.errors import InvalidParameter, ReefmapError
from reefmap.config import GlobalRunConfig, grid_from_config
from reefmap.geometry.grid import TileGrid, TileIndex, tile_of_lonlat
from reefmap.geometry.webmercator import WEB_MERCATOR_HALF, quad_lattice, tile_geobox, web_mercator_quads

REEFS = ("natural-earth", "ne_10m_reefs.json")
GBR = (146.8, -18.6)  # central Great Barrier Reef, off Townsville
BAHAMAS = (-77.1, 25.2)  # Natural Earth reef line east of New Providence
SAHARA = (10.0, 23.0)
MID_PACIFIC = (-140.0, 0.0)
CARIBBEAN = "-90,9,-59,28"  # 242 tiles with a 25 km buffer (the benchmark's region)
BAHAMAS_CUBA = "-80,20,-72,27.5"  # 134 tiles with a 25 km buffer, 66 with 10 km (the tests' regions)


def _expected_quad(lon, lat, zoom_quads=2048):
    """Global quad (row from the north edge, col from -180°) by the slippy-map formula, independent of gridspec."""
    col = math.floor((lon + 180.0) / 360.0 * zoom_quads)
    merc = math.log(math.tan(math.pi / 4 + math.radians(lat) / 2))
    row = math.floor((1.0 - merc / math.pi) / 2.0 * zoom_quads)
    return row, col


# -- the quad grid --------------------------------------------------------------------------------------------
def test_zoom15_quad_grid_numbers():
    t0 = time.perf_counter()
    g = web_mercator_quads(15, 4096, -30, 30)
    assert time.perf_counter() - t0 < 1.0
    assert isinstance(g, TileGrid)
    assert tuple(g.shape) == (360, 2048)  # 180 quad rows each side of the equator touch |lat| <= 30°
    assert abs(g.count - 733_000) / 733_000 < 0.01
    assert g.geobox.crs == "EPSG:3857"
    assert g.geobox.resolution_x == pytest.approx(156543.03392804097 / 2**15)
    assert g.geobox.resolution_x == pytest.approx(4.7773, abs=1e-4)
    assert g.geobox.resolution_y == -g.geobox.resolution_x
    assert g.geobox.shape.x == 2**15 * 256 == 8_388_608  # round the world
    t = g.geobox.transform
    quad_m = t.a * 4096
    assert t.c == pytest.approx(-WEB_MERCATOR_HALF)
    rows_from_top = (WEB_MERCATOR_HALF - t.f) / quad_m
    assert rows_from_top == pytest.approx(round(rows_from_top), abs=1e-9)  # on the global lattice
    lat = quad_lattice(g)
    assert lat is not None and lat.zoom == 15 and lat.row_offset == 844 and lat.quads_x == 2048
    b = g.geobox.geographic_bounds()
    assert b.bottom <= -30 < -29.8 and 29.8 < 30 <= b.top  # the first/last rows touch ±30° and no more
    for lon, lat_ in (GBR, BAHAMAS, (0.01, 0.01), (-0.01, -0.01), (179.99, 29.9)):
        idx = tile_of_lonlat(g, lon, lat_)
        assert lat.global_quad(idx) == _expected_quad(lon, lat_)
    assert tile_of_lonlat(g, 0.0, 45.0) is None  # outside the ±30° rows
    assert quad_lattice(g).quad_id(TileIndex(0, 0)) == f"0-{2047 - 844}"


def test_quad_grid_never_allocates_per_pixel():
    import tracemalloc

    tracemalloc.start()
    g = web_mercator_quads(20, 4096, -60, 60)  # 268 million px round the world
    tg = tile_geobox(g)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert g.geobox.shape.x == 2**28 and tg.shape == g.shape
    assert peak < 5_000_000


def test_grid_from_config_variants_and_errors():
    a = grid_from_config({"kind": "web_mercator_quads", "zoom": 11, "tile": 256})
    assert tuple(a.shape) == (360, 2048) and quad_lattice(a).zoom == 11
    assert grid_from_config({"zoom": 11, "tile": 256, "lat_min": -30, "lat_max": 30}) == a
    e = grid_from_config({"crs": "EPSG:32618", "resolution": 30, "bounds": [200000, 2600000, 230000, 2620000], "tile": 256})
    assert e.geobox.crs == "EPSG:32618" and tuple(e.geobox.shape) == (667, 1000) and tuple(e.shape) == (3, 4)
    with pytest.raises(InvalidParameter, match="does not divide"):
        web_mercator_quads(15, 3000)
    with pytest.raises(InvalidParameter, match="kind"):
        grid_from_config({"kind": "hexagons"})
    with pytest.raises(InvalidParameter, match="unknown keys"):
        grid_from_config({"zoom": 15, "tiles": 4096})
    with pytest.raises(InvalidParameter, match="missing"):
        grid_from_config({"crs": "EPSG:3857", "resolution": 10})
    with pytest.raises(InvalidParameter, match="lat_min"):
        web_mercator_quads(15, 4096, 30, -30)


# -- masks ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def z15():
    return web_mercator_quads(15, 4096, -30, 30)


@pytest.fixture(scope="module")
def reef_mask(z15):
    from reefmap.planning.masks import tile_mask

    return tile_mask(z15, shared_data(*REEFS), buffer_km=10, info=True)


def test_reef_line_mask_keeps_reefs_drops_desert_and_open_ocean(z15, reef_mask):
    m, info = reef_mask
    assert m.shape == (360, 2048) and m.dtype == bool
    assert 4300 <= m.sum() <= 4800  # 4549 with the pinned stack (0.6% of the quads)
    assert info.tiles_kept == m.sum() and info.features == 1043 and info.kind == "vector"
    for lon, lat in (GBR, BAHAMAS):
        assert m[tile_of_lonlat(z15, lon, lat)], (lon, lat)
    for lon, lat in (SAHARA, MID_PACIFIC):
        assert not m[tile_of_lonlat(z15, lon, lat)], (lon, lat)
    assert info.seconds < 10


def test_reef_line_mask_is_stable_and_grows_with_the_buffer(z15, reef_mask):
    from reefmap.planning.masks import tile_mask

    again = tile_mask(z15, shared_data(*REEFS), buffer_km=10)
    assert np.array_equal(again, reef_mask[0])
    m0 = tile_mask(z15, shared_data(*REEFS), buffer_km=0)
    m25 = tile_mask(z15, shared_data(*REEFS), buffer_km=25)
    assert (m0 <= reef_mask[0]).all() and (reef_mask[0] <= m25).all()
    assert m0.sum() < reef_mask[0].sum() < m25.sum()


def _point_geojson(path, lon, lat, crs_member=None):
    doc = {"type": "FeatureCollection",
           "features": [{"type": "Feature", "properties": {}, "geometry": {"type": "Point", "coordinates": [lon, lat]}}]}
    if crs_member:
        doc["crs"] = crs_member
    Path(path).write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("lat", [0.0, 28.0])
def test_buffer_is_ground_kilometres_at_any_latitude(tmp_path, lat):
    """30 km around a point spans 30 / cos(lat) Mercator km: count 1-km Mercator tiles across it."""
    from reefmap.geometry.webmercator import mercator_y
    from reefmap.planning.masks import tile_mask

    y = mercator_y(lat)
    grid = grid_from_config({"crs": "EPSG:3857", "resolution": 1000, "tile": 1,
                             "bounds": [-100_000, y - 100_000, 100_000, y + 100_000]})
    m = tile_mask(grid, _point_geojson(tmp_path / "p.json", 0.0, lat), buffer_km=30)
    width_km = m.sum(axis=1).max()  # widest row of 1 km tiles (all_touched adds up to one per side)
    want = 2 * 30 / math.cos(math.radians(lat))
    assert want <= width_km <= want + 3


def test_buffer_wraps_across_the_antimeridian(tmp_path, z15):
    from reefmap.planning.masks import tile_mask

    m = tile_mask(z15, _point_geojson(tmp_path / "fiji.json", 179.98, -17.0), buffer_km=20)
    row = tile_of_lonlat(z15, 179.98, -17.0).iy
    assert m[row, -1] and m[row, 0]  # the buffer crosses 180° and comes back at -180°


def test_raster_masks(z15, reef_mask):
    from reefmap.planning.masks import tile_mask

    shallow, info = tile_mask(z15, shared_data("masks", "ne_shallow_tropical_0p05deg.tif"), info=True)
    assert info.kind == "raster" and info.crs == "EPSG:4326"
    assert reef_mask[0].sum() < shallow.sum() < 0.1 * z15.count
    assert shallow[tile_of_lonlat(z15, *GBR)] and not shallow[tile_of_lonlat(z15, *SAHARA)]
    lines = tile_mask(z15, shared_data("masks", "ne_reef_lines_0p05deg.tif"))
    lines_vec = tile_mask(z15, shared_data(*REEFS), buffer_km=0)
    assert (lines_vec <= lines).all()  # a cell a line touches overlaps the tiles the line touches: max keeps them


def test_masks_in_another_crs_are_reprojected(tmp_path, z15, reef_mask):
    import rasterio
    from pyproj import Transformer
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    from reefmap.planning.masks import tile_mask

    # GeoJSON in EPSG:3857 with the legacy crs member, and the same without it plus mask_crs
    doc = json.loads(shared_data(*REEFS).read_text())
    tr = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)
    for f in doc["features"]:
        xs, ys = tr.transform(*np.array(f["geometry"]["coordinates"]).T)
        f["geometry"]["coordinates"] = np.column_stack([xs, ys]).tolist()
    bare = tmp_path / "reefs_3857_bare.json"
    bare.write_text(json.dumps(doc))
    doc["crs"] = {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::3857"}}
    legacy = tmp_path / "reefs_3857.geojson"
    legacy.write_text(json.dumps(doc))
    want0 = tile_mask(z15, shared_data(*REEFS), buffer_km=0)
    assert np.array_equal(tile_mask(z15, legacy, buffer_km=0), want0)
    assert np.array_equal(tile_mask(z15, bare, buffer_km=0, crs="EPSG:3857"), want0)
    got10 = tile_mask(z15, legacy, buffer_km=10)
    assert (got10 ^ reef_mask[0]).sum() <= 5  # round-trip rounding at most flips a tile edge or two

    # a raster mask in EPSG:3857 (the 0.05° reef-line raster warped to ~5 km Mercator cells)
    src_path = shared_data("masks", "ne_reef_lines_0p05deg.tif")
    with rasterio.open(src_path) as src:
        data = src.read(1)[1000:2600]  # 40°N .. 40°S
        src_t = src.transform @ src.transform.translation(0, 1000)
        t, w, h = calculate_default_transform(src.crs, "EPSG:3857", data.shape[1], data.shape[0],
                                              -180, -40, 180, 40, resolution=5000)
        dst = np.zeros((h, w), np.uint8)
        reproject(data, dst, src_transform=src_t, src_crs=src.crs, dst_transform=t, dst_crs="EPSG:3857",
                  resampling=Resampling.max)
    merc = tmp_path / "reef_lines_3857.tif"
    with rasterio.open(merc, "w", driver="GTiff", width=w, height=h, count=1, dtype="uint8", crs="EPSG:3857",
                       transform=t) as dst_f:
        dst_f.write(dst, 1)
    got, info = tile_mask(z15, merc, info=True)
    assert info.crs == "EPSG:3857"
    ref = tile_mask(z15, src_path)
    jaccard = (got & ref).sum() / (got | ref).sum()
    assert jaccard > 0.7 and got[tile_of_lonlat(z15, *GBR)]


def test_bad_masks_say_which_file_and_what_to_do(tmp_path, z15):
    from reefmap.planning.masks import MaskError, MaskNotFound, tile_mask

    missing = tmp_path / "nope.json"
    with pytest.raises(MaskNotFound, match="nope.json.*--mask") as e:
        tile_mask(z15, missing)
    assert isinstance(e.value, ReefmapError) and isinstance(e.value, FileNotFoundError)
    bad_json = tmp_path / "broken.json"
    bad_json.write_text("{not json")
    with pytest.raises(MaskError, match="broken.json.*not valid GeoJSON"):
        tile_mask(z15, bad_json)
    bad_tif = tmp_path / "broken.tif"
    bad_tif.write_bytes(b"II*\x00garbage")
    with pytest.raises(MaskError, match="broken.tif.*not a readable raster"):
        tile_mask(z15, bad_tif)
    empty = tmp_path / "empty.json"
    empty.write_text('{"type": "FeatureCollection", "features": []}')
    with pytest.raises(MaskError, match="no geometries"):
        tile_mask(z15, empty)
    link = _point_geojson(tmp_path / "link.json", 0, 0, {"type": "link", "properties": {"href": "x"}})
    with pytest.raises(MaskError, match="mask_crs"):
        tile_mask(z15, link)
    import rasterio
    from affine import Affine

    nocrs = tmp_path / "nocrs.tif"
    with rasterio.open(nocrs, "w", driver="GTiff", width=4, height=4, count=1, dtype="uint8",
                       transform=Affine(1, 0, 0, 0, -1, 4)) as f:
        f.write(np.ones((4, 4), np.uint8), 1)
    with pytest.raises(MaskError, match="no CRS"):
        tile_mask(z15, nocrs)
    with pytest.raises(MaskError, match="vector masks only"):
        tile_mask(z15, nocrs, buffer_km=5, crs="EPSG:4326")


# -- configuration and `reefmap plan` ---------------------------------------------------------------------------
CONFIGS = REPO / "pipelines" / "configs"


def test_global_l15_config_every_key_commented_and_paths_resolved(monkeypatch):
    monkeypatch.delenv("REEFMAP_MASK", raising=False)
    text = (CONFIGS / "global-l15.yaml").read_text().splitlines()
    for line in text:
        if line.strip() and not line.lstrip().startswith("#"):
            assert "#" in line, f"uncommented key in global-l15.yaml: {line!r}"
    cfg = GlobalRunConfig.from_yaml(CONFIGS / "global-l15.yaml")
    assert tuple(cfg.grid.shape) == (360, 2048) and cfg.grid.tile == 4096
    assert Path(cfg.mask) == REPO.parent / "shared" / "data" / "natural-earth" / "ne_10m_reefs.json"
    assert cfg.buffer_km == 10 and cfg.synthetic == {"seed": 0} and cfg.cluster_profile == "slurm-gpu"
    assert Path(cfg.out) == REPO / "out" / "global-l15.zarr"
    # the mask: --mask > $REEFMAP_MASK > the file
    monkeypatch.setenv("REEFMAP_MASK", "/env/mask.tif")
    assert GlobalRunConfig.from_yaml(CONFIGS / "global-l15.yaml").mask == "/env/mask.tif"
    assert GlobalRunConfig.from_yaml(CONFIGS / "global-l15.yaml", mask="/flag/mask.json").mask == "/flag/mask.json"
    assert GlobalRunConfig.from_yaml(CONFIGS / "global-l15.yaml", mask="none").mask is None


def test_config_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("REEFMAP_MASK", raising=False)
    def load(text):
        p = tmp_path / "c.yaml"
        p.write_text(text)
        return GlobalRunConfig.from_yaml(p)

    base = "grid: {zoom: 9, tile: 64}\nout: o.zarr\n"
    assert load(base).out == str(tmp_path / "o.zarr") and load(base).mask is None
    assert load(base + "mask: none\n").mask is None
    assert load(base + "mask: m/reefs.json\n").mask == str(tmp_path / "m" / "reefs.json")
    with pytest.raises(InvalidParameter, match="unknown keys.*'bufer_km'"):
        load(base + "bufer_km: 3\n")
    with pytest.raises(InvalidParameter, match="mosaic must be"):
        load(base + "mosaic: {path: a.zarr, synthetic: {seed: 1}}\n")
    with pytest.raises(InvalidParameter, match="buffer_km"):
        load(base + "buffer_km: -1\n")
    with pytest.raises(InvalidParameter, match="no output store"):
        load("grid: {zoom: 9, tile: 64}\n")
    with pytest.raises(InvalidParameter, match="not found"):
        GlobalRunConfig.from_yaml(tmp_path / "missing.yaml")


def _plan_cli(*args, env=None):  # noqa: D103 - runs `reefmap plan` in a fresh interpreter, reports torch imports
    code = ("import sys, json; from reefmap.cli.main import main; rc = main(sys.argv[1:]); "
            "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')); "
            "print('TORCH-IMPORTED' if bad else 'NO-TORCH', file=sys.stderr); sys.exit(rc)")
    base = {k: v for k, v in os.environ.items() if k != "REEFMAP_MASK"}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                          env={**base, **(env or {})})


def test_plan_command_json_and_text_without_torch(tmp_path):
    shared_data(*REEFS)
    r = _plan_cli("plan", str(CONFIGS / "global-l15.yaml"), "--json")
    assert r.returncode == 0, r.stderr
    assert "NO-TORCH" in r.stderr
    d = json.loads(r.stdout)
    assert d["tiles_total"] == 737280 and 4300 <= d["tiles_planned"] <= 4800
    assert d["grid"]["tiles_wide"] == 2048 and d["grid"]["tiles_tall"] == 360 and d["grid"]["crs"] == "EPSG:3857"
    assert d["grid"]["pixel_size"] == pytest.approx(4.7773, abs=1e-4) and d["grid"]["tile_px"] == 4096
    assert d["seconds"] < 10 and d["computed"] is False
    r = _plan_cli("plan", str(CONFIGS / "caribbean-demo.yaml"), "--mask",
                  str(shared_data("masks", "ne_shallow_tropical_0p05deg.tif")), "--buffer-km", "0")
    assert r.returncode == 0, r.stderr
    assert "2048 x 360 tiles" in r.stdout and "planned" in r.stdout and "raster" in r.stdout
    r = _plan_cli("plan", str(CONFIGS / "global-l15.yaml"), "--mask", str(tmp_path / "gone.json"))
    assert r.returncode == 2 and "gone.json" in r.stderr and "--mask" in r.stderr


def test_reefmap_cli_plan_and_status_map_when_wired(tmp_path, capsys, monkeypatch):
    from reefmap.cli import main as cli

    monkeypatch.delenv("REEFMAP_MASK", raising=False)
    parser = cli.build_parser()
    try:
        parser.parse_args(["plan", "x.yaml"])
    except SystemExit:
        pytest.skip("`reefmap plan` is not wired into reefmap/cli.py yet (add_commands(sub) from reefmap.cli.global_cmds)")
    shared_data(*REEFS)
    assert cli.main(["plan", str(CONFIGS / "caribbean-demo.yaml"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["tiles_total"] == 737280 and d["tiles_planned"] == 242
    assert cli.main(["plan", str(CONFIGS / "global-l15.yaml"), "--mask", str(tmp_path / "x.json")]) == 2
    assert "x.json" in capsys.readouterr().err
    st, *_ = _store_with_states(tmp_path / "m.zarr", web_mercator_quads(5, 256), 30)
    assert cli.main(["status", str(tmp_path / "m.zarr"), "--map", str(tmp_path / "p.png"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["map"] == str(tmp_path / "p.png") and (tmp_path / "p.png").exists()


# -- the simulated global run -------------------------------------------------------------------------------------
def _sim_config(tmp_path, bundle, name, *, region=BAHAMAS_CUBA, buffer_km=25, profile="inprocess", max_in_flight=2,
                block=64, extra=""):
    p = tmp_path / f"{name}.yaml"
    p.write_text(
        "grid: {kind: web_mercator_quads, zoom: 9, tile: 64, lat_min: -30, lat_max: 30}\n"
        f"region: \"{region}\"\n"
        f"mask: {shared_data(*REEFS)}\n"
        f"buffer_km: {buffer_km}\n"
        "mosaic: {synthetic: {seed: 3}}\n"
        f"model: {bundle.path}\n"
        f"out: {name}.zarr\n"
        f"max_in_flight: {max_in_flight}\n"
        f"block: {block}\n"
        f"cluster: {{profile: {profile}, jobs: 1}}\n"
        "log_every_s: 1\n" + extra)
    return GlobalRunConfig.from_yaml(p, mask=str(shared_data(*REEFS)))  # explicit: $REEFMAP_MASK must not leak in


def _chunk_bytes(store_path: Path, name: str) -> dict[str, bytes]:
    root = store_path / name / "c"
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file() and "partial" not in p.name}


@pytest.fixture(scope="module")
def stopped_and_resumed(tmp_path_factory, random_bundle):
    """A simulated run over the Bahamas and Cuba (134 tiles of the 737k-tile grid), stopped after 40 tiles, then
    resumed. (The benchmark runs the wider Caribbean, 242 tiles; here the test budget rules.)"""
    from reefmap.execute.batch import run_batch

    tmp = tmp_path_factory.mktemp("global")
    cfg = _sim_config(tmp, random_bundle, "resumed")
    stop = threading.Event()
    seen = []

    def stop_after(o):
        seen.append(o)
        if len(seen) == 40:
            stop.set()

    first = run_batch(cfg, stop=stop, on_outcome=stop_after, order_seed=1)
    from reefmap.store.mapstore import MapStore

    finished_at_stop = int((MapStore(cfg.out).states() > 0).sum())
    second = run_batch(cfg, order_seed=2)
    return cfg, first, finished_at_stop, second


def test_simulated_global_run_stops_and_resumes(stopped_and_resumed):
    from reefmap.store.status import status

    cfg, first, finished_at_stop, second = stopped_and_resumed
    assert first.tiles_total == 737280 and 100 <= first.tiles_planned <= 200
    assert first.stopped and not first.complete and first.exit_code == 3
    assert 40 <= first.computed <= 40 + (cfg.max_in_flight or 2)  # tiles in flight at the stop finished
    assert finished_at_stop == first.computed
    assert second.complete and not second.stopped and second.exit_code == 0
    assert second.finished_before == finished_at_stop
    redone = first.computed + second.computed - first.tiles_planned
    assert 0 <= redone <= (cfg.max_in_flight or 2)
    s = status(cfg.out)
    assert s["planned"] == first.tiles_planned and s["pending"] == 0 and s["failed"] == 0
    assert s["tiles_total"] == 737280
    summ = json.loads(Path(second.summary_path).read_text())
    assert summ["complete"] and summ["computed"] == second.computed and summ["tiles_planned"] == first.tiles_planned
    assert summ["tiles_per_s"] > 0 and summ["mpx_per_s"] > 0 and summ["exit_code"] == 0


def test_two_runs_on_one_store_at_once_give_the_same_map(tmp_path, random_bundle, stopped_and_resumed):
    from reefmap.execute.batch import run_batch

    ref_cfg = stopped_and_resumed[0]
    cfg = _sim_config(tmp_path, random_bundle, "concurrent", block=32, buffer_km=10)  # 66 of the reference's tiles
    results, errors = {}, {}

    def go(seed):
        try:
            results[seed] = run_batch(cfg, order_seed=seed, write_summary=False)
        except Exception as e:  # noqa: BLE001 - shown by the assertion below
            errors[seed] = "".join(traceback.format_exception(e))

    threads = [threading.Thread(target=go, args=(s,)) for s in (11, 12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not errors, errors
    assert set(results) == {11, 12} and all(r.complete for r in results.values())
    planned = results[11].tiles_planned
    both = sum(r.computed for r in results.values())
    # the jobs cannot see each other's tiles in flight: pick_block keeps the tiles both computed to a few blocks
    # (5 tiles each here; 12 seen on 2 loaded cores), far from the 66 of two jobs that each map everything
    assert planned <= both <= planned + planned // 4, both - planned
    for name in ("reef_probability", "classification", "tiles/status", "tiles/proof"):
        a, b = _chunk_bytes(Path(cfg.out), name), _chunk_bytes(Path(ref_cfg.out), name)
        assert a and a.keys() <= b.keys(), name
        assert all(a[k] == b[k] for k in a), name  # byte-identical to the stopped-and-resumed single run


def test_global_run_sbatch_script_stops_on_sigusr1_and_resumes(tmp_path, random_bundle):
    """The sbatch script run by bash (as SLURM would): exec makes python the signalled process; profile local."""
    from reefmap.execute.batch import run_batch
    from reefmap.store.mapstore import MapStore

    cfg = _sim_config(tmp_path, random_bundle, "sbatch", profile="local", max_in_flight=2, buffer_km=10)
    env = {**{k: v for k, v in os.environ.items() if k != "REEFMAP_MASK"}, "REEFMAP_VENV": str(Path(sys.executable).parents[1]),
           "REEFMAP_REPO": str(REPO), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(["bash", str(REPO / "pipelines" / "global_run.sbatch"), cfg.source, "--summary",
                             str(tmp_path / "sum-{job}.json")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 150
        n = 0
        while time.time() < deadline and proc.poll() is None:
            if MapStore(cfg.out).exists():
                try:
                    n = int((MapStore(cfg.out).states() > 0).sum())
                except Exception:
                    n = 0
                if n >= 3:
                    break
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGUSR1)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, err[-3000:]
    assert "SIGUSR1 received" in err and "tiles/s" in err
    summ = json.loads(Path(json.loads(out.strip().splitlines()[-1])["summary"]).read_text())
    assert summ["stopped"] and not summ["complete"] and summ["remaining"] > 0
    finished = int((MapStore(cfg.out).states() > 0).sum())
    assert finished == summ["computed"] and finished < summ["tiles_planned"]
    rest = run_batch(cfg, client="inprocess", write_summary=False)
    assert rest.complete and rest.finished_before == finished
    assert rest.computed == summ["tiles_planned"] - finished  # nothing redone: the in-flight tiles were finished


def test_run_progress_line():
    from reefmap.execute.progress import RunProgress
    from reefmap.compute.tiles import TileOutcome

    now = [0.0]
    lines = []

    class L:
        def info(self, m):
            lines.append(m)

    p = RunProgress(100, 20, every_s=10, job="j", logger=L(), clock=lambda: now[0])
    for i in range(10):
        now[0] = i + 1.0
        p.on_outcome(TileOutcome((0, i), 1, 1_000_000, 0.1))
    assert len(lines) == 1 and "10 tiles this job" in lines[0] and "1.00 tiles/s" in lines[0]
    assert "1.00 Mpx/s" in lines[0] and "store 30/100" in lines[0] and "ETA 70s" in lines[0]


# -- progress at global scale ----------------------------------------------------------------------------------
def _store_with_states(path, grid, n, seed=0):
    """A map store on ``grid`` whose tile_status holds ``n`` random states, written as raw 1-byte chunks."""
    from reefmap.planning.plan import Plan
    from reefmap.store.mapstore import MapStore

    st = MapStore.create_or_open(path, grid, {"model": "none", "halo": 0}, {})
    rng = np.random.default_rng(seed)
    flat = np.sort(rng.choice(grid.count, size=n, replace=False))
    iy, ix = np.unravel_index(flat, tuple(grid.shape))
    vals = rng.choice([1, 1, 1, 2, 3, 4, 9], size=n).astype(np.uint8)
    root = Path(path) / st.status_path / "c"
    data = Path(path) / "classification" / "c"  # a finished tile's data chunk must exist (its bytes are not read)
    for y, x, v in zip(iy.tolist(), ix.tolist(), vals.tolist()):
        for r, b in ((root, bytes([v])), (data, b"\0")):
            (r / str(y)).mkdir(parents=True, exist_ok=True)
            (r / str(y) / str(x)).write_bytes(b)
    sel = np.zeros(tuple(grid.shape), bool)
    sel[iy, ix] = True
    sel[::9, ::7] = True
    st.record_plan(Plan(grid, 0, sel))
    return st, iy, ix, vals


def test_states_fast_path_matches_zarr_reads_on_a_global_grid(tmp_path):
    grid = web_mercator_quads(11, 256)  # 737k tiles
    st, iy, ix, vals = _store_with_states(tmp_path / "m.zarr", grid, 2000)
    (tmp_path / "m.zarr" / st.status_path / "c" / str(iy[0]) / "5.abc.partial").write_bytes(b"\x01")  # an orphan
    t0 = time.perf_counter()
    fast = st.states()
    assert time.perf_counter() - t0 < 5
    assert np.array_equal(fast, st._states_via_zarr()[0])
    assert (fast > 0).sum() == 2000 and np.array_equal(fast[iy, ix], vals)


def test_states_fast_path_on_an_fsspec_store(monkeypatch):
    from reefmap.store.format import TileState
    from reefmap.store.mapstore import MapStore

    st = MapStore.create_or_open("memory://reefmap-test-fast-states/m.zarr", web_mercator_quads(5, 256),
                                 {"model": "x", "halo": 0}, {})
    from reefmap.geometry.grid import Window

    for (iy, ix), state in (((3, 4), TileState.DONE), ((0, 0), TileState.SKIPPED_LAND)):
        st.write_tile(Window(iy * 256, iy * 256 + 256, ix * 256, ix * 256 + 256), np.full((256, 256), 7, np.uint8),
                      np.full((256, 256), 4, np.uint8))  # a finished tile's data are there, with its proof
        st.mark((iy, ix), state)
    st.mark((5, 6), TileState.FAILED, "boom")
    want = st._states_via_zarr()[0]
    monkeypatch.setattr(MapStore, "_states_via_zarr", lambda self: pytest.fail("fell back to the slow path"))
    got = st.states()
    assert np.array_equal(got, want) and (got > 0).sum() == 3 and got[5, 6] == TileState.FAILED


def test_progress_png_draws_states_legend_and_coastline(tmp_path):
    from PIL import Image

    from reefmap.viz.progress_map import progress_png

    grid = web_mercator_quads(11, 256)
    st, iy, ix, vals = _store_with_states(tmp_path / "m.zarr", grid, 500)
    info = progress_png(st, tmp_path / "p.png", coastline=False)
    img = Image.open(info.path)
    assert str(info) == os.fspath(info) == str(tmp_path / "p.png")
    left, top, mw, mh = info.map_box
    assert (img.width, img.height) == (info.width, info.height) and info.pixels_per_tile == 1
    assert (mh, mw) == tuple(grid.shape) == (360, 2048) and img.height > mh  # one pixel per tile, and a legend
    c = info.counts
    assert c["done"] == (vals == 1).sum() and c["failed"] == (vals == 9).sum()
    assert sum(c.values()) == grid.count and c["pending"] == info.planned - (vals > 0).sum()
    # done tiles away from the map's outline are green, failed ones red, each at its own pixel of the map area
    # (but where a graticule line or the scale bar crosses it)
    arr = np.asarray(img.convert("RGB"))
    inner = (0 < iy) & (iy < 359) & (0 < ix) & (ix < 2047)
    for state, rgb in ((1, (31, 158, 68)), (9, (220, 30, 30))):
        sel = inner & (vals == state)
        hit = (arr[top + iy[sel], left + ix[sel]] == rgb).all(axis=1)
        assert sel.sum() > 20 and hit.mean() > 0.9, (state, hit.mean())
    # every state's colour is in the legend under the map
    below = arr[top + mh + 1:]
    for rgb in ((31, 158, 68), (92, 132, 204), (220, 30, 30), (245, 176, 40)):
        assert (below == rgb).all(axis=2).any(), rgb
    # a coastline overlay (a small island here)
    island = tmp_path / "island.json"
    island.write_text(json.dumps({"type": "Feature", "properties": {}, "geometry": {
        "type": "Polygon", "coordinates": [[[-20, -10], [20, -10], [20, 10], [-20, 10], [-20, -10]]]}}))
    small = web_mercator_quads(5, 256, -30, 30)  # 32 x 12 tiles: drawn 16 px per tile
    st2, *_ = _store_with_states(tmp_path / "s.zarr", small, 20)
    info2 = progress_png(st2, tmp_path / "s.png", coastline=island)
    assert info2.pixels_per_tile == 16 and info2.coastline == str(island)
    assert (np.asarray(Image.open(tmp_path / "s.png").convert("RGB")) == (120, 120, 120)).all(axis=2).any()
    assert progress_png(st2, tmp_path / "n.png", coastline=tmp_path / "absent.json").coastline is None
    # by default: the Natural Earth land shipped inside the package (no path outside it), drawn grey
    from reefmap.viz.progress_map import DEFAULT_COASTLINE

    import reefmap
    assert DEFAULT_COASTLINE.is_file() and Path(reefmap.__file__).parent in DEFAULT_COASTLINE.parents
    info3 = progress_png(st2, tmp_path / "d.png")
    assert info3.coastline == str(DEFAULT_COASTLINE)
    assert (np.asarray(Image.open(tmp_path / "d.png").convert("RGB")) == (120, 120, 120)).all(axis=2).any()


def test_status_and_map_never_import_torch(tmp_path):
    grid_store = tmp_path / "m.zarr"
    code = (
        "import sys\n"
        "from reefmap.geometry.webmercator import web_mercator_quads\n"
        "from reefmap.store.mapstore import MapStore\n"
        f"st = MapStore.create_or_open({str(grid_store)!r}, web_mercator_quads(9, 64), {{'model': 'x', 'halo': 0}}, {{}})\n"
        "from reefmap.store.status import status\n"
        "from reefmap.viz.progress_map import progress_png\n"
        "from reefmap.execute.batch import plan_global\n"
        "status(st); st.states()\n"
        f"progress_png(st, {str(tmp_path / 'p.png')!r}, coastline=False)\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_real_mosaic_must_be_on_the_grid(tmp_path):
    from reefmap.execute.batch import open_global_mosaic

    tif = shared_data("real", "RGB.byte.tif")
    p = tmp_path / "c.yaml"
    p.write_text(f"grid: {{zoom: 9, tile: 64}}\nout: o.zarr\nmosaic: {{path: {tif}}}\n")
    with pytest.raises(InvalidParameter, match="config's grid"):
        open_global_mosaic(GlobalRunConfig.from_yaml(p))


def test_sbatch_script_directives():
    text = (REPO / "pipelines" / "global_run.sbatch").read_text()
    directives = [ln.split()[1] for ln in text.splitlines() if ln.startswith("#SBATCH")]
    for want in ("--job-name", "--time", "--cpus-per-task", "--mem", "--output", "--signal=B:USR1@120"):
        assert any(d.startswith(want) for d in directives), want
    assert "exec python pipelines/global_run.py" in text
    r = subprocess.run(["bash", "-n", str(REPO / "pipelines" / "global_run.sbatch")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_a_global_run_takes_the_models_precision_and_records_it(tmp_path, random_bundle):
    """precision:/compile: in a global run's YAML reach the tiles and the map's provenance and identity, as with
    ``reefmap run``; a later run with other numerics is refused instead of mixing them in one map."""
    from reefmap.errors import StoreMismatch
    from reefmap.execute.batch import run_batch
    from reefmap.store.mapstore import MapStore

    with pytest.raises(InvalidParameter, match="fp8"):
        _sim_config(tmp_path, random_bundle, "bad", extra="precision: fp8\n")
    cfg = _sim_config(tmp_path, random_bundle, "bf16", buffer_km=10, extra="precision: bf16\n")
    assert cfg.precision == "bf16" and cfg.compile is False
    summary = run_batch(cfg, client="inprocess", write_summary=False)
    assert summary.complete and summary.computed > 0
    attrs = MapStore(cfg.out).attrs
    assert attrs["parameters"]["precision"] == "bf16"
    assert attrs["identity"]["inference"] == {"precision": "bf16", "compile": False}
    fp32 = _sim_config(tmp_path, random_bundle, "bf16", buffer_km=10)
    with pytest.raises(StoreMismatch, match="bf16"):
        run_batch(fp32, client="inprocess", write_summary=False)
