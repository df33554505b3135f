"""Candidate masks at *tile* resolution: which tiles of a grid could hold a reef.

``tile_mask(grid, source, buffer_km=...)`` turns a vector layer (GeoJSON lines/polygons, e.g. Natural Earth's
reef lines) or a raster mask (e.g. a 0.05° "shallow tropical water" GeoTIFF) into a boolean array over the
grid's tiles — one rasterization at tile resolution (``all_touched``), never per pixel, so the zoom-15 globe
(737k quads) is planned in about a second.

* Vector: features are read by ``reefmap.geometry.vector.read_geojson``, in their CRS (``crs=``, else GeoJSON's
  legacy ``crs`` member, else WGS84 as RFC 7946 says),
  buffered by ``buffer_km`` of *ground* distance — done in Web Mercator, where a ground distance d is
  d / cos(lat) Mercator metres, each feature part buffered with the scale at its highest |latitude| (never
  smaller than asked) — reprojected to the grid's CRS, and burnt with ``all_touched=True`` onto a raster with
  one pixel per tile. On a grid that goes round the world, buffers crossing the antimeridian wrap.
* Raster: pixels > 0 (nodata excluded) are warped onto the tile raster with ``Resampling.max``: GDAL's max
  takes every source cell that overlaps a tile, partly covered ones included, so any touched cell marks it.

Errors (missing, unreadable, no CRS, empty) are ``MaskError`` naming the file and the fix.

Cache: a mask of a *local* file is kept per process, keyed by the grid, the file's absolute path, size and
modification time, ``buffer_km`` and ``crs``, so an edited file is read again; the 8 most recently used are kept.
Remote masks are read every time.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from reefmap.caching import LRUCache
from reefmap.errors import GeometryError, MaskError, MaskNotFound
from reefmap.geometry.grid import TileGrid
from reefmap.geometry.vector import read_geojson, vector_crs
from reefmap.geometry.webmercator import WEB_MERCATOR_HALF, WEB_MERCATOR_MAX_LAT, tile_geobox

VECTOR_SUFFIXES = (".json", ".geojson")
RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".img", ".nc")

@dataclass(frozen=True)
class MaskInfo:
    """What a mask was made from, and how many tiles it kept."""

    source: str
    kind: str  # "vector" | "raster"
    crs: str
    features: int | None
    buffer_km: float
    tiles_total: int
    tiles_kept: int
    seconds: float

    def to_json(self) -> dict:
        return dict(self.__dict__)

    def __str__(self) -> str:
        what = f"{self.features} features, buffer {self.buffer_km:g} km" if self.kind == "vector" else "raster, any touched cell"
        pct = 100.0 * self.tiles_kept / self.tiles_total if self.tiles_total else 0.0
        return (f"{self.source} ({self.kind}, {self.crs}, {what}): {self.tiles_kept} of {self.tiles_total} tiles "
                f"survive ({pct:.3f}%) in {self.seconds:.2f}s")

_FIX = ("check the `mask:` path in the config (relative paths are relative to the config file), or pass "
        "--mask PATH / set REEFMAP_MASK; `mask: none` plans every tile")

def tile_mask(grid: TileGrid, source: str | os.PathLike, buffer_km: float = 0.0, crs: Any = None,
              *, info: bool = False) -> np.ndarray | tuple[np.ndarray, MaskInfo]:
    """Boolean ``(tile rows, tile cols)`` array: True where a tile touches the (buffered) mask.

    ``source``: a GeoJSON file (lines/polygons/points) or a raster (GeoTIFF, ...). ``crs``: the mask's CRS when
    the file does not say (or to override it). ``buffer_km``: ground distance added around vector features
    (raster masks take no buffer). ``info=True`` also returns a ``MaskInfo``.
    """
    import time

    t0 = time.perf_counter()
    path = os.fspath(source)
    if buffer_km is None:
        buffer_km = 0.0
    if isinstance(buffer_km, bool) or not isinstance(buffer_km, (int, float)) or not math.isfinite(buffer_km) or buffer_km < 0:
        raise MaskError(f"buffer_km {buffer_km!r} must be a number of kilometres >= 0")
    kind = _kind(path)
    key = _cache_key(grid, path, float(buffer_km), crs)
    hit = _MASKS.get(key) if key is not None else None
    if hit is not None:  # the same file, unchanged, on the same grid: a run resubmitted in one process, tests
        sel, mi = hit
        return sel.copy() if not info else (sel.copy(), mi)
    if kind == "vector":
        sel, crs_s, n = _vector_mask(grid, path, float(buffer_km), crs)
    else:
        if buffer_km:
            raise MaskError(f"mask {path!r} is a raster: buffer_km applies to vector masks only; set buffer_km: 0 "
                            "(or dilate the raster beforehand)")
        sel, crs_s = _raster_mask(grid, path, crs)
        n = None
    sel = np.ascontiguousarray(sel, dtype=bool)
    mi = MaskInfo(path, kind, crs_s, n, float(buffer_km), int(sel.size), int(sel.sum()), round(time.perf_counter() - t0, 3))
    if key is not None:
        _MASKS.put(key, (sel.copy(), mi))
    return sel if not info else (sel, mi)


_MASKS: "LRUCache[tuple[np.ndarray, MaskInfo]]" = LRUCache("masks", 8)  # see the module docstring


def _cache_key(grid: TileGrid, path: str, buffer_km: float, crs: Any) -> tuple | None:
    """Local files only, keyed by their size and modification time (None: not cached)."""
    if "://" in path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (json.dumps(grid.to_json(), sort_keys=True), os.path.abspath(path), st.st_size, st.st_mtime_ns, buffer_km,
            None if crs is None else str(crs))

def _kind(path: str) -> str:
    if "://" not in path and not os.path.exists(path):
        raise MaskNotFound(f"mask file {path!r} does not exist; {_FIX}")
    low = path.lower()
    if low.endswith(VECTOR_SUFFIXES):
        return "vector"
    if low.endswith(RASTER_SUFFIXES):
        return "raster"
    # unknown suffix: sniff
    try:
        import fsspec

        with fsspec.open(path, "rb") as f:
            head = f.read(64).lstrip()
    except OSError as e:
        raise MaskError(f"mask file {path!r} cannot be read ({e}); {_FIX}") from None
    return "vector" if head[:1] in (b"{", b"[") else "raster"

# -- vector -------------------------------------------------------------------------------------------------
def _read_vector(path: str, crs: Any = None) -> tuple[list, str]:
    """Shapely geometries of a GeoJSON mask and their CRS (``crs`` > legacy ``crs`` member > WGS84)."""
    try:
        shapes, crs_s = read_geojson(path, crs)
    except GeometryError as e:
        raise MaskError(f"mask {e}; give a GeoJSON FeatureCollection of reef lines or polygons (or a raster mask, "
                        f"GeoTIFF), and set mask_crs: in the config when its CRS is missing or wrong; {_FIX}") from None
    if not shapes:
        raise MaskError(f"mask file {path!r} holds no geometries; give a GeoJSON with reef lines or polygons")
    return shapes, crs_s

def _crs_of(path: str, crs: Any) -> str:
    try:
        return vector_crs(crs, f"mask {path!r}")
    except GeometryError as e:
        raise MaskError(f"{e}; set mask_crs: e.g. EPSG:4326") from None

def _vector_mask(grid: TileGrid, path: str, buffer_km: float, crs: Any) -> tuple[np.ndarray, str, int]:
    import shapely
    from pyproj import Transformer

    shapes, crs_s = _read_vector(path, crs)
    n = len(shapes)
    parts = shapely.get_parts(np.asarray(shapes, dtype=object))
    if buffer_km > 0:
        # buffer in Web Mercator: ground distance d is d / cos(lat) there; use the part's highest |lat|
        to_ll = None if crs_s == "EPSG:4326" else Transformer.from_crs(crs_s, "EPSG:4326", always_xy=True)
        ll = parts if to_ll is None else shapely.transform(parts, lambda xy: np.column_stack(to_ll.transform(xy[:, 0], xy[:, 1])))
        ll = shapely.clip_by_rect(ll, -180.0, -WEB_MERCATOR_MAX_LAT, 180.0, WEB_MERCATOR_MAX_LAT)
        ll = ll[~shapely.is_empty(ll)]
        b = shapely.bounds(ll)
        maxlat = np.minimum(np.maximum(np.abs(b[:, 1]), np.abs(b[:, 3])) + buffer_km / 111.0, 89.0)
        to_m = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)
        merc = shapely.transform(ll, lambda xy: np.column_stack(to_m.transform(xy[:, 0], xy[:, 1])))
        dist = buffer_km * 1000.0 / np.cos(np.radians(maxlat))
        merc = shapely.buffer(merc, dist, quad_segs=4)
        src_crs, geoms = "EPSG:3857", merc
    else:
        src_crs, geoms = crs_s, parts
    gcrs = grid.geobox.crs
    if src_crs != gcrs:
        tr = Transformer.from_crs(src_crs, gcrs, always_xy=True)
        if gcrs == "EPSG:3857" and src_crs == "EPSG:4326":
            geoms = shapely.clip_by_rect(geoms, -180.0, -WEB_MERCATOR_MAX_LAT, 180.0, WEB_MERCATOR_MAX_LAT)
        geoms = shapely.transform(geoms, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
        ok = np.all(np.isfinite(shapely.bounds(geoms)), axis=1)
        geoms = geoms[ok & ~shapely.is_empty(geoms)]
    return _burn(grid, geoms), crs_s, n

def _burn(grid: TileGrid, geoms: np.ndarray) -> np.ndarray:
    """Rasterize geometries (in the grid's CRS) onto one pixel per tile, all_touched; wrap round the world."""
    import shapely
    import warnings

    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.features import rasterize

    tg = tile_geobox(grid)
    out_shape = tuple(tg.shape)
    shapes: list = list(geoms)
    width = 2 * WEB_MERCATOR_HALF
    b = grid.geobox.bounds
    if tg.crs == "EPSG:3857" and math.isclose(b.right - b.left, width, rel_tol=1e-9) and len(geoms):
        gb = shapely.bounds(geoms)
        west = geoms[gb[:, 0] < b.left]  # parts hanging past the antimeridian come back on the other side
        east = geoms[gb[:, 2] > b.right]
        shapes += list(shapely.transform(west, lambda xy: xy + [width, 0.0]))
        shapes += list(shapely.transform(east, lambda xy: xy - [width, 0.0]))
    if not shapes:
        return np.zeros(out_shape, bool)
    with warnings.catch_warnings():  # a grid of 1-unit tiles at the origin has the identity transform: not an error
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        arr = rasterize(((s, 1) for s in shapes), out_shape=out_shape, transform=tg.transform, fill=0,
                        all_touched=True, dtype="uint8")
    return arr.astype(bool)

# -- raster -------------------------------------------------------------------------------------------------
def _raster_mask(grid: TileGrid, path: str, crs: Any) -> tuple[np.ndarray, str]:
    import rasterio
    from rasterio.errors import RasterioIOError
    from rasterio.warp import Resampling, reproject

    try:
        with rasterio.open(path) as src:
            data = src.read(1, masked=True)
            src_crs = crs if crs is not None else src.crs
            transform = src.transform
    except RasterioIOError as e:
        raise MaskError(f"mask file {path!r} is not a readable raster ({e}); give a GeoTIFF (or a GeoJSON vector "
                        f"mask); {_FIX}") from None
    if src_crs is None:
        raise MaskError(f"raster mask {path!r} has no CRS; write one into it (rio edit-info --crs EPSG:4326) or set "
                        "mask_crs: in the config")
    crs_s = _crs_of(path, src_crs)
    on = (np.ma.filled(data, 0) > 0).astype(np.uint8)
    if not on.any():
        raise MaskError(f"raster mask {path!r} has no cell > 0: it would keep no tile; check the file")
    tg = tile_geobox(grid)
    dst = np.zeros(tuple(tg.shape), np.uint8)
    reproject(on, dst, src_transform=transform, src_crs=crs_s, dst_transform=tg.transform, dst_crs=tg.crs,
              resampling=Resampling.max, src_nodata=None, dst_nodata=None, init_dest_nodata=False)
    return dst > 0, crs_s

__all__ = ["MaskError", "MaskNotFound", "MaskInfo", "tile_mask"]

