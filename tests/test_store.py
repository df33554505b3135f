"""The map store's public read API: read-only opening, tile-state listings and reads, grid coordinates."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from affine import Affine

from map_fixtures import make_map
from reefmap.errors import NotAReefmapStore, StoreError
from reefmap.geometry.grid import GeoBox, Shape
from reefmap.store.format import TileState
from reefmap.store.mapstore import MapStore, spatial_ref_attrs

D, P, F = TileState.DONE, TileState.PENDING, TileState.FAILED
GB = GeoBox(Shape(64, 96), Affine(30.0, 0, 200000.0, 0, -30.0, 2700000.0), "EPSG:32618")


def test_readonly_store_reads_states_and_refuses_writes(tmp_path):
    states = np.array([[D, P, F], [P, D, D]], np.uint8)
    store, *_ = make_map(tmp_path / "m.zarr", GB, 32, states)
    ro = MapStore.open_readonly(store.url)
    assert ro.mode == "r" and "read-only" in repr(ro)
    assert pickle.loads(pickle.dumps(ro)).mode == "r"
    np.testing.assert_array_equal(ro.states(), states)
    assert sorted(ro.status_keys()) == sorted(map(tuple, np.argwhere(states != P).tolist()))
    np.testing.assert_array_equal(ro.read_states([0, 0, 1], [0, 2, 1]), [D, F, D])
    assert ro.read_states([], []).shape == (0,)
    assert ro.grid.geobox.same_grid(GB)
    with pytest.raises(StoreError, match="read-only"):
        ro.mark((0, 1), TileState.DONE)
    assert MapStore(store.url).states()[0, 1] == P
    with pytest.raises(NotAReefmapStore):
        MapStore.open_readonly(tmp_path / "nothing.zarr").group


def test_grid_coordinates_are_what_rioxarray_reads(tmp_path):
    import rioxarray  # noqa: F401  (registers .rio)
    import xarray as xr

    store, *_ = make_map(tmp_path / "m.zarr", GB, 32, np.full((2, 3), D, np.uint8))
    ds = xr.open_zarr(store.url, consolidated=False)
    assert ds.rio.crs.to_epsg() == 32618 and tuple(ds.rio.transform())[:6] == tuple(GB.transform)[:6]
    assert spatial_ref_attrs(GB)["GeoTransform"].split()[0] == "200000.0"
    np.testing.assert_allclose(ds.x.values, GB.xs())


def test_damaged_tile_states_read_as_pending_one_by_one_and_in_bulk_on_an_fsspec_store():
    import fsspec

    from reefmap.geometry.grid import Window

    url = "memory://reefmap-test-damaged-states/m.zarr"
    store, *_ = make_map(url, GB, 32, np.array([[D, D, F], [P, D, D]], np.uint8))
    fs = fsspec.filesystem("memory")
    root = "/reefmap-test-damaged-states/m.zarr/tiles/status/c"
    fs.pipe(f"{root}/0/1", b"")  # empty
    fs.pipe(f"{root}/1/2", b"\x01\x01")  # two bytes
    fs.pipe(f"{root}/1/1", bytes([77]))  # not a state
    scan = MapStore.open_readonly(url).scan_states()
    assert scan.unreadable.tolist() == [[0, 1], [1, 1], [1, 2]]
    np.testing.assert_array_equal(scan.states, [[D, P, F], [P, P, P]])
    np.testing.assert_array_equal(MapStore.open_readonly(url).read_states([0, 0, 1, 1], [0, 1, 1, 2]), [D, P, P, P])
    store.write_tile(Window(32, 64, 32, 64), np.zeros((32, 32), np.uint8), np.ones((32, 32), np.uint8))
    store.mark((1, 1), D)  # a run recomputes it: readable again
    assert MapStore.open_readonly(url).states()[1, 1] == D


def test_a_finished_tile_whose_data_chunk_is_gone_reads_as_pending(tmp_path):
    store, *_ = make_map(tmp_path / "m.zarr", GB, 32, np.full((2, 3), D, np.uint8))
    (tmp_path / "m.zarr" / "classification" / "c" / "1" / "2").unlink()
    scan = store.scan_states()
    assert scan.missing.tolist() == [[1, 2]] and scan.states[1, 2] == P and (scan.states == D).sum() == 5
    np.testing.assert_array_equal(store.read_states([1, 1], [1, 2]), [D, P])


def test_provenance_is_a_json_string_and_format1_dicts_still_read():
    from reefmap.store.format import decode_meta, encode_meta, format_version

    meta = {"format": "reefmap-map/2", "grid": {"tile": 4}}
    assert isinstance(encode_meta(meta), str) and decode_meta(encode_meta(meta)) == meta
    assert decode_meta({"format": "reefmap-map/1"}) == {"format": "reefmap-map/1"}
    assert decode_meta("not json") is None and decode_meta(3) is None
    assert format_version({"format": "reefmap-map/1"}) == 1 and format_version({"format": "other/2"}) == 0


def test_a_store_another_run_is_creating_is_joined_and_a_foreign_folder_is_refused(tmp_path):
    """Two runs creating one store race: the loser may find the folder before its root ``zarr.json`` is renamed
    into place (only a ``*.partial`` file and members). It joins the creation instead of calling the folder
    foreign (seen in CI as 'already exists and is not a reefmap map'); a folder with anything else is refused."""
    from reefmap.geometry.grid import TileGrid

    grid = TileGrid(GB, 32)
    out = tmp_path / "m.zarr"
    (out / "spatial_ref").mkdir(parents=True)
    (out / "zarr.0123abcd.partial").write_bytes(b'{"zarr_format"')  # the creator's root metadata, half-written
    store = MapStore.create_or_open(str(out), grid, {"model": "x"}, {})
    assert store.attrs["identity"]["model"] == "x" and store.states().shape == tuple(grid.shape)
    foreign = tmp_path / "f.zarr"
    (foreign / "spatial_ref").mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(NotAReefmapStore, match="already exists and is not a reefmap map"):
        MapStore.create_or_open(str(foreign), grid, {"model": "x"}, {})
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt", "spatial_ref"]  # nothing written
