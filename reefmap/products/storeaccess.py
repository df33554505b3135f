"""What products read from a map store, through ``MapStore``'s public read-only API."""

from __future__ import annotations

import numpy as np

from reefmap.store.format import STATUS_PATH, TILES_GROUP
from reefmap.store.mapstore import MapStore


def open_group(url: str, storage_options: dict, mode: str = "r"):
    """The map's Zarr group, opened in ``mode`` (raises zarr's own errors when there is none)."""
    return MapStore(url, storage_options, mode).open_group()


def read_states(url: str, storage_options: dict, group) -> np.ndarray:
    """All tile states of the map, read through the already open (read-only) ``group``."""
    return MapStore(url, storage_options, "r", group=group).states()


def read_tile_states(url: str, storage_options: dict, group, iy, ix) -> np.ndarray:
    """The states of the tiles ``(iy[k], ix[k])`` (unreadable ones, and finished ones whose data are missing, read
    as pending: ``MapStore.read_states``)."""
    return MapStore(url, storage_options, "r", group=group).read_states(iy, ix)


def has_tile_states(members: set) -> bool:
    """Do a map's root ``members`` hold its tile states (``tiles/status``, or a format-1 map's ``tile_status``)?"""
    return bool(members & {TILES_GROUP, STATUS_PATH[1]})


def status_keys(url: str, storage_options: dict, group) -> np.ndarray:
    """(n, 2) int64 array of the tiles that have a recorded state (one listing of the ``tile_status`` chunks)."""
    keys = MapStore(url, storage_options, "r", group=group).status_keys()
    return np.array(keys, dtype=np.int64).reshape(-1, 2)


def writable_group(url: str, storage_options: dict):
    """The map's Zarr group opened for writing (overviews are written inside the map); a local map with symlinks
    among its folders is refused (``MapStore.check_no_symlinks``)."""
    store = MapStore(url, storage_options)
    store.check_no_symlinks()
    return store.group
