"""Query a reefmap map: open it lazily, cut regional subsets by lon/lat box or polygon, at full or overview resolution.

``open_map(store)`` → a lazy ``xarray.Dataset`` of the whole map; ``query(store, bbox=..., geometry=...,
resolution=..., layers=...)`` → a ``QueryResult`` holding the subset as a lazy Dataset plus how much of it is
finished. Nothing but metadata (root attributes, tile states) is read until the data are computed, and then
only the chunks that intersect the subset, and only those of *finished* tiles (a pending tile's pixels are
known without reading: they are unfinished).

Encoding of the layers in every Dataset this module returns (and in the files ``reefmap.products.export`` writes):

- ``reef_probability`` float32 in [0, 1]; NaN where there is no probability: nodata, an unfinished tile, or
  outside the query polygon (``tile_state`` tells which);
- ``classification`` uint8: 0 nodata, 1..5 the classes of ``reefmap.classes``, **254 = unfinished** (the
  pixel's tile is pending or failed: not yet mapped — neither "no reef" nor nodata);
- ``tile_state`` uint8 per pixel: the state of the pixel's tile (``TileState``: 0 pending, 1 done, 2/3/4
  skipped for nodata/land/deep water, 9 failed), **255 = outside the query polygon**.

A pixel is *finished* when its tile's state is done or skipped; ``complete_fraction`` is the share of the
subset's pixels (inside the polygon, when one is given) that are finished.

Boxes are lon/lat (EPSG:4326) ``W,S,E,N``; W > E means the box crosses the antimeridian. On a store whose CRS
wraps around the globe (geographic or Mercator) the two pieces are concatenated west to east with the eastern
piece's x shifted by one period (e.g. 170..190 in degrees), so the result stays one regular grid; on any other
store the pieces that intersect the map are used (their bounding window). ``resolution`` is in the store CRS's
units (degrees for EPSG:4326, metres for UTM/Web Mercator) and picks the coarsest overview level (see
``reefmap.products.overviews``) whose pixel size is ≤ it.
"""

from __future__ import annotations

import json
import math
import os
import threading
import warnings
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, Iterable

import numpy as np

from reefmap.classes import CLASSES
from reefmap.errors import BBoxError, GeometryError, InvalidParameter, NotAReefmapStore, UnknownLayer
from reefmap.geometry.grid import BBox, GeoBox, Shape, TileGrid, Window
from reefmap.store.format import (CLASS_NODATA, FINISHED_CODES, OUTSIDE, PROB_NODATA, PROB_SCALE, STORE_FORMAT,
                                  UNFINISHED, TileState)
from reefmap.store.mapstore import MapStore

#: the data layers a query can return (``tile_state`` is always included)
LAYERS = ("reef_probability", "classification")
ALL_VARS = (*LAYERS, "tile_state")

OVERVIEWS_GROUP = "overviews"
OVERVIEWS_ATTR = "reefmap_overviews"

_FINISHED = FINISHED_CODES
_MERCATOR_LAT = 85.05112877980659


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


class MapInfo:
    """What ``open_map``/``query`` need to know about a store: its URL, grid, levels; tile states on demand."""

    #: above this many tiles, find the recorded tile states with one listing instead of reading tile by tile
    DIRECT_READS = 64

    def __init__(self, url: str, storage_options: dict, grid: TileGrid, levels: list[Level], attrs: dict, group):
        self.url, self.storage_options, self.grid, self.levels, self.attrs = url, storage_options, grid, levels, attrs
        self._group = group
        self._states: np.ndarray | None = None
        self._keys: np.ndarray | None = None

    @property
    def crs(self) -> str:
        return self.grid.geobox.crs

    @property
    def states(self) -> np.ndarray:
        """All tile states (a listing of the tile_status chunks, then one read per recorded tile)."""
        if self._states is None:
            ms = MapStore(self.url, self.storage_options)
            ms._group = self._group  # read through this read-only group
            self._states = ms.states()
        return self._states

    def read_states(self, mask: np.ndarray) -> np.ndarray:
        """Tile states where ``mask`` (bool over the tile grid) is set, 0 (pending) elsewhere. A few tiles are
        read directly; many through one listing of the recorded states (absent = pending), then reading those."""
        out = np.zeros(tuple(self.grid.shape), np.uint8)
        n = int(mask.sum())
        if n == 0:
            return out
        if self._states is not None:
            return np.where(mask, self._states, np.uint8(0)).astype(np.uint8)
        if n > self.DIRECT_READS:
            if self._keys is None:
                ms = MapStore(self.url, self.storage_options)
                ms._group = self._group  # list through this read-only group
                self._keys = np.array(ms._status_keys(), dtype=np.int64).reshape(-1, 2)
            k = self._keys
            k = k[mask[k[:, 0], k[:, 1]]] if len(k) else k
            iy, ix = k[:, 0], k[:, 1]
        else:
            iy, ix = np.nonzero(mask)
        if len(iy):
            out[iy, ix] = self._group["tile_status"].vindex[iy, ix]
        return out

    def window_states(self, lvl: Level, windows: Iterable[Window]) -> np.ndarray:
        """Tile states over the map's tile grid, read only for the tiles under ``windows`` (others: pending)."""
        return self.read_states(self.tiles_mask(lvl, windows))

    def tiles_mask(self, lvl: Level, windows: Iterable[Window]) -> np.ndarray:
        mask = np.zeros(tuple(self.grid.shape), bool)
        for w in windows:
            mask[lvl.tiles_of(w)] = True
        return mask

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
                                   f"{_units(self.crs)})") from None
        if not (math.isfinite(r) and r > 0):
            raise InvalidParameter(f"resolution {resolution!r} must be a positive number of {_units(self.crs)}")
        ok = [lvl for lvl in self.levels if lvl.pixel_size <= r * (1 + 1e-9)]
        return max(ok, key=lambda lvl: lvl.pixel_size) if ok else self.levels[0]


def _units(crs: str) -> str:
    from pyproj import CRS

    try:
        return CRS.from_user_input(crs).axis_info[0].unit_name + "s"
    except Exception:  # pragma: no cover - exotic CRS without axis info
        return "CRS units"


def _open_group(url: str, storage_options: dict, mode: str = "r"):
    return MapStore(url, storage_options)._open_group(mode)


def _as_url(store) -> tuple[str, dict]:
    if isinstance(store, MapStore):
        return store.url, dict(store.storage_options)
    from reefmap.store.mapstore import _normalise_url

    if not isinstance(store, (str, os.PathLike)):
        raise InvalidParameter(f"store {store!r} is not a path or URL of a reefmap map")
    return _normalise_url(store), {}


def inspect_map(store, storage_options: dict | None = None) -> MapInfo:
    """Open ``store`` read-only and describe it; ``NotAReefmapStore`` if it is not a reefmap map."""
    if isinstance(store, MapInfo):
        return store
    url, so = _as_url(store)
    so = {**so, **(storage_options or {})}
    try:
        g = _open_group(url, so, "r")
    except Exception as e:  # a missing path, a bare array, a foreign file: zarr raises several kinds
        raise NotAReefmapStore(
            f"{url!r} is not a reefmap map: no Zarr v3 group there ({type(e).__name__}: {e}); "
            "give the path or URL of a map written by `reefmap run`") from None
    meta = g.attrs.get("reefmap")
    if not isinstance(meta, dict) or not str(meta.get("format", "")).startswith(STORE_FORMAT.split("/")[0]):
        raise NotAReefmapStore(
            f"{url!r} is a Zarr group but not a reefmap map (no 'reefmap' attributes with format {STORE_FORMAT!r}); "
            "give the path or URL of a map written by `reefmap run`")
    members = {k for k, _ in g.members()}
    missing = {"reef_probability", "classification", "tile_status"} - members
    if missing:
        raise NotAReefmapStore(f"{url!r} has reefmap attributes but lacks {sorted(missing)}: an incomplete or "
                               "damaged map; re-run `reefmap run` with the same --out to finish creating it")
    grid = TileGrid.from_json(meta["grid"])
    if not grid.geobox.is_axis_aligned:
        raise InvalidParameter(f"map {url!r} has a rotated grid; queries need a north-up, axis-aligned grid")
    levels = [Level(0, "", grid.geobox, int(g["reef_probability"].chunks[0]), None, grid.tile)]
    if OVERVIEWS_GROUP in members:
        ov = g[OVERVIEWS_GROUP]
        info = ov.attrs.get(OVERVIEWS_ATTR)
        if isinstance(info, dict) and "tile_status" in ov:
            snap = np.asarray(ov["tile_status"][...], np.uint8)
            if snap.shape == tuple(grid.shape):
                for k in range(1, int(info.get("levels", 0)) + 1):
                    levels.append(Level(k, f"{OVERVIEWS_GROUP}/{k}", overview_geobox(grid.geobox, k),
                                        int(info.get("chunk", grid.tile)), snap, grid.tile))
    return MapInfo(url, so, grid, levels, dict(meta), g)


def overview_geobox(geobox: GeoBox, k: int) -> GeoBox:
    """The grid of overview level ``k``: pixels 2^k times larger, the same origin, partial last pixels kept."""
    from affine import Affine

    f = 2 ** k
    return GeoBox(Shape(-(-geobox.shape.y // f), -(-geobox.shape.x // f)), geobox.transform @ Affine.scale(f), geobox.crs)


# ------------------------------------------------------------------------------------------------------------
# lazy, chunk-aligned reads (one task per Zarr chunk; unfinished tiles are never read)
# ------------------------------------------------------------------------------------------------------------
class _LevelReader:
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
                self._group = _open_group(self.url, self.storage_options, "r")
            a = self._arrays[var] = self._group[f"{self.level.path}/{var}" if self.level.path else var]
        return a

    def states_block(self, rows: slice, cols: slice) -> np.ndarray:
        """The tile state of every pixel of a block (a constant block when it lies in one tile)."""
        lv = self.level
        f, t = lv.factor, lv.tile
        r0, r1 = rows.start * f // t, (rows.stop * f - 1) // t
        c0, c1 = cols.start * f // t, (cols.stop * f - 1) // t
        shape = (rows.stop - rows.start, cols.stop - cols.start)
        if r0 == r1 and c0 == c1:
            return np.full(shape, lv.states[r0, c0], np.uint8)
        tr = (np.arange(rows.start, rows.stop) * f) // t
        tc = (np.arange(cols.start, cols.stop) * f) // t
        return lv.states[np.ix_(tr, tc)]


def _read_block(reader: _LevelReader, var: str, rows: slice, cols: slice) -> np.ndarray:
    st = reader.states_block(rows, cols)
    if var == "tile_state":
        return st
    fin = np.isin(st, _FINISHED)
    all_fin = bool(fin.all())
    raw = reader.array(var)[rows, cols] if all_fin or fin.any() else None
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


def _lazy_layer(reader: _LevelReader, var: str, win: Window):
    import dask.array as da

    re_, ce = _edges(win.row_start, win.row_stop, reader.level.chunk), _edges(win.col_start, win.col_stop, reader.level.chunk)
    from dask.base import tokenize

    name = f"reefmap-{var.replace('_', '-')}-{tokenize(reader.token, var, win.to_json())}"
    dsk = {(name, i, j): (_read_block, reader, var, slice(r0, r1), slice(c0, c1))
           for i, (r0, r1) in enumerate(zip(re_[:-1], re_[1:])) for j, (c0, c1) in enumerate(zip(ce[:-1], ce[1:]))}
    chunks = (tuple(np.diff(re_).tolist()), tuple(np.diff(ce).tolist()))
    dtype = np.dtype(_DTYPES[var])
    return da.Array(dsk, name, chunks, dtype=dtype, meta=np.empty((0, 0), dtype))


def _var_attrs(var: str) -> dict:
    if var == "reef_probability":
        return {"long_name": "probability that the pixel is coral reef", "units": "1", "valid_range": [0.0, 1.0],
                "comment": "NaN where nodata, in an unfinished tile, or outside the query polygon (see tile_state)"}
    if var == "classification":
        return {"long_name": "benthic/surface class", "flag_values": [CLASS_NODATA, *CLASSES.values(), UNFINISHED],
                "flag_meanings": " ".join(["nodata", *CLASSES, "unfinished"]),
                "comment": f"{UNFINISHED} = the pixel's tile is not finished yet (pending or failed): not mapped"}
    states = [int(s) for s in TileState] + [OUTSIDE]
    return {"long_name": "state of the pixel's tile", "flag_values": states,
            "flag_meanings": " ".join([s.name.lower() for s in TileState] + ["outside_geometry"]),
            "comment": "done and skipped_* are finished; pending and failed are unfinished"}


def _dataset(info: MapInfo, lvl: Level, win: Window, layers: Iterable[str]):
    import rioxarray  # noqa: F401  (registers .rio)
    import xarray as xr

    reader = _LevelReader(info.url, info.storage_options, lvl, info._group)
    gb = lvl.geobox.window(win)
    data = {v: xr.DataArray(_lazy_layer(reader, v, win), dims=("y", "x"), attrs=_var_attrs(v))
            for v in (*layers, "tile_state")}
    ds = xr.Dataset(data, coords={"y": ("y", gb.ys()), "x": ("x", gb.xs())})
    return ds


def _finish_dataset(ds, crs: str, attrs: dict):
    ds = ds.rio.write_crs(crs)
    ds = ds.rio.write_coordinate_system()
    ds.attrs.update(attrs)
    return ds


def _count_finished(lvl: Level, win: Window) -> tuple[int, int]:
    """(finished pixels, pixels) of a level window, from the tile states alone."""
    tr = (np.arange(win.row_start, win.row_stop) * lvl.factor) // lvl.tile
    tc = (np.arange(win.col_start, win.col_stop) * lvl.factor) // lvl.tile
    rows = np.bincount(tr, minlength=lvl.states.shape[0])
    cols = np.bincount(tc, minlength=lvl.states.shape[1])
    fin = np.isin(lvl.states, _FINISHED).astype(np.int64)
    return int(rows @ fin @ cols), int(rows.sum() * cols.sum())


def _check_layers(layers) -> tuple[str, ...]:
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


def open_map(store, storage_options: dict | None = None, *, level: int = 0, layers=None):
    """The whole map as a lazy ``xarray.Dataset`` (see the module docstring for the encoding).

    Variables: ``reef_probability``, ``classification``, ``tile_state`` (y, x) and ``tile_status``
    (tile_y, tile_x); coordinates ``x``, ``y`` (pixel centres) and ``spatial_ref`` (so ``ds.rio.crs`` works).
    ``level`` > 0 opens an overview level (``build_overviews``). Attributes: ``complete_fraction``, ``level``,
    ``store``, ``tile_size``. ``store`` is a path, any fsspec URL (``memory://``, ``file://``, ``gs://``) or a
    ``MapStore``.
    """
    info = inspect_map(store, storage_options)
    lvl = info.level(level)
    if lvl.states is None:
        lvl = replace(lvl, states=info.states)
    win = Window(0, lvl.geobox.shape.y, 0, lvl.geobox.shape.x)
    ds = _dataset(info, lvl, win, _check_layers(layers))
    ds["tile_status"] = (("tile_y", "tile_x"), lvl.states.copy(),
                         {"long_name": "per-tile state (TileState codes)", "tile_size": info.grid.tile,
                          **{k: v for k, v in _var_attrs("tile_state").items() if k != "comment"}})
    fin, n = _count_finished(lvl, win)
    return _finish_dataset(ds, info.crs, {"store": info.url, "level": lvl.index, "tile_size": info.grid.tile,
                                           "complete_fraction": fin / n})


# ------------------------------------------------------------------------------------------------------------
# boxes and polygons → windows and masks
# ------------------------------------------------------------------------------------------------------------
def parse_bbox(bbox) -> BBox:
    """``W,S,E,N`` (text, sequence or ``BBox``) in lon/lat degrees; W > E crosses the antimeridian."""
    b = BBox.parse(bbox) if not isinstance(bbox, BBox) else BBox.parse(list(bbox))
    if not all(-180.0 <= v <= 180.0 for v in (b.left, b.right)) or not all(-90.0 <= v <= 90.0 for v in (b.bottom, b.top)):
        raise BBoxError(
            f"bbox {tuple(b)} is not in lon/lat degrees (longitudes must lie in [-180, 180], latitudes in [-90, 90]); "
            "give W,S,E,N in EPSG:4326 — projected coordinates (metres) are not accepted")
    return b


def _wrap_period(crs: str) -> float | None:
    """The x period of a CRS that wraps around the globe (geographic: 360°, Mercator: the equator); else None."""
    from pyproj import CRS, Transformer

    c = CRS.from_user_input(crs)
    if c.is_geographic:
        unit = c.axis_info[0].unit_name if c.axis_info else "degree"
        return 360.0 if "degree" in unit else None
    op = c.coordinate_operation
    if c.is_projected and op is not None and "mercator" in op.method_name.lower() and "transverse" not in op.method_name.lower():
        lon0 = 0.0
        for p in op.params:
            if "longitude" in p.name.lower():
                lon0 = float(p.value)
        tr = Transformer.from_crs("EPSG:4326", c, always_xy=True)
        x0, _ = tr.transform(lon0, 0.0)
        x90, _ = tr.transform(lon0 + 90.0, 0.0)
        return 4.0 * abs(x90 - x0)
    return None


def _lonlat_to_store(info: MapInfo, piece: BBox) -> BBox | None:
    """A lon/lat box (not crossing the antimeridian) as a box in the store CRS, or None if it misses the map."""
    from pyproj import CRS, Transformer

    crs = info.crs
    c = CRS.from_user_input(crs)
    wraps = _wrap_period(crs) is not None
    if wraps:
        lat_lim = 90.0 if c.is_geographic else _MERCATOR_LAT
        s, n = max(piece.bottom, -lat_lim), min(piece.top, lat_lim)
        if s >= n:
            return None
        piece = BBox(piece.left, s, piece.right, n)
    else:
        gb = _map_lonlat_bounds(info)
        if gb.left < gb.right:
            l, r = max(piece.left, gb.left), min(piece.right, gb.right)
            s, n = max(piece.bottom, gb.bottom), min(piece.top, gb.top)
            if l >= r or s >= n:
                return None
            piece = BBox(l, s, r, n)
    if crs == "EPSG:4326":
        return piece
    tr = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    vals = tr.transform_bounds(*piece, densify_pts=51)
    if not all(map(math.isfinite, vals)):
        return None
    return BBox(*vals)


def _map_lonlat_bounds(info: MapInfo) -> BBox:
    b = info.__dict__.get("_lonlat")
    if b is None:
        try:
            b = info.grid.geobox.geographic_bounds()
        except Exception:
            b = BBox(-180.0, -90.0, 180.0, 90.0)
        info.__dict__["_lonlat"] = b
    return b


def _extent_text(info: MapInfo) -> str:
    b = _map_lonlat_bounds(info)
    return f"W={b.left:.4f}, S={b.bottom:.4f}, E={b.right:.4f}, N={b.top:.4f} (lon/lat)"


def _window_of(gb: GeoBox, box: BBox, eps: float = 1e-6) -> Window | None:
    """The pixels of ``gb`` that a box (in its CRS) touches, or None; box edges within ``eps`` pixel of a
    pixel edge count as on it (so a box on pixel edges is not widened by float noise)."""
    inv = ~gb.transform
    cols, rows = zip(*(inv @ (x, y) for x in (box.left, box.right) for y in (box.bottom, box.top)))
    win = Window(math.floor(min(rows) + eps), math.ceil(max(rows) - eps),
                 math.floor(min(cols) + eps), math.ceil(max(cols) - eps))
    return win.intersect(Window(0, gb.shape.y, 0, gb.shape.x))


@dataclass(frozen=True)
class _Piece:
    window: Window
    x_shift: float  # added to the piece's x coordinates (one wrap period for the eastern piece of a crossing box)


def _pieces(info: MapInfo, lvl: Level, box: BBox) -> list[_Piece]:
    """The level windows covering a lon/lat box, west to east; BBoxError when it misses the map."""
    lonlat = [box] if box.left < box.right else [BBox(box.left, box.bottom, 180.0, box.top),
                                                  BBox(-180.0, box.bottom, box.right, box.top)]
    period = _wrap_period(info.crs)
    gb = lvl.geobox
    found: list[Window] = []
    for piece in lonlat:
        sb = _lonlat_to_store(info, piece)
        if sb is None:
            continue
        for shift in ((0.0, period, -period) if period else (0.0,)):
            w = _window_of(gb, BBox(sb.left + shift, sb.bottom, sb.right + shift, sb.top))
            if w is not None and w not in found:
                found.append(w)
    if not found:
        raise BBoxError(f"bbox W={box.left}, S={box.bottom}, E={box.right}, N={box.top} does not intersect the map "
                        f"{info.url!r}, whose extent is {_extent_text(info)}; pick a box inside it")
    r0, r1 = min(w.row_start for w in found), max(w.row_stop for w in found)
    found = [Window(r0, r1, w.col_start, w.col_stop) for w in found]
    if len(found) == 1:
        return [_Piece(found[0], 0.0)]
    a, b = found[0], found[-1]
    if period is None or b.col_start <= a.col_stop and a.col_start <= b.col_stop or b.col_start >= a.col_stop:
        # one continuous stretch of the grid (overlapping, adjacent, or already in west→east order)
        return [_Piece(Window(r0, r1, min(w.col_start for w in found), max(w.col_stop for w in found)), 0.0)]
    # a crossing box on a wrapping grid: the first piece is at the grid's east end, the second at its west end
    t = gb.transform
    gap = (t.c + t.a * b.col_start + period) - (t.c + t.a * a.col_stop)
    if abs(gap) > abs(t.a) * 0.5:
        raise BBoxError(f"bbox {tuple(box)} crosses the antimeridian, but the map {info.url!r} does not wrap around "
                        f"it continuously (its extent is {_extent_text(info)}); query each side separately")
    return [_Piece(a, 0.0), _Piece(b, period)]


def _geometry_from(obj) -> "Any":
    """A shapely (Multi)Polygon from a shapely geometry, a GeoJSON mapping (geometry, Feature, FeatureCollection),
    a GeoJSON text, or the path of a GeoJSON file; lon/lat expected."""
    import shapely
    from shapely.geometry import shape

    if isinstance(obj, (str, os.PathLike)) and not str(obj).lstrip().startswith("{"):
        p = os.fspath(obj)
        if not os.path.exists(p):
            raise GeometryError(f"geometry file {p!r} does not exist; give a GeoJSON file with a polygon in lon/lat")
        try:
            with open(p, encoding="utf-8") as f:
                obj = json.load(f)
        except (OSError, ValueError) as e:
            raise GeometryError(f"geometry file {p!r} is not valid GeoJSON ({e})") from None
    elif isinstance(obj, str):
        try:
            obj = json.loads(obj)
        except ValueError as e:
            raise GeometryError(f"geometry text is not valid GeoJSON ({e})") from None
    if isinstance(obj, shapely.Geometry):
        geom = obj
    elif isinstance(obj, dict):
        crs = obj.get("crs")
        if crs is not None:
            name = str((crs.get("properties") or {}).get("name", "")) if isinstance(crs, dict) else str(crs)
            if not any(k in name.upper().replace("::", ":") for k in ("CRS84", "EPSG:4326", "4326")):
                raise GeometryError(f"the GeoJSON declares CRS {name!r}; give the polygon in lon/lat "
                                    "(EPSG:4326 / CRS84), e.g. reproject it with ogr2ogr -t_srs EPSG:4326")
        kind = obj.get("type")
        try:
            if kind == "FeatureCollection":
                geoms = [shape(f["geometry"]) for f in obj.get("features", []) if f.get("geometry")]
                if not geoms:
                    raise GeometryError("the GeoJSON FeatureCollection has no geometry")
                geom = geoms[0] if len(geoms) == 1 else shapely.union_all(geoms)
            elif kind == "Feature":
                if not obj.get("geometry"):
                    raise GeometryError("the GeoJSON Feature has no geometry")
                geom = shape(obj["geometry"])
            else:
                geom = shape(obj)
        except GeometryError:
            raise
        except Exception as e:
            raise GeometryError(f"cannot read the geometry as GeoJSON ({type(e).__name__}: {e})") from None
    else:
        raise GeometryError(f"geometry {obj!r} is not a GeoJSON mapping, a GeoJSON file or a shapely geometry")
    if geom.geom_type not in ("Polygon", "MultiPolygon"):
        raise GeometryError(f"geometry is a {geom.geom_type}; give a Polygon or MultiPolygon in lon/lat")
    if geom.is_empty:
        raise GeometryError("geometry is empty; give a Polygon or MultiPolygon in lon/lat")
    minx, miny, maxx, maxy = geom.bounds
    if not all(map(math.isfinite, (minx, miny, maxx, maxy))):
        raise GeometryError("geometry has non-finite coordinates")
    if minx < -180 or maxx > 180 or miny < -90 or maxy > 90:
        raise GeometryError(
            f"geometry coordinates span x {minx:.6g}..{maxx:.6g}, y {miny:.6g}..{maxy:.6g}: that is not lon/lat "
            "(|lon| ≤ 180, |lat| ≤ 90) — it looks projected (e.g. metres); give the polygon in EPSG:4326 lon/lat")
    if not geom.is_valid:
        raise GeometryError(f"geometry is not a valid polygon: {shapely.is_valid_reason(geom)}; fix it first "
                            "(e.g. shapely.make_valid, or remove the self-intersection)")
    return geom


def _geometry_bbox(geom) -> BBox:
    """The lon/lat box of a polygon; a multipolygon split at ±180 gives a box crossing the antimeridian."""
    minx, miny, maxx, maxy = geom.bounds
    if maxx - minx > 180 and geom.geom_type == "MultiPolygon":
        east = [g for g in geom.geoms if g.centroid.x > 0]
        west = [g for g in geom.geoms if g.centroid.x <= 0]
        if east and west:
            w = min(g.bounds[0] for g in east)
            e = max(g.bounds[2] for g in west)
            if w > e:
                return BBox(w, miny, e, maxy)
    return BBox(minx, miny, maxx, maxy)


def _geometry_to_store(geom, crs: str):
    import shapely
    from pyproj import Transformer

    if crs == "EPSG:4326":
        return geom
    dense = shapely.segmentize(geom, 0.01)
    tr = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    out = shapely.transform(dense, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
    if not out.is_valid:
        out = shapely.make_valid(out)
    return out


_RASTERIZE_LOCK = threading.Lock()


def _mask_block(shapes, gb_json: dict, rows: slice, cols: slice) -> np.ndarray:
    """Pixels of a block whose centre lies inside the shapes (rasterio.features, ``all_touched=False``)."""
    from rasterio.features import geometry_mask

    gb = GeoBox.from_json(gb_json).window(Window(rows.start, rows.stop, cols.start, cols.stop))
    # rasterio's in-memory dataset set-up can emit a spurious NotGeoreferencedWarning when called from dask's
    # worker threads (the transform is set right after; the mask is right): silence exactly that, one block at
    # a time so the temporary warning filter cannot interleave with another block's
    from rasterio.errors import NotGeoreferencedWarning

    with _RASTERIZE_LOCK, warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)
        return geometry_mask(shapes, out_shape=tuple(gb.shape), transform=gb.transform, invert=True, all_touched=False)


def _lazy_mask(shapes: list, geobox: GeoBox, chunks):
    import dask.array as da
    from dask.base import tokenize

    name = "reefmap-geometry-mask-" + tokenize([s.wkb for s in shapes], geobox.to_json(), chunks)
    re_ = np.concatenate([[0], np.cumsum(chunks[0])])
    ce = np.concatenate([[0], np.cumsum(chunks[1])])
    gj = geobox.to_json()
    dsk = {(name, i, j): (_mask_block, shapes, gj, slice(int(re_[i]), int(re_[i + 1])), slice(int(ce[j]), int(ce[j + 1])))
           for i in range(len(chunks[0])) for j in range(len(chunks[1]))}
    return da.Array(dsk, name, chunks, dtype=bool, meta=np.empty((0, 0), bool))


# ------------------------------------------------------------------------------------------------------------
# the query
# ------------------------------------------------------------------------------------------------------------
@dataclass
class QueryResult:
    """A regional subset of a map.

    ``dataset``: lazy ``xarray.Dataset`` (``reef_probability``, ``classification``, ``tile_state``; x/y
    coordinates in the store CRS, ``spatial_ref``); ``geobox``: its grid; ``complete_fraction``: the share of
    its pixels (inside the polygon, if any) whose tiles are finished; ``level``/``resolution``: which level was
    read and its pixel size (store CRS units); ``bbox``: the lon/lat box asked for.
    """

    dataset: Any
    geobox: GeoBox
    level: int
    resolution: float
    complete_fraction: float
    bbox: BBox | None
    store: str
    layers: tuple[str, ...]
    has_geometry: bool = False
    stale_overview_tiles: int = 0

    @property
    def complete(self) -> bool:
        return self.complete_fraction >= 1.0

    @property
    def crs(self) -> str:
        return self.geobox.crs

    def __getitem__(self, name):
        return self.dataset[name]

    def load(self) -> "QueryResult":
        self.dataset = self.dataset.load()
        return self

    def to_file(self, path, *, layer: str | None = None, overwrite: bool = False) -> str:
        from reefmap.products.export import export

        return export(self, path, layer=layer, overwrite=overwrite)

    def summary(self) -> dict:
        return {"store": self.store, "bbox": None if self.bbox is None else list(self.bbox), "crs": self.crs,
                "shape": {"y": self.geobox.shape.y, "x": self.geobox.shape.x}, "level": self.level,
                "resolution": self.resolution, "complete_fraction": round(self.complete_fraction, 6),
                "geometry": self.has_geometry, "layers": list(self.layers)}


def query(store, bbox=None, geometry=None, resolution=None, layers=None, *, storage_options: dict | None = None) -> QueryResult:
    """A lazy subset of the map ``store`` covering ``bbox`` (lon/lat W,S,E,N) and/or ``geometry`` (a lon/lat
    polygon: GeoJSON mapping, file or shapely geometry; pixels whose centre lies outside it are masked).

    ``resolution`` (store CRS units) reads the coarsest overview level with pixels no larger than it;
    ``layers`` picks ``reef_probability`` and/or ``classification`` (default both; ``tile_state`` is always
    there). With neither bbox nor geometry, the whole map. Only the chunks that intersect the subset are read.
    """
    import xarray as xr

    info = inspect_map(store, storage_options)
    layers = _check_layers(layers)
    geom = _geometry_from(geometry) if geometry is not None else None
    if bbox is not None:
        box = parse_bbox(bbox)
    elif geom is not None:
        box = _geometry_bbox(geom)
    else:
        box = None
    lvl = info.pick_level(resolution)
    if box is None:
        pieces = [_Piece(Window(0, lvl.geobox.shape.y, 0, lvl.geobox.shape.x), 0.0)]
    else:
        pieces = _pieces(info, lvl, box)
    windows = [p.window for p in pieces]
    stale = 0
    if lvl.states is None:  # the map itself: the tile states now, under the query
        lvl = replace(lvl, states=info.window_states(lvl, windows))
    else:  # an overview shows its build-time snapshot: count the tiles under the query finished since
        maybe = info.tiles_mask(lvl, windows) & ~np.isin(lvl.states, _FINISHED)  # finished tiles never change
        stale = int(np.count_nonzero(np.isin(info.read_states(maybe), _FINISHED) & maybe))
    parts = []
    for p in pieces:
        ds = _dataset(info, lvl, p.window, layers)
        if p.x_shift:
            ds = ds.assign_coords(x=ds.x + p.x_shift)
        parts.append(ds)
    ds = parts[0] if len(parts) == 1 else xr.concat(parts, dim="x")
    first = pieces[0].window
    width = sum(p.window.shape.x for p in pieces)
    gb = GeoBox(Shape(first.shape.y, width), lvl.geobox.window(first).transform, lvl.geobox.crs)
    if geom is None:
        fin, n = 0, 0
        for p in pieces:
            f, m = _count_finished(lvl, p.window)
            fin, n = fin + f, n + m
        frac = fin / n if n else 0.0
    else:
        import dask
        from shapely import affinity

        g_store = _geometry_to_store(geom, info.crs)
        shapes = [g_store]
        period = _wrap_period(info.crs)
        if period:
            shapes += [affinity.translate(g_store, xoff=period), affinity.translate(g_store, xoff=-period)]
        chunks = ds["tile_state"].data.chunks
        mask = xr.DataArray(_lazy_mask(shapes, gb, chunks), dims=("y", "x"))
        for v in layers:
            if v == "reef_probability":
                ds[v] = ds[v].where(mask)
            else:
                ds[v] = xr.where(mask, ds[v], np.uint8(CLASS_NODATA)).astype(np.uint8).assign_attrs(_var_attrs(v))
        ds["tile_state"] = xr.where(mask, ds["tile_state"], np.uint8(OUTSIDE)).astype(np.uint8).assign_attrs(
            _var_attrs("tile_state"))
        inside, inside_fin = dask.compute(mask.data.sum(), (mask.data & da_isin_finished(ds["tile_state"].data)).sum())
        if int(inside) == 0:
            raise GeometryError(f"the polygon covers no pixel centre of the map at this resolution "
                                f"({lvl.pixel_size:g} {_units(info.crs)}); give a larger polygon or a finer resolution")
        frac = int(inside_fin) / int(inside)
    res = QueryResult(ds, gb, lvl.index, lvl.pixel_size, frac, box, info.url, layers, geom is not None, stale)
    attrs = {"store": info.url, "level": lvl.index, "resolution": lvl.pixel_size, "complete_fraction": frac,
             "unfinished_code": UNFINISHED, "outside_geometry_code": OUTSIDE}
    if box is not None:
        attrs["bbox_lonlat"] = list(map(float, box))
    res.dataset = _finish_dataset(ds, info.crs, attrs)
    return res


def da_isin_finished(state):
    import dask.array as da

    return da.isin(state, _FINISHED)
