"""A "done" tile is really there: proofs, ``reefmap verify [--repair]``, the run's check, unreadable tile states,
what a plain xarray reader sees (pending ≠ nodata ≠ no reef), rioxarray and NetCDF on the plain path, format 1."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from conftest import textured
from reefmap.cli.main import main as cli_main
from reefmap.errors import DamagedMap
from reefmap.execute.runner import run
from reefmap.products.query import query
from reefmap.products.stats import stats
from reefmap.store.format import CLASS_NODATA, FILL_VALUES, PROOF_FIELDS, UNFINISHED, TileState
from reefmap.store.integrity import verify
from reefmap.store.mapstore import MapStore
from reefmap.store.status import status

TILE = 64
ARRAYS = ("reef_probability", "classification", "tiles/status", "tiles/proof")


@pytest.fixture(scope="module")
def mosaic():
    from affine import Affine

    from reefmap.geometry.grid import GeoBox, Shape
    from reefmap.sources import memory_reader
    from reefmap.sources.base import reader_to_dataarray

    arr = textured((256, 320), seed=7, nodata_box=(0, 160, 0, 96))  # tiles (0,0), (1,0) and their halos: nodata
    gb = GeoBox(Shape(256, 320), Affine(30.0, 0, 200000.0, 0, -30.0, 2700000.0), "EPSG:32618")
    reader = memory_reader(arr, gb, nodata=0, band_names=["red", "green", "blue"])
    yield reader_to_dataarray(reader, chunks=128)
    reader.release()


def _run(mosaic, bundle, out, **kw):
    return run(mosaic, bundle.path, out, tile=TILE, client="inprocess", progress=False, **kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, mosaic, random_bundle):
    """An uninterrupted run: the map every repaired or resumed map must equal byte for byte."""
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    s = _run(mosaic, random_bundle, out)
    assert s.computed == 20 and s.failed == 0 and s.skipped >= 2
    return out


@pytest.fixture
def finished(reference, tmp_path):
    """A copy of the finished reference map."""
    out = tmp_path / "m.zarr"
    shutil.copytree(reference, out)
    return out


def chunk_files(path: Path) -> dict[str, bytes]:
    out = {}
    for name in ARRAYS:
        root = path / name / "c"
        out.update({f"{name}/{p.relative_to(root)}": p.read_bytes() for p in root.rglob("*") if p.is_file()})
    return out


def assert_same_map(path, reference):
    got, want = chunk_files(Path(path)), chunk_files(Path(reference))
    assert got.keys() == want.keys()
    assert [k for k in got if got[k] != want[k]] == []


def cli(capsys, *args):
    code = cli_main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


# -- item 4: lost or corrupt data chunks --------------------------------------------------------------------------
def test_every_finished_tile_records_the_size_and_checksum_of_its_chunks(finished):
    import google_crc32c

    store = MapStore.open_readonly(finished)
    proofs = store.proofs()
    assert len(proofs) == 20 and store.proof_array().attrs["fields"] == list(PROOF_FIELDS)
    for (iy, ix), p in proofs.items():
        for j, name in enumerate(("reef_probability", "classification")):
            f = finished / name / "c" / str(iy) / str(ix)
            if p[1 + 2 * j] == 0:  # no chunk expected: an all-nodata tile's probability equals the fill value
                assert not f.exists() and name == "reef_probability" and store.states()[iy, ix] == 2
            else:
                b = f.read_bytes()
                assert (p[1 + 2 * j], p[2 + 2 * j]) == (len(b), google_crc32c.value(b))


def test_the_proof_is_written_after_the_data_and_the_state_after_the_proof(mosaic, random_bundle, tmp_path,
                                                                           monkeypatch):
    keys = []  # every file moved into place (zarr's LocalStore and reefmap's own writes both rename a written file)
    orig = os.replace
    root = tmp_path / "m.zarr"

    def replace(src, dst, *a, **kw):
        if Path(dst).is_relative_to(root):
            keys.append(Path(dst).relative_to(root).as_posix())
        return orig(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", replace)
    _run(mosaic, random_bundle, root, bbox=None)
    for iy, ix in ((0, 0), (2, 3)):
        order = [keys.index(f"{name}/c/{iy}/{ix}{suffix}") for name, suffix in
                 (("classification", ""), ("tiles/proof", "/0"), ("tiles/status", ""))]
        assert order == sorted(order), order


def test_deleted_chunks_are_seen_by_status_stats_verify_and_recomputed_by_run(finished, reference, mosaic,
                                                                              random_bundle, capsys):
    for name in ("reef_probability", "classification"):
        (finished / name / "c" / "2" / "3").unlink()
    st = status(str(finished))
    assert st["percent_done"] < 100 and st["pending"] == 1 and st["missing_data_tiles"] == [[2, 3]]
    code, out, _ = cli(capsys, "status", finished)
    assert "1 finished tiles with missing data chunks (2,3)" in out
    assert stats(str(finished))["complete_fraction"] < 1
    code, out, _ = cli(capsys, "verify", finished, "--json")
    r = json.loads(out)
    assert code == 1 and not r["clean"] and r["damaged_tiles"] == [{"tile": [2, 3], "problem": "classification chunk missing"}]
    s = _run(mosaic, random_bundle, finished)
    assert s.computed == 1 and s.damaged == {(2, 3): "classification chunk missing"}
    assert_same_map(finished, reference)
    assert verify(finished)["clean"]


def test_a_damaged_chunk_of_another_size_is_caught_by_the_runs_cheap_check(finished, reference, mosaic,
                                                                          random_bundle, monkeypatch):
    f = finished / "reef_probability" / "c" / "1" / "2"
    f.write_bytes(os.urandom(f.stat().st_size // 2))
    monkeypatch.setattr(MapStore, "chunk_digests", lambda *a, **k: pytest.fail("the cheap check read chunks"))
    s = _run(mosaic, random_bundle, finished)
    assert s.computed == 1 and "reef_probability chunk is" in s.damaged[(1, 2)]
    assert "1 damaged tile(s) recomputed (tile 1,2: reef_probability chunk is" in str(s)
    assert_same_map(finished, reference)


def test_random_bytes_in_a_chunk_verify_reports_it_reads_fail_clearly_repair_then_run_restores_it(
        finished, reference, mosaic, random_bundle, capsys):
    f = finished / "classification" / "c" / "3" / "1"
    f.write_bytes(np.random.default_rng(0).integers(0, 256, f.stat().st_size, np.uint8).tobytes())  # same size
    assert status(str(finished))["percent_done"] == 100.0  # the state cannot know: verify does
    code, out, _ = cli(capsys, "verify", finished)
    assert code == 1 and "tile 3,1: classification chunk checksum differs" in out and "--repair" in out
    with pytest.raises(DamagedMap, match=r"tile 3,1 .*reefmap verify .* --repair"):
        stats(str(finished))
    with pytest.raises(DamagedMap, match="reefmap verify"):
        query(str(finished), bbox=(-180, -90, 180, 90)).classification.values
    code, _, err = cli(capsys, "stats", finished)
    assert code == 2 and err.startswith("reefmap: error: ") and "Traceback" not in err and "verify" in err
    assert _run(mosaic, random_bundle, finished).computed == 0  # same size: only the checksum tells
    code, out, _ = cli(capsys, "verify", finished, "--repair")
    assert code == 0 and "repaired: 1 tiles marked pending" in out
    assert status(str(finished))["pending"] == 1 and not f.exists()
    assert stats(str(finished))["complete_fraction"] == pytest.approx(19 / 20)  # unfinished, not damaged
    s = _run(mosaic, random_bundle, finished)
    assert s.computed == 1
    assert_same_map(finished, reference)


def test_run_with_verify_recomputes_a_tile_whose_checksum_differs(finished, reference, mosaic, random_bundle):
    f = finished / "reef_probability" / "c" / "2" / "2"
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0xFF
    f.write_bytes(bytes(b))
    s = _run(mosaic, random_bundle, finished, verify=True)
    assert s.computed == 1 and "checksum differs" in s.damaged[(2, 2)]
    assert_same_map(finished, reference)


# -- item 5: unreadable tile states ------------------------------------------------------------------------------
@pytest.mark.parametrize("content", [b"", b"\x01\x01", bytes([122]), np.random.default_rng(3).bytes(37)],
                         ids=["empty", "two-bytes", "invalid-code", "random"])
def test_an_unreadable_tile_state_reads_as_pending_and_is_recomputed(finished, reference, mosaic, random_bundle,
                                                                      capsys, content):
    (finished / "tiles" / "status" / "c" / "1" / "3").write_bytes(content)
    st = status(str(finished))
    assert st["unreadable_states"] == 1 and st["unreadable_state_tiles"] == [[1, 3]] and st["pending"] == 1
    code, out, _ = cli(capsys, "status", finished, "--json")
    assert code == 0 and json.loads(out)["unreadable_state_tiles"] == [[1, 3]]
    code, out, _ = cli(capsys, "status", finished)
    assert "1 unreadable tile states (1,3)" in out
    assert stats(str(finished))["complete_fraction"] == pytest.approx(19 / 20)
    q = query(str(finished), bbox=(-180, -90, 180, 90))
    assert (q.classification.values == UNFINISHED).sum() == TILE * TILE
    s = _run(mosaic, random_bundle, finished)
    assert s.computed == 1 and s.damaged == {(1, 3): "its state is unreadable"}
    assert_same_map(finished, reference)


# -- item 10: the stored encoding tells pending, nodata and no reef apart ---------------------------------------
def test_plain_xarray_tells_pending_from_nodata_and_from_no_reef(mosaic, random_bundle, tmp_path):
    out = tmp_path / "part.zarr"
    from reefmap.execute.runner import RunOptions, execute, prepare

    plan, job, store = prepare(mosaic, random_bundle.path, out, tile=TILE)
    part = np.zeros(tuple(plan.grid.shape), bool)
    part[:2, :3] = True  # tiles (0,0) and (1,0) are all nodata
    execute(plan.__class__(plan.grid, plan.halo, part), job, store, options=RunOptions(progress=False))
    ds = xr.open_zarr(out, consolidated=False)
    cls, prob = ds.classification.values, ds.reef_probability.values
    meanings = dict(zip(ds.classification.attrs["flag_values"], ds.classification.attrs["flag_meanings"].split()))
    assert meanings[UNFINISHED] == "unfinished" and meanings[CLASS_NODATA] == "nodata"
    assert (cls[128:, :] == UNFINISHED).all() and np.isnan(prob[128:, :]).all()  # pending
    assert (cls[:128, :64] == CLASS_NODATA).all() and np.isnan(prob[:128, :64]).all()  # nodata
    mapped = cls[:128, 96:192]
    assert np.isin(mapped, [1, 2, 3, 4, 5]).all() and np.isfinite(prob[:128, 96:192]).all()  # mapped, reef or not
    assert (mapped != 3).any() and (prob[:128, 96:192] < 0.5).any()  # "no reef" is a finite value, not NaN
    assert (out / "classification" / "c" / "0" / "0").exists()  # an all-nodata tile writes its class chunk
    assert ds.reef_probability.attrs["valid_range"] == [0, 250]


# -- item 12: the plain xarray path works with rioxarray and NetCDF --------------------------------------------
def test_plain_xarray_map_clips_reprojects_and_writes_netcdf(finished, tmp_path):
    import rioxarray  # noqa: F401

    ds = xr.open_zarr(finished, consolidated=False)
    assert set(ds.data_vars) == {"reef_probability", "classification"}
    x0, y1 = float(ds.x[70]), float(ds.y[10])
    clip = ds.rio.clip_box(minx=x0, miny=float(ds.y[100]), maxx=float(ds.x[200]), maxy=y1)
    assert clip.sizes["x"] == 131 and clip.sizes["y"] == 91
    np.testing.assert_array_equal(clip.classification.values, ds.classification.values[10:101, 70:201])
    geo = ds.rio.reproject("EPSG:4326")
    assert geo.rio.crs.to_epsg() == 4326 and np.isin(np.unique(geo.classification.values), [0, 1, 2, 3, 4, 5]).all()
    ds.to_netcdf(tmp_path / "m.nc")
    back = xr.open_dataset(tmp_path / "m.nc")
    np.testing.assert_array_equal(back.classification.values, ds.classification.values)
    np.testing.assert_allclose(back.reef_probability.values, ds.reef_probability.values, equal_nan=True)
    assert json.loads(back.attrs["reefmap"])["format"] == "reefmap-map/2"


# -- format 1 maps are still read and resumed ---------------------------------------------------------------------
def as_format1(path: Path) -> None:
    """Turn a finished format-2 map into what format 1 wrote: root ``tile_status``, ``reefmap`` a dict,
    classification filled with nodata (0, its chunks of all-nodata tiles absent), no proofs, no ``tiles`` group."""
    root = json.loads((path / "zarr.json").read_text())
    meta = json.loads(root["attributes"]["reefmap"])
    root["attributes"]["reefmap"] = {**meta, "format": "reefmap-map/1"}
    (path / "zarr.json").write_text(json.dumps(root))
    shutil.move(path / "tiles" / "status", path / "tile_status")
    shutil.rmtree(path / "tiles")
    zj = path / "classification" / "zarr.json"
    meta = json.loads(zj.read_text())
    meta["fill_value"] = FILL_VALUES[1]["classification"]
    meta["attributes"]["flag_values"] = meta["attributes"]["flag_values"][:-1]
    meta["attributes"]["flag_meanings"] = meta["attributes"]["flag_meanings"].rsplit(" ", 1)[0]
    zj.write_text(json.dumps(meta))
    states = MapStore.open_readonly(path).states()
    for iy, ix in np.argwhere(states == TileState.SKIPPED_NODATA).tolist():
        (path / "classification" / "c" / str(iy) / str(ix)).unlink()


def test_a_format1_map_is_read_status_queried_verified_and_resumed(finished, reference, mosaic, random_bundle):
    as_format1(finished)
    store = MapStore.open_readonly(finished)
    assert store.version == 1 and store.status_path == "tile_status"
    full = store.states().copy()
    assert status(str(finished))["percent_done"] == 100.0
    assert stats(str(finished))["complete_fraction"] == 1.0
    ref = query(str(reference), bbox=(-180, -90, 180, 90))
    got = query(str(finished), bbox=(-180, -90, 180, 90))
    np.testing.assert_array_equal(got.classification.values, ref.classification.values)
    r = verify(finished)
    assert r["clean"] and r["unproven"] == 20 and r["format"] == 1
    for iy, ix in ((0, 0), (2, 3)):  # two tiles killed before their state was written: a resume computes them
        (finished / "tile_status" / "c" / str(iy) / str(ix)).unlink()
    s = _run(mosaic, random_bundle, finished)
    assert s.computed == 2 and not s.damaged
    np.testing.assert_array_equal(MapStore.open_readonly(finished).states(), full)
    got = query(str(finished), bbox=(-180, -90, 180, 90))
    np.testing.assert_array_equal(got.classification.values, ref.classification.values)
    r = verify(finished)
    assert r["clean"] and r["unproven"] == 18 and r["intact"] == 2
    assert not (finished / "tiles" / "status").exists()  # still format 1: its states stay where they were


def test_the_cli_run_takes_verify_and_the_demo_points_at_open_map(monkeypatch, capsys, tmp_path):
    from reefmap.cli.main import build_parser

    assert build_parser().parse_args(["run", "--out", "m.zarr", "--verify"]).verify is True
    import reefmap.execute.demo as demo

    monkeypatch.setattr(demo, "run_demo", lambda out, **kw: {"summary": "ok", "store": str(tmp_path / "d.zarr"),
                                                              "png": "p.png"})
    code, out, _ = cli(capsys, "demo", "--out", tmp_path)
    assert code == 0 and f"reefmap.open_map({str(tmp_path / 'd.zarr')!r})" in out and "xr.open_zarr" not in out
    import reefmap

    assert reefmap.verify is verify and "verify" in reefmap.__all__
