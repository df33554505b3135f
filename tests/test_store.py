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
