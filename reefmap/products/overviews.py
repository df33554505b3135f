"""Multiscale overviews of a map, stored inside it: ``overviews/1``, ``overviews/2`` … (factor 2 each).

Layout (a subgroup of the map; the root arrays, ``tile_status``, ``tile_errors`` and ``plans`` are untouched, so
``xr.open_zarr(map)`` and ``reefmap status`` see exactly what they saw before):

- ``overviews/{k}`` for k = 1..levels: ``reef_probability`` and ``classification`` (y, x) uint8 with the root's
  encoding and attributes, Zarr chunks of the map's tile size, ``x``/``y`` pixel-centre coordinates and
  ``spatial_ref`` with the level's ``GeoTransform`` — so ``xr.open_zarr(map, group="overviews/2")`` is a
  georeferenced map of its own. Level k's pixel is 2^k × 2^k map pixels (the last row/column may be partial);
- ``overviews/tile_status``: the tile states the overviews reflect (a snapshot taken *before* the pixels were
  read: tiles finished later are treated as unfinished at the overview levels until the next build, and a query
  or statistics answered from such a level says how many of its tiles are stale: ``stale_overview_tiles``);
- attribute ``reefmap_overviews`` on ``overviews``: levels, factor, method, build time.

Aggregation, exact over the whole 2^k × 2^k block of finished map pixels (carried as sums and counts through
the levels, not as means of means): reef probability = mean over valid pixels (rounded to the uint8 encoding;
nodata when none is valid); class = the most frequent of the map's class codes (``MapInfo.scheme``) among valid
pixels (ties → the lowest code; nodata when none). Pixels of unfinished tiles do not contribute, and their tiles are not read.

Built with dask, chunk-aligned: one task per map chunk reduces it 2×2; each level is rechunked to the tile size
so every write is a whole Zarr chunk. Rebuilding is incremental: only the overview chunks covering tiles whose
state changed since the last build are recomputed (``full=True`` rebuilds everything). ``reefmap.run`` refreshes
a map's existing overviews so at its end (``refresh_overviews``).
"""

from __future__ import annotations

import datetime as _dt
import math
import time

import numpy as np

from reefmap.errors import InvalidParameter
from reefmap.geometry.grid import GeoBox, TileGrid, Window
from reefmap.products.mapview import (OVERVIEWS_ATTR, OVERVIEWS_GROUP, Level, LevelReader, MapInfo, inspect_map,
                                     overview_geobox)
from reefmap.store.format import CLASS_NODATA, DATA_VARS, PROB_NODATA, is_finished
from reefmap.store.mapstore import MapStore, write_grid_coords

# the statistics carried through the levels: the sum of probability codes, the count of valid probabilities, then
# one count per class code of the map's scheme (sorted: the mode is taken among them, ties -> the lowest code)


def max_levels(tile: int) -> int:
    """Levels possible for a tile size: a level-k pixel must lie inside one tile, so 2^k must divide it."""
    return min(12, (int(tile) & -int(tile)).bit_length() - 1)  # int32 sums hold 4^12 · PROB_SCALE


def default_levels(grid: TileGrid) -> int:
    """Enough levels for the coarsest to fit in one tile (at least 1), capped by ``max_levels``."""
    n = max(grid.geobox.shape)
    want = max(1, math.ceil(math.log2(n / grid.tile))) if n > grid.tile else 1
    return min(want, max_levels(grid.tile))


def _pool2(a: np.ndarray) -> np.ndarray:
    """Sum 2×2 blocks of the last two axes: ``(..., h, w)`` → ``(..., ceil(h/2), ceil(w/2))`` as int32
    (odd edges padded with zeros). int32 holds a level-k sum of probability codes up to k = 12."""
    h, w = a.shape[-2:]
    if h % 2 or w % 2:
        pad = [(0, 0)] * (a.ndim - 2) + [(0, h % 2), (0, w % 2)]
        a = np.pad(a, pad)
    a = a.astype(np.int32, copy=False)
    return a[..., 0::2, 0::2] + a[..., 1::2, 0::2] + a[..., 0::2, 1::2] + a[..., 1::2, 1::2]


def _root_stats(reader: LevelReader, rows: slice, cols: slice, codes: tuple[int, ...]) -> np.ndarray:
    """Level-1 sums and counts of one map chunk: only finished pixels count; unfinished tiles are not read."""
    st = reader.states_block(rows, cols)
    fin = is_finished(st)
    h, w = st.shape
    out = np.zeros((2 + len(codes), -(-h // 2), -(-w // 2)), np.int32)
    if not fin.any():
        return out
    p = reader.read_raw("reef_probability", rows, cols)
    c = reader.read_raw("classification", rows, cols)
    valid = p != PROB_NODATA
    if not fin.all():
        valid &= fin
        c = np.where(fin, c, CLASS_NODATA)
    out[0] = _pool2(np.where(valid, p, np.uint8(0)))
    out[1] = _pool2(valid)
    for i, code in enumerate(codes):
        out[2 + i] = _pool2(c == code)
    return out


def _prob_of(s: np.ndarray) -> np.ndarray:
    n = s[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.floor(s[0].astype(np.float64) / np.where(n > 0, n, 1) + 0.5)
    return np.where(n > 0, m, PROB_NODATA).astype(np.uint8)


def _class_of(s: np.ndarray, codes: tuple[int, ...]) -> np.ndarray:
    counts = s[2:]
    codes = np.asarray(codes, np.uint8)
    return np.where(counts.sum(axis=0) > 0, codes[counts.argmax(axis=0)], CLASS_NODATA).astype(np.uint8)


def _level1_stats(reader: LevelReader, shape, chunk: int, codes: tuple[int, ...]):
    import dask.array as da
    from dask.base import tokenize

    ny, nx = shape
    re_ = list(range(0, ny, chunk)) + [ny]
    ce = list(range(0, nx, chunk)) + [nx]
    name = "reefmap-overview-stats1-" + tokenize(reader.token, codes)
    dsk = {(name, 0, i, j): (_root_stats, reader, slice(re_[i], re_[i + 1]), slice(ce[j], ce[j + 1]), codes)
           for i in range(len(re_) - 1) for j in range(len(ce) - 1)}
    chunks = ((2 + len(codes),), tuple(-(-(b - a) // 2) for a, b in zip(re_[:-1], re_[1:])),
              tuple(-(-(b - a) // 2) for a, b in zip(ce[:-1], ce[1:])))
    return da.Array(dsk, name, chunks, dtype=np.int32, meta=np.empty((0, 0, 0), np.int32))


def _next_stats(s, chunk: int):
    n = s.shape[0]
    chunks = ((n,), tuple(-(-c // 2) for c in s.chunks[1]), tuple(-(-c // 2) for c in s.chunks[2]))
    return s.map_blocks(_pool2, chunks=chunks, dtype=np.int32).rechunk((n, chunk, chunk))


def check_levels(levels, grid: TileGrid) -> int:
    """The number of levels to build (None: ``default_levels``); InvalidParameter when the tile size forbids it."""
    t, cap = grid.tile, max_levels(grid.tile)
    if levels is None:
        levels = default_levels(grid)
    try:
        levels = int(levels)
    except (TypeError, ValueError):
        raise InvalidParameter(f"levels {levels!r} is not a whole number") from None
    if levels < 1 or levels > cap:
        raise InvalidParameter(
            f"levels {levels} is out of range: this map's tile size {t} allows 1..{cap} factor-2 levels "
            f"(a level-k pixel must lie inside one tile, so 2^k must divide {t})" if cap else
            f"this map's tile size {t} is odd: overviews need a tile size divisible by 2")
    return levels


def build_overviews(store, levels: int | None = None, *, full: bool = False, storage_options: dict | None = None) -> dict:
    """Build (or bring up to date) the overview pyramid of the map ``store``; returns a summary dict.

    ``levels``: how many factor-2 levels (default: until the coarsest fits in one tile). ``full``: recompute
    every chunk instead of only those whose tiles changed state since the last build.
    """
    t0 = time.perf_counter()
    info = inspect_map(store, storage_options)          # read-only checks: a reefmap map, axis-aligned
    levels = check_levels(levels, info.grid)
    states = info.states.copy()                          # the snapshot: read before any pixel
    writable = MapStore(info.url, info.storage_options)  # overviews are written inside the map
    writable.check_no_symlinks()
    g = writable.group
    old = _usable_snapshot(g, levels, states.shape, full)
    ov = g.require_group(OVERVIEWS_GROUP)
    dirty = np.argwhere(states != old) if old is not None else None
    geoboxes = [overview_geobox(info.grid.geobox, k) for k in range(1, levels + 1)]
    summary = {"store": info.url, "levels": [_level_summary(k, gb) for k, gb in enumerate(geoboxes, start=1)],
               "tiles_updated": int(states.size if dirty is None else len(dirty)), "chunks_written": 0,
               "full": old is None}
    if dirty is not None and len(dirty) == 0:
        summary.update(up_to_date=True, seconds=round(time.perf_counter() - t0, 3))
        return summary
    targets = [_level_arrays(ov.require_group(str(k)), g, k, gb, info.grid.tile) for k, gb in enumerate(geoboxes, start=1)]
    summary["chunks_written"] = _write_pyramid(info, states, targets, dirty)
    # the snapshot and attributes last: an interrupted build is redone in full (or for its changed tiles)
    _write_snapshot(ov, states, levels, info.grid.tile)
    summary.update(up_to_date=False, seconds=round(time.perf_counter() - t0, 3))
    return summary


def refresh_overviews(store, storage_options: dict | None = None) -> dict | None:
    """Bring the map's *existing* overviews up to date with its tile states: only the chunks over tiles whose state
    changed since the last build are recomputed (``build_overviews`` with the levels the map has). Nothing is
    written when they are up to date; None when the map has no overviews (none are made). ``reefmap.run`` calls
    this at the end of a run."""
    info = inspect_map(store, storage_options)
    built = [lvl for lvl in info.levels if lvl.index > 0]
    if not built:
        return None
    if np.array_equal(built[0].states, info.states):
        return {"store": info.url, "levels": [_level_summary(lvl.index, lvl.geobox) for lvl in built],
                "tiles_updated": 0, "chunks_written": 0, "full": False, "up_to_date": True, "seconds": 0.0}
    return build_overviews(info, levels=len(built))


def _level_summary(k: int, gb: GeoBox) -> dict:
    return {"level": k, "shape": {"y": gb.shape.y, "x": gb.shape.x},
            "resolution": max(abs(gb.transform.a), abs(gb.transform.e))}


def _usable_snapshot(g, levels: int, shape, full: bool) -> np.ndarray | None:
    """The tile states the existing overviews reflect, when they can be updated in place (same levels, complete);
    else None, and an existing overviews group is deleted (to be rebuilt in full)."""
    if OVERVIEWS_GROUP not in g:
        return None
    ov = g[OVERVIEWS_GROUP]
    meta = ov.attrs.get(OVERVIEWS_ATTR)
    snap = None
    if (not full and isinstance(meta, dict) and int(meta.get("levels", -1)) == levels
            and "tile_status" in ov and all(str(k) in ov for k in range(1, levels + 1))):
        snap = np.asarray(ov["tile_status"][...], np.uint8)
        snap = snap if snap.shape == shape else None
    if snap is None:
        del g[OVERVIEWS_GROUP]
    return snap


def _level_arrays(lg, root, k: int, gb: GeoBox, t: int) -> dict:
    """The arrays of level ``k``'s group (created once, with the grid's coordinates and mapping; reused afterwards)."""
    from zarr.errors import ContainsArrayError, ContainsGroupError

    def make(name, **kw):
        try:
            return lg.create_array(name, overwrite=False, **kw)
        except (ContainsArrayError, ContainsGroupError):
            return lg[name]

    write_grid_coords(lg, gb, t)
    return {name: make(name, shape=tuple(gb.shape), chunks=(t, t), dtype="uint8", fill_value=root[name].fill_value,
                       dimension_names=["y", "x"],
                       attributes={**dict(root[name].attrs), "overview_level": k, "overview_factor": 2 ** k})
            for name in DATA_VARS}


def _pyramid(reader: LevelReader, grid: TileGrid, levels: int, codes: tuple[int, ...]):
    """(reef_probability, classification) dask arrays of levels 1..``levels``, chunked by the tile size; the class
    is the mode among ``codes``."""
    t = grid.tile
    s = _level1_stats(reader, tuple(grid.geobox.shape), t, codes).rechunk((2 + len(codes), t, t))
    for k in range(1, levels + 1):
        if k > 1:
            s = _next_stats(s, t)
        meta = np.empty((0, 0), np.uint8)
        yield (s.map_blocks(_prob_of, drop_axis=0, dtype=np.uint8, meta=meta),
               s.map_blocks(_class_of, codes=codes, drop_axis=0, dtype=np.uint8, meta=meta))


def _write_pyramid(info: MapInfo, states: np.ndarray, targets: list[dict], dirty: np.ndarray | None) -> int:
    """Compute the levels as one dask graph and store them: every chunk, or (``dirty``: the changed tiles) only
    the chunks covering them. Returns the number of chunks written."""
    import dask.array as da

    t = info.grid.tile
    reader = LevelReader(info.url, info.storage_options, Level(0, "", info.grid.geobox, t, states, t), info.group)
    sources, dests, regions = [], [], []
    codes = tuple(sorted(info.scheme.codes))
    for k, layers in enumerate(_pyramid(reader, info.grid, len(targets), codes), start=1):
        for name, arr in zip(DATA_VARS, layers):
            if dirty is None:
                sources.append(arr)
                dests.append(targets[k - 1][name])
                regions.append(None)  # the whole array
                continue
            for i, j in np.unique(dirty >> k, axis=0):
                b = arr.blocks[int(i), int(j)]
                sources.append(b)
                dests.append(targets[k - 1][name])
                regions.append(Window(int(i) * t, int(i) * t + b.shape[0], int(j) * t, int(j) * t + b.shape[1]).slices)
    da.store(sources, dests, regions=regions, lock=False)
    return sum(s.npartitions for s in sources)


def _write_snapshot(ov, states: np.ndarray, levels: int, t: int) -> None:
    try:
        snap = ov.create_array("tile_status", shape=states.shape, chunks=states.shape, dtype="uint8", fill_value=0,
                               dimension_names=["tile_y", "tile_x"], overwrite=True,
                               attributes={"long_name": "tile states the overviews reflect (snapshot at build time)"})
    except Exception:  # pragma: no cover - a store that refuses overwrite
        snap = ov["tile_status"]
    snap[...] = states
    ov.attrs[OVERVIEWS_ATTR] = {
        "levels": levels, "factor": 2, "tile": t, "chunk": t,
        "built": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "method": {"reef_probability": "mean of valid finished pixels (exact over the 2^k block)",
                   "classification": "mode of valid finished pixels (exact over the 2^k block; ties -> lowest code)"},
    }
