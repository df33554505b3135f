"""The few things products read from a map store that ``MapStore`` does not offer publicly yet.

Each function wraps one ``MapStore`` internal, so that switching to the public read-only API is one edit here.
"""

from __future__ import annotations

import os

import numpy as np

from reefmap.geometry.grid import TileGrid
from reefmap.store.mapstore import MapStore


def open_group(url: str, storage_options: dict, mode: str = "r"):
    """The map's Zarr group, opened in ``mode`` (raises zarr's own errors when there is none)."""
    return MapStore(url, storage_options)._open_group(mode)  # TODO(merge): use MapStore public API


def read_states(url: str, storage_options: dict, group) -> np.ndarray:
    """All tile states of the map, read through the already open (read-only) ``group``."""
    ms = MapStore(url, storage_options)
    ms._group = group  # TODO(merge): use MapStore public API
    return ms.states()


def status_keys(url: str, storage_options: dict, group) -> np.ndarray:
    """(n, 2) int64 array of the tiles that have a recorded state (one listing of the ``tile_status`` chunks)."""
    ms = MapStore(url, storage_options)
    ms._group = group  # TODO(merge): use MapStore public API
    return np.array(ms._status_keys(), dtype=np.int64).reshape(-1, 2)


def writable_group(url: str, storage_options: dict):
    """The map's Zarr group opened for writing (overviews are written inside the map)."""
    return MapStore(url, storage_options).group


def spatial_ref_attrs(grid: TileGrid) -> dict:
    """The CF grid-mapping attributes (with ``GeoTransform``) of a grid, as the map's ``spatial_ref`` holds them."""
    from reefmap.store import mapstore

    return mapstore._spatial_ref_attrs(grid)  # TODO(merge): use MapStore public API


def is_url(path: str | os.PathLike) -> bool:
    """Is ``path`` a remote (fsspec) URL rather than a local path?"""
    from reefmap.store import mapstore

    return mapstore._is_url(os.fspath(path))  # TODO(merge): use MapStore public API


def normalise_url(path: str | os.PathLike) -> str:
    """A URL as is, a local path (or ``file://`` URL) made absolute: the store rule for naming a map."""
    from reefmap.store import mapstore

    return mapstore._normalise_url(path)  # TODO(merge): use MapStore public API
