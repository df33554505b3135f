"""Open a reefmap map lazily: its levels (the map and its overviews), tile states and chunk-aligned dask readers.

``open_map(store)`` → a lazy ``xarray.Dataset`` of the whole map; ``tile_states(store)`` → the per-tile states
as a ``DataArray`` on (tile_y, tile_x). Nothing but metadata (root attributes, tile states) is read until the
data are computed, and then only the chunks asked for, and only those of *finished* tiles (a pending tile's
pixels are known without reading: they are unfinished).

Encoding of the layers in every Dataset of ``reefmap.products`` (and in the files ``reefmap.products.export``
writes; the codes come from ``reefmap.store.format``):

- ``reef_probability`` float32 in [0, 1]; NaN where there is no probability: nodata, an unfinished tile, or
  outside the query polygon (``tile_state`` tells which);
- ``classification`` uint8: ``CLASS_NODATA`` nodata, the codes of the map's class scheme (``MapInfo.scheme``, in
  its CF attributes: ``reefmap.store.format.classification_attrs``), ``UNFINISHED`` where the pixel's tile is
  pending or failed (not yet mapped: neither "no reef" nor nodata);
- ``tile_state`` uint8 per pixel: the state of the pixel's tile (a ``TileState``), ``OUTSIDE`` outside the
  query polygon.

A pixel is *finished* when its tile's state is done or skipped (``reefmap.store.format.is_finished``);
``complete_fraction`` is the share of the pixels (inside the polygon, when one is given) that are finished.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, Iterable

import numpy as np

from reefmap.classes import ClassScheme
from reefmap.errors import DamagedMap, InvalidParameter, NotAReefmapStore, UnknownLayer
from reefmap.geometry.grid import BBox, GeoBox, Shape, TileGrid, Window
from reefmap.sources import urls
from reefmap.store.format import (DATA_VARS, META_ATTR, OUTSIDE, PROB_NODATA, PROB_SCALE, STORE_FORMAT,
                                  UNFINISHED, TileState, classification_attrs, decode_meta, is_finished, has_tile_states,
                                  scheme_of_meta)
from reefmap.store.mapstore import MapStore

#: the data layers a query can return (``tile_state`` is always included)
LAYERS = DATA_VARS

OVERVIEWS_GROUP = "overviews"
OVERVIEWS_ATTR = "reefmap_overviews"


# ------------------------------------------------------------------------------------------------------------
# the map and its levels (metadata only)
# ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Level:
    """One resolution level of a map: level 0 is the map itself, level k is its 2^k-coarser overview."""

    index: int
    path: str                       # the Zarr group holding this level's arrays ("" for the root)
    geobox: GeoBox
    chunk: int                      # Zarr chunk size (pixels) of this level's arrays
    states: np.ndarray | None       # tile states (map tile grid) this level's pixels reflect; None: read when needed
    tile: int                       # the map's tile size (level-0 pixels)

    @property
    def factor(self) -> int:
        return 2 ** self.index

    @property
    def pixel_size(self) -> float:
        t = self.geobox.transform
        return max(abs(t.a), abs(t.e))

    def tiles_of(self, win: Window) -> tuple[slice, slice]:
        """The map tiles (rows, columns) under a window of this level."""
        f, t = self.factor, self.tile
        return (slice(win.row_start * f // t, (win.row_stop * f - 1) // t + 1),
                slice(win.col_start * f // t, (win.col_stop * f - 1) // t + 1))

    def states_block(self, rows: slice, cols: slice) -> np.ndarray:
        """The tile state of every pixel of a block of this level (a constant block when it lies in one tile)."""
        f, t = self.factor, self.tile
        r0, r1 = rows.start * f // t, (rows.stop * f - 1) // t
        c0, c1 = cols.start * f // t, (cols.stop * f - 1) // t
        shape = (rows.stop - rows.start, cols.stop - cols.start)
        if r0 == r1 and c0 == c1:
            return np.full(shape, self.states[r0, c0], np.uint8)
        tr = (np.arange(rows.start, rows.stop) * f) // t
        tc = (np.arange(cols.start, cols.stop) * f) // t
        return self.states[np.ix_(tr, tc)]

    def count_finished(self, win: Window) -> tuple[int, int]:
        """(finished pixels, pixels) of a window of this level, from the tile states alone."""
        tr = (np.arange(win.row_start, win.row_stop) * self.factor) // self.tile
        tc = (np.arange(win.col_start, win.col_stop) * self.factor) // self.tile
        rows = np.bincount(tr, minlength=self.states.shape[0])
        cols = np.bincount(tc, minlength=self.states.shape[1])
        fin = is_finished(self.states).astype(np.int64)
        return int(rows @ fin @ cols), int(rows.sum() * cols.sum())


class MapInfo:
    """What ``open_map``/``query`` need to know about a store: its URL, grid, levels, read-only Zarr ``group``;
    tile states on demand."""

    #: above this many tiles, find the recorded tile states with one listing instead of reading tile by tile
    DIRECT_READS = 64

    def __init__(self, url: str, storage_options: dict, grid: TileGrid, levels: list[Level], attrs: dict, group):
        self.url, self.storage_options, self.grid, self.levels, self.attrs = url, storage_options, grid, levels, attrs
        self.group = group
        self.store = MapStore(url, storage_options, "r", group=group)  # reads tile states through ``group``
        self._states: np.ndarray | None = None
        self._keys: np.ndarray | None = None

    @property
    def crs(self) -> str:
        return self.grid.geobox.crs

    @cached_property
    def scheme(self) -> ClassScheme:
        """The map's class scheme (recorded at creation; the demo scheme for maps that record none)."""
        return scheme_of_meta(self.attrs)

    @cached_property
    def lonlat_bounds(self) -> BBox:
        """The map's extent in lon/lat (the whole globe when it cannot be transformed)."""
        try:
            return self.grid.geobox.geographic_bounds()
        except Exception:
            return BBox(-180.0, -90.0, 180.0, 90.0)

    def extent_text(self) -> str:
        b = self.lonlat_bounds
        return f"W={b.left:.4f}, S={b.bottom:.4f}, E={b.right:.4f}, N={b.top:.4f} (lon/lat)"

    @property
    def states(self) -> np.ndarray:
        """All tile states (a listing of the tile_status chunks, then one read per recorded tile)."""
        if self._states is None:
            self._states = self.store.states()
        return self._states

    def read_states(self, mask: np.ndarray) -> np.ndarray:
        """Tile states where ``mask`` (bool over the tile grid) is set, 0 (pending) elsewhere. A few tiles are
        read directly; many through one listing of the recorded states (absent = pending), then reading those."""
        out = np.zeros(tuple(self.grid.shape), np.uint8)
        n = int(mask.sum())
        if n == 0:
            return out
        if self._states is not None:
            return np.where(mask, self._states, np.uint8(TileState.PENDING)).astype(np.uint8)
        if n > self.DIRECT_READS:
            if self._keys is None:
                self._keys = np.array(self.store.status_keys(), dtype=np.int64).reshape(-1, 2)
            k = self._keys
            k = k[mask[k[:, 0], k[:, 1]]] if len(k) else k
            iy, ix = k[:, 0], k[:, 1]
        else:
            iy, ix = np.nonzero(mask)
        if len(iy):
            out[iy, ix] = self.store.read_states(iy, ix)
        return out

    def tiles_mask(self, lvl: Level, windows: Iterable[Window]) -> np.ndarray:
        mask = np.zeros(tuple(self.grid.shape), bool)
        for w in windows:
            mask[lvl.tiles_of(w)] = True
        return mask

    def with_states(self, lvl: Level, windows: list[Window]) -> tuple[Level, int]:
        """``lvl`` with the tile states its pixels under ``windows`` reflect, and how many of those tiles finished
        since (an overview shows its build-time snapshot; the map itself, the states read now)."""
        if lvl.states is None:
            return replace(lvl, states=self.read_states(self.tiles_mask(lvl, windows))), 0
        maybe = self.tiles_mask(lvl, windows) & ~is_finished(lvl.states)  # finished tiles never change
        return lvl, int(np.count_nonzero(is_finished(self.read_states(maybe)) & maybe))

    def level(self, k: int) -> Level:
        for lvl in self.levels:
            if lvl.index == k:
                return lvl
        raise InvalidParameter(f"map {self.url!r} has no overview level {k}; it has levels "
                               f"{[lvl.index for lvl in self.levels]} (build them with `reefmap overviews`)")

    def pick_level(self, resolution: float | None) -> Level:
        """The coarsest level whose pixel size is ≤ ``resolution`` (store CRS units); level 0 when none is."""
        if resolution is None:
            return self.levels[0]
        try:
            r = float(resolution)
        except (TypeError, ValueError):
            raise InvalidParameter(f"resolution {resolution!r} is not a number (give it in the map CRS's units, "
                                   f"{crs_units(self.crs)})") from None
        if not (math.isfinite(r) and r > 0):
            raise InvalidParameter(f"resolution {resolution!r} must be a positive number of {crs_units(self.crs)}")
        ok = [lvl for lvl in self.levels if lvl.pixel_size <= r * (1 + 1e-9)]
        return max(ok, key=lambda lvl: lvl.pixel_size) if ok else self.levels[0]


def crs_units(crs: str) -> str:
    """The plural name of a CRS's axis unit ("metres", "degrees"), for messages."""
    from pyproj import CRS

    try:
        return CRS.from_user_input(crs).axis_info[0].unit_name + "s"
    except Exception:  # pragma: no cover - exotic CRS without axis info
        return "CRS units"


def store_url(store) -> tuple[str, dict]:
    """(URL, storage options) of a path, URL or ``MapStore``."""
    import os

    if isinstance(store, MapStore):
        return store.url, dict(store.storage_options)
    if not isinstance(store, (str, os.PathLike)):
        raise InvalidParameter(f"store {store!r} is not a path or URL of a reefmap map")
    return urls.normalize(store), {}


def inspect_map(store, storage_options: dict | None = None) -> MapInfo:
    """Open ``store`` read-only and describe it; ``NotAReefmapStore`` if it is not a reefmap map."""
    if isinstance(store, MapInfo):
        return store
    url, so = store_url(store)
    so = {**so, **(storage_options or {})}
    try:
        g = MapStore(url, so, "r").open_group()
    except Exception as e:  # a missing path, a bare array, a foreign file: zarr raises several kinds
        raise NotAReefmapStore(
            f"{url!r} is not a reefmap map: no Zarr v3 group there ({type(e).__name__}: {e}); "
            "give the path or URL of a map written by `reefmap run`") from None
    meta = decode_meta(g.attrs.get(META_ATTR))
    if meta is None or not str(meta.get("format", "")).startswith(STORE_FORMAT.split("/")[0]):
        raise NotAReefmapStore(
            f"{url!r} is a Zarr group but not a reefmap map (no 'reefmap' attributes with format {STORE_FORMAT!r}); "
            "give the path or URL of a map written by `reefmap run`")
    members = {k for k, _ in g.members()}
    missing = set(DATA_VARS) - members | (set() if has_tile_states(members) else {"tiles/status"})
    if missing:
        raise NotAReefmapStore(f"{url!r} has reefmap attributes but lacks {sorted(missing)}: an incomplete or "
                               "damaged map; re-run `reefmap run` with the same --out to finish creating it")
    grid = TileGrid.from_json(meta["grid"])
    if not grid.geobox.is_axis_aligned:
        raise InvalidParameter(f"map {url!r} has a rotated grid; queries need a north-up, axis-aligned grid")
    levels = [Level(0, "", grid.geobox, int(g["reef_probability"].chunks[0]), None, grid.tile)]
    if OVERVIEWS_GROUP in members:
        levels += _overview_levels(g[OVERVIEWS_GROUP], grid)
    return MapInfo(url, so, grid, levels, dict(meta), g)


def _overview_levels(ov, grid: TileGrid) -> list[Level]:
    info = ov.attrs.get(OVERVIEWS_ATTR)
    if not (isinstance(info, dict) and "tile_status" in ov):
        return []
    snap = np.asarray(ov["tile_status"][...], np.uint8)
    if snap.shape != tuple(grid.shape):
        return []
    return [Level(k, f"{OVERVIEWS_GROUP}/{k}", overview_geobox(grid.geobox, k), int(info.get("chunk", grid.tile)),
                  snap, grid.tile) for k in range(1, int(info.get("levels", 0)) + 1)]


def overview_geobox(geobox: GeoBox, k: int) -> GeoBox:
    """The grid of overview level ``k``: pixels 2^k times larger, the same origin, partial last pixels kept."""
    from affine import Affine

    f = 2 ** k
    return GeoBox(Shape(-(-geobox.shape.y // f), -(-geobox.shape.x // f)), geobox.transform @ Affine.scale(f), geobox.crs)


# ------------------------------------------------------------------------------------------------------------
# lazy, chunk-aligned reads (one task per Zarr chunk; unfinished tiles are never read)
# ------------------------------------------------------------------------------------------------------------
class LevelReader:
    """Reads blocks of one level's layers; pickles without its open Zarr arrays."""

    def __init__(self, url: str, storage_options: dict, level: Level, group=None):
        self.url, self.storage_options, self.level = url, storage_options, level
        self._arrays: dict[str, Any] = {}
        self._group = group

    def __getstate__(self):
        return {"url": self.url, "storage_options": self.storage_options, "level": self.level}

    def __setstate__(self, d):
        self.__dict__.update(d)
        self._arrays = {}
        self._group = None

    @cached_property
    def token(self) -> str:
        from dask.base import tokenize

        lv = self.level
        return tokenize(self.url, lv.path, lv.geobox.to_json(), lv.chunk, lv.tile, lv.states.tobytes(), lv.states.shape)

    def array(self, var: str):
        a = self._arrays.get(var)
        if a is None:
            if self._group is None:
                self._group = MapStore(self.url, self.storage_options, "r").open_group()
            a = self._arrays[var] = self._group[f"{self.level.path}/{var}" if self.level.path else var]
        return a

    def states_block(self, rows: slice, cols: slice) -> np.ndarray:
        return self.level.states_block(rows, cols)

    def read_raw(self, var: str, rows: slice, cols: slice) -> np.ndarray:
        """The stored uint8 codes of a block of a layer; ``DamagedMap`` naming the tile when they cannot be decoded."""
        try:
            return self.array(var)[rows, cols]
        except Exception as e:
            f, t = self.level.factor, self.level.tile
            tile = f"{rows.start * f // t},{cols.start * f // t}"
            where = f"overview level {self.level.index} at map tile" if self.level.index else "tile"
            raise DamagedMap(
                f"map {self.url!r}: the {var} chunk of {where} {tile} cannot be read ({type(e).__name__}: {e}); "
                f"run `reefmap verify {self.url} --repair`, then `reefmap run` again to recompute it") from None

    def read_block(self, var: str, rows: slice, cols: slice) -> np.ndarray:
        """One block of a layer, decoded (see the module docstring); unfinished tiles are not read."""
        st = self.level.states_block(rows, cols)
        if var == "tile_state":
            return st
        fin = is_finished(st)
        all_fin = bool(fin.all())
        raw = self.read_raw(var, rows, cols) if all_fin or fin.any() else None
        if var == "classification":
            if raw is None:
                return np.full(st.shape, UNFINISHED, np.uint8)
            return raw if all_fin else np.where(fin, raw, np.uint8(UNFINISHED)).astype(np.uint8, copy=False)
        if raw is None:
            return np.full(st.shape, np.nan, np.float32)
        out = raw.astype(np.float32)
        out /= np.float32(PROB_SCALE)
        bad = raw == PROB_NODATA
        if not all_fin:
            bad |= ~fin
        out[bad] = np.nan
        return out


def _edges(start: int, stop: int, chunk: int) -> list[int]:
    first = (start // chunk + 1) * chunk
    return [start, *range(first, stop, chunk), stop]


_DTYPES = {"reef_probability": np.float32, "classification": np.uint8, "tile_state": np.uint8}


def lazy_layer(reader: LevelReader, var: str, win: Window):
    """A dask array of one layer over a window of the reader's level, one task per Zarr chunk."""
    import dask.array as da
    from dask.base import tokenize

    re_, ce = _edges(win.row_start, win.row_stop, reader.level.chunk), _edges(win.col_start, win.col_stop, reader.level.chunk)
    name = f"reefmap-{var.replace('_', '-')}-{tokenize(reader.token, var, win.to_json())}"
    dsk = {(name, i, j): (reader.read_block, var, slice(r0, r1), slice(c0, c1))
           for i, (r0, r1) in enumerate(zip(re_[:-1], re_[1:])) for j, (c0, c1) in enumerate(zip(ce[:-1], ce[1:]))}
    chunks = (tuple(np.diff(re_).tolist()), tuple(np.diff(ce).tolist()))
    dtype = np.dtype(_DTYPES[var])
    return da.Array(dsk, name, chunks, dtype=dtype, meta=np.empty((0, 0), dtype))


def var_attrs(var: str, scheme: ClassScheme | None = None) -> dict:
    """The CF attributes of a layer (``reef_probability``, ``classification`` in the map's class ``scheme``,
    ``tile_state``)."""
    if var == "reef_probability":
        return {"long_name": "probability that the pixel is coral reef", "units": "1", "valid_range": [0.0, 1.0],
                "comment": "NaN where nodata, in an unfinished tile, or outside the query polygon (see tile_state)"}
    if var == "classification":
        return {"long_name": "benthic/surface class", **classification_attrs(scheme),
                "comment": f"{UNFINISHED} = the pixel's tile is not finished yet (pending or failed): not mapped"}
    states = [int(s) for s in TileState] + [OUTSIDE]
    return {"long_name": "state of the pixel's tile", "flag_values": states,
            "flag_meanings": " ".join([s.name.lower() for s in TileState] + ["outside_geometry"]),
            "comment": "done and skipped_* are finished; pending and failed are unfinished"}


def level_dataset(info: MapInfo, lvl: Level, win: Window, layers: Iterable[str]):
    """A lazy Dataset of ``layers`` and ``tile_state`` over a window of a level (``lvl.states`` must be set)."""
    import xarray as xr

    reader = LevelReader(info.url, info.storage_options, lvl, info.group)
    gb = lvl.geobox.window(win)
    data = {v: xr.DataArray(lazy_layer(reader, v, win), dims=("y", "x"), attrs=var_attrs(v, info.scheme))
            for v in (*layers, "tile_state")}
    return xr.Dataset(data, coords={"y": ("y", gb.ys()), "x": ("x", gb.xs())})


def georeference(ds, geobox: GeoBox, attrs: dict):
    """``ds`` with its CRS and transform written (so ``ds.rio`` works) and ``attrs`` added."""
    import rioxarray  # noqa: F401  (registers .rio)

    ds = ds.rio.write_crs(geobox.crs).rio.write_coordinate_system().rio.write_transform(geobox.transform)
    ds.attrs.update(attrs)
    return ds


def check_layers(layers) -> tuple[str, ...]:
    """The layers asked for (None: both; a comma-separated text; ``tile_state`` is always included anyway)."""
    if layers is None:
        return LAYERS
    if isinstance(layers, str):
        layers = [s for s in layers.split(",") if s] if layers != "both" else list(LAYERS)
    out = []
    for name in layers:
        if name == "tile_state":
            continue
        if name not in LAYERS:
            raise UnknownLayer(f"unknown layer {name!r}; the map's layers are {', '.join(LAYERS)} "
                               "(tile_state is always included)")
        if name not in out:
            out.append(name)
    return tuple(out)


# ------------------------------------------------------------------------------------------------------------
# the public openers
# ------------------------------------------------------------------------------------------------------------
def open_map(store, storage_options: dict | None = None, *, level: int = 0, layers=None):
    """The whole map as a lazy ``xarray.Dataset`` (see the module docstring for the encoding).

    Variables: the ``layers`` asked for (default ``reef_probability`` and ``classification``) and ``tile_state``
    (y, x); coordinates ``x``, ``y`` (pixel centres) and ``spatial_ref`` (so ``ds.rio.crs`` and
    ``ds.rio.transform()`` work). ``level`` > 0 opens an overview level (``build_overviews``). Attributes:
    ``complete_fraction``, ``level``, ``resolution``, ``store``, ``tile_size``, ``stale_overview_tiles`` (tiles
    finished since the overview level was built: unfinished there until ``build_overviews`` refreshes it). The per-tile states are
    ``tile_states(store)``. ``store`` is a path, any fsspec URL (``memory://``, ``file://``, ``gs://``) or a
    ``MapStore``.
    """
    info = inspect_map(store, storage_options)
    lvl = info.level(level)
    if lvl.states is None:
        lvl, stale = replace(lvl, states=info.states), 0
    else:  # an overview: the tiles finished since it was built show as unfinished there
        stale = int(np.count_nonzero(is_finished(info.states) & ~is_finished(lvl.states)))
    win = Window(0, lvl.geobox.shape.y, 0, lvl.geobox.shape.x)
    ds = level_dataset(info, lvl, win, check_layers(layers))
    fin, n = lvl.count_finished(win)
    return georeference(ds, lvl.geobox, {"store": urls.redact(info.url), "level": lvl.index, "resolution": lvl.pixel_size,
                                         "tile_size": info.grid.tile, "complete_fraction": fin / n,
                                         "stale_overview_tiles": stale, "unfinished_code": UNFINISHED})


def tile_states(store, storage_options: dict | None = None, *, level: int = 0):
    """The state of every tile of the map as a ``DataArray`` on (tile_y, tile_x) (``TileState`` codes; ``level``
    > 0: the snapshot that overview level reflects). Coordinates ``tile_y``/``tile_x`` are tile indices; the
    attributes give the tile size and the codes' meanings."""
    import xarray as xr

    info = inspect_map(store, storage_options)
    lvl = info.level(level)
    states = info.states if lvl.states is None else lvl.states
    ny, nx = states.shape
    attrs = {"long_name": "per-tile state (TileState codes)", "tile_size": info.grid.tile, "store": urls.redact(info.url),
             "level": lvl.index, "flag_values": [int(s) for s in TileState],
             "flag_meanings": " ".join(s.name.lower() for s in TileState)}
    return xr.DataArray(states.copy(), dims=("tile_y", "tile_x"),
                        coords={"tile_y": np.arange(ny), "tile_x": np.arange(nx)}, name="tile_status", attrs=attrs)
