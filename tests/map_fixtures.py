"""Maps written directly (no model) for the query, export, statistics and overview tests, and a chunk-read counter.

    from map_fixtures import CountingReads, make_map, patterns, write_map
"""

from __future__ import annotations

import numpy as np

from reefmap.geometry.grid import TileGrid
from reefmap.store.format import TileState
from reefmap.store.mapstore import MapStore


def patterns(shape):
    """Deterministic uint8 layers: probability codes 0..250 (some 255 nodata) and classes 0..5."""
    r, c = np.mgrid[0:shape[0], 0:shape[1]]
    prob = ((r * 7 + c * 3) % 251).astype(np.uint8)
    cls = ((r // 5 + c // 7) % 6).astype(np.uint8)
    prob[cls == 0] = 255
    return prob, cls


def write_map(path, geobox, tile, prob, cls, states, *, written=None, storage_options=None):
    """Write ``prob``/``cls`` in bulk where ``written`` (a per-tile mask; default: every tile that is not pending),
    nodata elsewhere, then the tile ``states``. Returns the store and the per-pixel states."""
    grid = TileGrid(geobox, tile)
    states = np.asarray(states, np.uint8)
    assert states.shape == tuple(grid.shape), (states.shape, tuple(grid.shape))
    written = states != TileState.PENDING if written is None else np.asarray(written, bool)
    ny, nx = geobox.shape

    def per_pixel(a):
        return np.repeat(np.repeat(a, tile, 0), tile, 1)[:ny, :nx]

    keep = per_pixel(written)
    store = MapStore.create_or_open(str(path), grid, {"model": "synthetic"}, {"note": "test"}, storage_options)
    store.array("reef_probability")[...] = np.where(keep, prob, 255).astype(np.uint8)
    store.array("classification")[...] = np.where(keep, cls, 0).astype(np.uint8)
    store.array(store.status_path)[...] = states
    return store, per_pixel(states)


def make_map(path, geobox, tile, states, *, write_pending=False, storage_options=None):
    """A map of ``patterns``; ``write_pending`` also writes the pixels of pending tiles (a tile killed after its
    write, before its mark). Returns the store, the full layers and the tile states."""
    prob, cls = patterns(tuple(geobox.shape))
    written = np.ones(np.shape(states), bool) if write_pending else None
    store, _ = write_map(path, geobox, tile, prob, cls, states, written=written, storage_options=storage_options)
    return store, prob, cls, np.asarray(states, np.uint8)


class CountingReads:
    """Counts the chunk keys read from zarr's LocalStore (its ``get``, patched), by array name."""

    def __init__(self, monkeypatch):
        from zarr.storage import LocalStore

        self.keys: list[str] = []
        orig = LocalStore.get

        async def get(store, key, *a, **kw):
            self.keys.append(key)
            return await orig(store, key, *a, **kw)

        monkeypatch.setattr(LocalStore, "get", get)

    def chunks(self, var):
        return sorted({k.split("/c/")[1] for k in self.keys if k.startswith(var + "/c/")})
