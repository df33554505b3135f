"""reefmap.synthetic (world, render, reader): determinism, window independence, geography, colours, laziness, specs and errors."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import pickle
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reefmap.classes import CLOUD, DEEP_WATER, LAND, NODATA, REEF, SHALLOW
from reefmap.errors import InvalidParameter
from reefmap.geometry.grid import GeoBox, Shape, Window
from reefmap.sources.base import open_reader, reader_of
from reefmap.synthetic.reader import SyntheticReader, synthetic_geobox, synthetic_mosaic, synthetic_truth
from reefmap.synthetic.render import render, training_pairs
from reefmap.synthetic.world import CLASS_MEANS, MEASURED, SyntheticWorld

REPO = Path(__file__).resolve().parents[1]
CLEAN = dict(cloud_cover=0.0, nodata_fraction=0.0)  # nothing hides the surface


def shared_path(*parts: str) -> Path:
    """A path in the shared folder beside the repository, or skip: a clone elsewhere has no such folder."""
    p = Path(__file__).resolve().parents[2].joinpath("shared", *parts)
    if not p.exists():
        pytest.skip(f"{p} is absent (the shared folder sits beside the repository on development machines)")
    return p


def near(mask: np.ndarray, radius: float) -> np.ndarray:
    """Pixels within Euclidean ``radius`` of a True pixel of ``mask`` (brute force, for small radii)."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    r = int(radius)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dy * dy + dx * dx <= radius * radius:
                out[max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)] |= \
                    mask[max(0, -dy):h + min(0, -dy), max(0, -dx):w + min(0, -dx)]
    return out


@pytest.fixture(scope="module")
def sample():
    """RGB and truth of the default world, 2048² px from the origin."""
    return render(SyntheticWorld(), Window(0, 2048, 0, 2048))


@pytest.fixture(scope="module")
def clean_sample():
    """A cloud- and gap-free 2048² sample (8 px margin all round, for neighbourhood checks)."""
    return render(SyntheticWorld(**CLEAN), Window(-8, 2056, -8, 2056))


# -- determinism and window independence ---------------------------------------------------------------------
def test_same_arguments_same_pixels_and_seeds_differ():
    win = Window(100, 612, -300, 212)
    a_rgb, a_truth = render(SyntheticWorld(seed=5), win)
    b_rgb, b_truth = render(SyntheticWorld(seed=5), win)
    assert a_rgb.dtype == np.uint8 and a_rgb.shape == (3, 512, 512) and a_truth.shape == (512, 512)
    assert np.array_equal(a_rgb, b_rgb) and np.array_equal(a_truth, b_truth)
    c_rgb, c_truth = render(SyntheticWorld(seed=6), win)
    assert (a_rgb != c_rgb).any(0).mean() > 0.5
    assert (a_truth != c_truth).mean() > 0.05


REF_WINDOW = Window(-200, 200, 1_000_000, 1_000_400)  # negative rows, far columns: no origin is special


@pytest.fixture(scope="module")
def reference():
    return render(SyntheticWorld(seed=3), REF_WINDOW)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_window_equals_the_slice_of_a_bigger_one(reference, data):
    ref_rgb, ref_truth = reference
    r0 = data.draw(st.integers(REF_WINDOW.row_start, REF_WINDOW.row_stop - 1))
    c0 = data.draw(st.integers(REF_WINDOW.col_start, REF_WINDOW.col_stop - 1))
    r1 = data.draw(st.integers(r0 + 1, min(REF_WINDOW.row_stop, r0 + 160)))
    c1 = data.draw(st.integers(c0 + 1, min(REF_WINDOW.col_stop, c0 + 160)))
    win = Window(r0, r1, c0, c1)
    rgb, truth = render(SyntheticWorld(seed=3), win)
    rows, cols = win.relative_to(REF_WINDOW).slices
    assert np.array_equal(rgb, ref_rgb[:, rows, cols])
    assert np.array_equal(truth, ref_truth[rows, cols])


def test_thread_count_does_not_change_pixels(reference):
    import numba

    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        rgb, truth = render(SyntheticWorld(seed=3), REF_WINDOW)
    finally:
        numba.set_num_threads(before)
    assert np.array_equal(rgb, reference[0]) and np.array_equal(truth, reference[1])


def test_truth_only_matches_full_render(reference):
    assert np.array_equal(render(SyntheticWorld(seed=3), REF_WINDOW, want_rgb=False)[1], reference[1])


def test_nodata_in_rgb_exactly_where_truth_is_nodata(sample):
    rgb, truth = sample
    assert np.array_equal((rgb == 0).all(0), truth == NODATA)


# -- geography --------------------------------------------------------------------------------------------------
def test_every_class_present_with_plausible_fractions(sample):
    frac = np.bincount(sample[1].ravel(), minlength=6) / sample[1].size
    bounds = {NODATA: (0.01, 0.06), DEEP_WATER: (0.2, 0.7), SHALLOW: (0.15, 0.55), REEF: (0.01, 0.08),
              LAND: (0.03, 0.2), CLOUD: (0.04, 0.2)}
    for code, (lo, hi) in bounds.items():
        assert lo <= frac[code] <= hi, (code, frac)
    assert frac.sum() == pytest.approx(1.0)
    valid = 1.0 - frac[NODATA]
    assert 0.01 <= frac[REEF] / valid <= 0.08  # reef: a few % of valid pixels


def test_reefs_hug_shores_and_bank_edges():
    """Outside atolls, reef is shallow water within 8 px of land (fringing) or 4 px of deep water (barrier)."""
    t = render(SyntheticWorld(atoll_density=0.0, **CLEAN), Window(-8, 2056, -8, 2056), want_rgb=False)[1]
    ok = (near(t == LAND, 8) | near(t == DEEP_WATER, 4))[8:-8, 8:-8]
    reef = (t == REEF)[8:-8, 8:-8]
    assert reef.mean() > 0.01
    assert ok[reef].all()
    # fringing: most island shores have reef within 8 px
    water = (t == SHALLOW) | (t == REEF) | (t == DEEP_WATER)
    coast = ((t == LAND) & near(water, 1))[8:-8, 8:-8]
    assert near(t == REEF, 8)[8:-8, 8:-8][coast].mean() > 0.5
    # barrier: reef lines the bank edges too
    bank_edge = (((t == SHALLOW) | (t == REEF)) & near(t == DEEP_WATER, 1))[8:-8, 8:-8]
    assert (t == REEF)[8:-8, 8:-8][bank_edge].mean() > 0.3


def test_reef_in_every_region_with_islands(clean_sample):
    t = clean_sample[1][8:-8, 8:-8]
    tiles = [t[i:i + 256, j:j + 256] for i in range(0, 2048, 256) for j in range(0, 2048, 256)]
    with_islands = [x for x in tiles if (x == LAND).sum() >= 200]
    assert len(with_islands) >= 5
    assert all((x == REEF).any() for x in with_islands)


def _first_at_or_after(mask: np.ndarray) -> np.ndarray:
    """Per pixel, the column of the first True of ``mask`` at or right of it in its row (width if none)."""
    h, w = mask.shape
    columns = np.ascontiguousarray(mask.T)
    out = np.empty((w + 1, h), np.int32)
    out[w] = w
    for j in range(w - 1, -1, -1):
        out[j] = np.where(columns[j], j, out[j + 1])
    return out.T


_DIRECTIONS = (  # (view looking right along rows, its inverse)
    (lambda a: a, lambda a: a),
    (lambda a: a[:, ::-1], lambda a: a[:, ::-1]),
    (lambda a: a.T, lambda a: a.T),
    (lambda a: a.T[:, ::-1], lambda a: a[:, ::-1].T),
)


def _lagoon_pixels(t: np.ndarray) -> np.ndarray:
    """Shallow pixels that, looking in all four directions, see within 80 px a reef/land ring at most 8 px thick
    with deep water right behind it: the lagoons of atolls."""
    ok = t == SHALLOW
    for view_of, back in _DIRECTIONS:
        v = view_of(t)
        h, w = v.shape
        rows, cols = np.arange(h)[:, None], np.arange(w)[None, :]
        padded = np.concatenate([v, np.full((h, 1), NODATA, v.dtype)], axis=1)
        ring_start = _first_at_or_after(v != SHALLOW)[:, 1:]  # the first non-shallow pixel right of each
        ring_end = _first_at_or_after((v != REEF) & (v != LAND))[rows, ring_start]
        good = (np.isin(padded[rows, ring_start], (REEF, LAND)) & (padded[rows, ring_end] == DEEP_WATER)
                & (ring_start - cols <= 80) & (ring_end - ring_start <= 8))
        ok &= back(good)
    return np.stack(np.nonzero(ok))


def test_atolls_are_reef_rings_round_a_lagoon_in_deep_water():
    world = SyntheticWorld(bank_cover=0.01, island_density=0.001, atoll_density=1.0, **CLEAN)
    t = render(world, Window(0, 1024, 0, 1024), want_rgb=False)[1]
    assert _lagoon_pixels(t).shape[1] > 2000  # several atolls, each with a lagoon
    assert 0.002 < (t == REEF).mean() < 0.1 and (t == DEEP_WATER).mean() > 0.7
    no_atolls = render(dataclasses.replace(world, atoll_density=0.0), Window(0, 1024, 0, 1024), want_rgb=False)[1]
    assert _lagoon_pixels(no_atolls).shape[1] == 0


def test_default_world_has_atolls_in_deep_water(clean_sample):
    t = clean_sample[1]
    without = render(SyntheticWorld(atoll_density=0.0, **CLEAN), Window(-8, 2056, -8, 2056), want_rgb=False)[1]
    atolls = t != without
    assert atolls.sum() > 500
    assert (without[atolls] == DEEP_WATER).all()  # atolls only replace deep water
    assert set(np.unique(t[atolls])) <= {REEF, SHALLOW, LAND}
    assert _lagoon_pixels(np.where(atolls, t, DEEP_WATER)).shape[1] > 200  # rings round lagoons


# -- colours ---------------------------------------------------------------------------------------------------
def test_class_colours_match_the_measured_scene(clean_sample):
    rgb, t = clean_sample
    tolerance = {DEEP_WATER: 4.0, SHALLOW: 10.0, REEF: 4.0, LAND: 6.0}
    for code, tol in tolerance.items():
        px = rgb[:, t == code].astype(float)
        mean = px.mean(1)
        assert np.abs(mean - CLASS_MEANS[code]).max() <= tol, (code, mean, CLASS_MEANS[code])
    for name, code in (("deep_water", DEEP_WATER), ("reef", REEF), ("land", LAND), ("shallow", SHALLOW)):
        std, measured = rgb[:, t == code].std(1), np.sqrt(np.diag(MEASURED[name][1]))
        assert np.all((std > 0.5 * measured) & (std < 1.5 * measured)), (name, std, measured)


def test_cloud_colour_matches_the_measured_scene():
    rgb, t = render(SyntheticWorld(cloud_cover=0.2, cloud_shadows=False, nodata_fraction=0.0), Window(0, 1024, 0, 1024))
    mean = rgb[:, t == CLOUD].astype(float).mean(1)
    assert np.abs(mean - CLASS_MEANS[CLOUD]).max() <= 15.0, mean
    assert (t == CLOUD).mean() > 0.1


def test_shallow_water_darkens_towards_deep_water(clean_sample):
    rgb, t = clean_sample
    shallow = t == SHALLOW
    by_edge = rgb[:, shallow & near(t == DEEP_WATER, 3)].astype(float).mean(1)
    by_shore = rgb[:, shallow & near(t == LAND, 3)].astype(float).mean(1)
    assert by_edge.sum() < by_shore.sum() - 30  # darker at the bank edge


def test_measured_constants_reproduce_from_the_real_scene():
    path = shared_path("data", "real", "RGB.byte.tif")
    spec = importlib.util.spec_from_file_location("measure", REPO / "pipelines" / "measure_bahamas_colours.py")
    measure = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(measure)
    import rasterio

    with rasterio.open(path) as ds:
        rgb = ds.read()
    masks = measure.class_masks(rgb)
    for name, (mean, cov) in MEASURED.items():
        s = measure.stats(rgb, masks[name])
        assert np.allclose(s["mean"], mean, atol=0.051), name
        assert np.allclose(s["cov"], cov, atol=0.051), name


def test_a_classifier_trained_on_the_world_reads_the_real_scene():
    """Per-pixel Gaussian classes fitted on synthetic pixels put land on Andros, deep water in the Tongue of
    the Ocean, shallow water on the Great Bahama Bank and cloud on the big cumulus (a floor for real models)."""
    path = shared_path("data", "real", "RGB.byte.tif")
    import rasterio

    x, y = training_pairs(16, 256, seed=1)
    px, cls = np.moveaxis(x, 1, -1).reshape(-1, 3).astype(float), y.ravel()
    with rasterio.open(path) as ds:
        real = ds.read()
    scores = []
    for code in (DEEP_WATER, SHALLOW, REEF, LAND, CLOUD):
        p = px[cls == code]
        cov = np.cov(p.T) + np.eye(3)
        d = np.moveaxis(real, 0, -1).reshape(-1, 3) - p.mean(0)
        scores.append(-0.5 * np.einsum("ij,jk,ik->i", d, np.linalg.inv(cov), d) - 0.5 * np.linalg.slogdet(cov)[1])
    pred = (np.argmax(scores, 0) + 1).reshape(real.shape[1:])
    regions = {  # (rows, cols) picked by eye, as in pipelines/measure_bahamas_colours.py
        LAND: (slice(300, 450), slice(300, 380)),  # Andros
        DEEP_WATER: (slice(360, 600), slice(470, 540)),  # the Tongue of the Ocean
        SHALLOW: (slice(150, 350), slice(120, 240)),  # the Great Bahama Bank west of Andros
        CLOUD: (slice(70, 130), slice(430, 480)),  # the big cumulus north of Andros
    }
    for code, where in regions.items():
        valid = (real[(slice(None), *where)] != 0).any(0)
        assert (pred[where][valid] == code).mean() > 0.55, code


# -- readers, lazy arrays, specs ------------------------------------------------------------------------------
def test_reader_reads_the_world_and_pads_with_nodata():
    gb = synthetic_geobox((300, 500))
    reader = SyntheticReader(gb, SyntheticWorld(seed=2))
    assert reader.band_names == ("red", "green", "blue") and reader.dtype == np.uint8 and reader.nodata == 0
    win = Window(-20, 100, 450, 530)  # over the top and right edges
    rgb, truth = reader.read(win), reader.truth(win)
    ref_rgb, ref_truth = render(SyntheticWorld(seed=2), Window(0, 100, 450, 500))
    assert np.array_equal(rgb[:, 20:, :50], ref_rgb) and np.array_equal(truth[20:, :50], ref_truth)
    assert not rgb[:, :20].any() and not rgb[:, :, 50:].any()
    assert not truth[:20].any() and not truth[:, 50:].any()
    both = reader.read_with_truth(win)
    assert np.array_equal(both[0], rgb) and np.array_equal(both[1], truth)
    assert not reader.truth(Window(400, 410, 0, 10)).any()


def test_spec_round_trip_and_pickle_give_identical_pixels():
    reader = SyntheticReader(synthetic_geobox(512, resolution=30.0), SyntheticWorld(seed=9, cloud_cover=0.1))
    spec = json.loads(json.dumps(reader.spec()))
    assert spec["kind"] == "synthetic"
    win = Window(10, 200, 30, 300)
    again = open_reader(spec)
    unpickled = pickle.loads(pickle.dumps(reader))
    for other in (again, unpickled):
        assert isinstance(other, SyntheticReader) and other.world == reader.world
        assert other.geobox.same_grid(reader.geobox)
        assert np.array_equal(other.read(win), reader.read(win))
        assert np.array_equal(other.truth(win), reader.truth(win))


def test_mosaic_and_truth_are_lazy_aligned_and_match_the_reader(monkeypatch):
    import reefmap.synthetic.reader as synthetic

    calls = []
    real_render = synthetic.render
    monkeypatch.setattr(synthetic, "render", lambda *a, **k: calls.append(a) or real_render(*a, **k))
    m = synthetic_mosaic((700, 900), seed=4, chunks=256)
    truth = synthetic_truth((700, 900), seed=4, chunks=256)
    assert calls == []  # nothing rendered yet
    assert m.dims == ("band", "y", "x") and m.dtype == np.uint8 and m.shape == (3, 700, 900)
    assert truth.dims == ("y", "x") and truth.dtype == np.uint8 and truth.shape == (700, 900)
    assert m.data.chunks[1:] == truth.data.chunks and m.data.chunks[1][0] == 256
    assert np.array_equal(m.y.values, truth.y.values) and np.array_equal(m.x.values, truth.x.values)
    assert m.rio.crs == truth.rio.crs and m.rio.crs.to_epsg() == 32618
    assert m.rio.transform() == truth.rio.transform() == synthetic_geobox((700, 900)).transform
    reader = reader_of(m)
    win = Window(250, 300, 500, 620)  # across chunk borders
    sub = m.isel(y=slice(250, 300), x=slice(500, 620))
    assert np.array_equal(sub.values, reader.read(win))
    assert np.array_equal(truth.isel(y=slice(250, 300), x=slice(500, 620)).values, reader.truth(win))
    assert truth.attrs["flag_meanings"].split() == ["deep_water", "shallow", "reef", "land", "cloud"]


def test_geobox_origin_and_shape():
    gb = synthetic_geobox(100)
    assert gb.shape == Shape(100, 100) and gb.crs == "EPSG:32618" and gb.resolution_x == 300.0
    lon, lat = gb.geographic_bounds().left, gb.geographic_bounds().top
    assert -80 < lon < -77 and 24 < lat < 27  # the Bahamas
    gb = synthetic_geobox((10, 20), resolution=0.01, crs="EPSG:4326")
    assert gb.shape == Shape(10, 20) and gb.transform.c == pytest.approx(-78.96)
    gb = synthetic_geobox(8, origin=(0.0, 0.0))
    assert gb.transform == Affine(300.0, 0.0, 0.0, 0.0, -300.0, 0.0)


WEB_MERCATOR_HALF = 20037508.342789244
GLOBAL = GeoBox(Shape(2**27, 2**27), Affine(2 * WEB_MERCATOR_HALF / 2**27, 0, -WEB_MERCATOR_HALF, 0,
                                            -2 * WEB_MERCATOR_HALF / 2**27, WEB_MERCATOR_HALF), "EPSG:3857")


def test_a_global_grid_costs_nothing_until_read():
    t0 = time.perf_counter()
    reader = SyntheticReader(GLOBAL)
    win = Window(2**27 - 50, 2**27 + 14, 2**26, 2**26 + 64)  # the grid's last rows, and past them
    rgb, truth = reader.read(win), reader.truth(win)
    assert time.perf_counter() - t0 < 5.0
    ref_rgb, ref_truth = render(SyntheticWorld(), Window(2**27 - 50, 2**27, 2**26, 2**26 + 64))
    assert np.array_equal(rgb[:, :50], ref_rgb) and np.array_equal(truth[:50], ref_truth)
    assert not rgb[:, 50:].any() and not truth[50:].any()
    assert open_reader(json.loads(json.dumps(reader.spec()))).geobox.same_grid(GLOBAL)


def test_a_global_mosaic_builds_without_materialising_its_grid():
    """synthetic_mosaic over a 2**27 px square grid (2**34 chunks): lazy coordinates and an O(1) graph.

    In a subprocess with a memory cap: per-block ``block_info`` or coordinate arrays as long as the grid
    (a gigabyte each) would not fit, so this fails rather than slowly passing.
    """
    code = textwrap.dedent(f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
        from affine import Affine
        from xarray.indexes import RangeIndex
        from reefmap.geometry.grid import GeoBox, Shape
        from reefmap.synthetic.reader import SyntheticReader, synthetic_mosaic, synthetic_truth
        from reefmap.geometry.grid import Window
        g = GeoBox(Shape(2**27, 2**27), Affine(*{list(GLOBAL.transform)[:6]}), "EPSG:3857")
        m = synthetic_mosaic(geobox=g)
        t = synthetic_truth(geobox=g)
        assert isinstance(m.xindexes["x"], RangeIndex) and isinstance(m.xindexes["y"], RangeIndex)
        assert m.data.numblocks == (1, 2**17, 2**17)
        w = m.isel(y=slice(2**26, 2**26 + 8), x=slice(5, 20))
        assert abs(w.x.values[0] - (g.transform.c + 5.5 * g.transform.a)) < 1e-6
        v = w.values
        ref = SyntheticReader(g).read(Window(2**26, 2**26 + 8, 5, 20))
        assert (v == ref).all() and t.isel(y=slice(0, 4), x=slice(0, 4)).values.shape == (4, 4)
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0 and out.stdout.split()[-1] == "ok", out.stderr[-2000:]


# -- training pairs --------------------------------------------------------------------------------------------
def test_training_pairs_are_deterministic_windows_of_the_world():
    x, y = training_pairs(3, 64, seed=11)
    assert x.shape == (3, 3, 64, 64) and y.shape == (3, 64, 64) and x.dtype == y.dtype == np.uint8
    x2, y2 = training_pairs(3, 64, seed=11)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    x3, _ = training_pairs(3, 64, seed=12)
    assert not np.array_equal(x, x3)
    assert set(np.unique(y)) <= {NODATA, DEEP_WATER, SHALLOW, REEF, LAND, CLOUD}
    assert training_pairs(0, 8)[0].shape == (0, 3, 8, 8)
    xw, _ = training_pairs(2, 32, seed=11, world=SyntheticWorld(seed=11, cloud_cover=0.5))
    assert xw.shape == (2, 3, 32, 32)


# -- parameter validation --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, word", [
    ({"seed": -1}, "seed"),
    ({"seed": 2**63}, "seed"),
    ({"seed": 1.5}, "seed"),
    ({"seed": True}, "seed"),
    ({"bank_cover": 0.0}, "bank_cover"),
    ({"bank_cover": 1.0}, "bank_cover"),
    ({"island_density": -0.1}, "island_density"),
    ({"island_density": 0.5, "bank_cover": 0.4}, "island_density"),
    ({"atoll_density": 1.5}, "atoll_density"),
    ({"reef_cover": float("nan")}, "reef_cover"),
    ({"seagrass_cover": "lots"}, "seagrass_cover"),
    ({"cloud_cover": 1.0}, "cloud_cover"),
    ({"cloud_shadows": "yes"}, "cloud_shadows"),
    ({"nodata_fraction": 0.9}, "nodata_fraction"),
])
def test_invalid_world_parameters_are_named(kwargs, word):
    with pytest.raises(InvalidParameter, match=word):
        SyntheticWorld(**kwargs)


def test_other_invalid_arguments():
    with pytest.raises(InvalidParameter, match="unknown SyntheticWorld parameters"):
        SyntheticWorld.from_json({"seed": 1, "reef_density": 0.2})
    for bad in (0, -5, (10,), (10, 0), 2.5, "big", True):
        with pytest.raises(InvalidParameter, match="size_or_shape"):
            synthetic_geobox(bad)
    with pytest.raises(InvalidParameter, match="resolution"):
        synthetic_geobox(10, resolution=0)
    with pytest.raises(InvalidParameter, match="conflicts"):
        synthetic_mosaic(64, seed=3, world=SyntheticWorld(seed=4))
    with pytest.raises(InvalidParameter, match="world"):
        synthetic_mosaic(64, world={"seed": 1})
    with pytest.raises(InvalidParameter, match="malformed"):
        open_reader({"kind": "synthetic", "geobox": synthetic_geobox(8).to_json()})
    with pytest.raises(InvalidParameter, match="size"):
        training_pairs(2, 0)
    with pytest.raises(InvalidParameter, match="geobox"):
        SyntheticReader((10, 10))
