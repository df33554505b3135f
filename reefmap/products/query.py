"""Query a reefmap map: a lazy regional subset by lon/lat box or polygon, at full or overview resolution.

``query(store, bbox=..., geometry=..., resolution=..., layers=...)`` → a lazy ``xarray.Dataset`` (``.rio`` CRS
and transform set) holding the subset's layers and ``tile_state`` (encoding: ``reefmap.products.mapview``), with
what the query found in its attributes: ``complete_fraction`` (the share of its pixels, inside the polygon when
one is given, whose tiles are finished), ``store``, ``level``, ``resolution`` (pixel size, store CRS units),
``bbox_lonlat`` (W, S, E, N asked for, when a box or polygon was given), ``has_geometry`` (1/0),
``stale_overview_tiles`` (tiles finished since the overview level read was built). Nothing but metadata and
tile states is read until the data are computed, and then only the chunks that intersect the subset.

Boxes are lon/lat (EPSG:4326) ``W,S,E,N``; W > E means the box crosses the antimeridian. On a store whose CRS
wraps around the globe (geographic or Mercator) each longitude's pixels are taken once (also on a grid a column
wider than the globe) and the two pieces are concatenated west to east with the eastern piece's x shifted by one
period (e.g. 170..190 in degrees), so the result stays one regular grid (``GeoBox.bbox_pieces``); on any other
store the pieces that intersect the map are used (their bounding window). ``resolution`` is in the store CRS's
units (degrees for EPSG:4326, metres for UTM/Web Mercator) and picks the coarsest overview level (see
``reefmap.products.overviews``) whose pixel size is ≤ it.
"""

from __future__ import annotations

import math
import threading
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from reefmap.errors import GeometryError
from reefmap.geometry.crs import wrap_period
from reefmap.geometry.grid import BBox, GeoBox, Shape, Window
from reefmap.geometry.vector import read_geojson
from reefmap.products.mapview import (Level, MapInfo, check_layers, crs_units, georeference, inspect_map,
                                     level_dataset, var_attrs)
from reefmap.sources import urls
from reefmap.store.format import CLASS_NODATA, OUTSIDE, UNFINISHED, is_finished

# ------------------------------------------------------------------------------------------------------------
# boxes → windows
# ------------------------------------------------------------------------------------------------------------
def parse_bbox(bbox) -> BBox:
    """``W,S,E,N`` (text, sequence or ``BBox``) in lon/lat degrees; W > E crosses the antimeridian."""
    return BBox.parse_lonlat(list(bbox) if isinstance(bbox, BBox) else bbox)


@dataclass(frozen=True)
class Piece:
    """One window of a level in a query; the eastern piece of a box crossing the antimeridian is shifted."""

    window: Window
    x_shift: float  # added to the piece's x coordinates (one wrap period for the eastern piece of a crossing box)

    def geobox(self, lvl: Level) -> GeoBox:
        """The piece's grid, its x shifted."""
        from affine import Affine

        gb = lvl.geobox.window(self.window)
        return GeoBox(gb.shape, Affine.translation(self.x_shift, 0.0) @ gb.transform, gb.crs)


def pieces(info: MapInfo, lvl: Level, box: BBox | None) -> list[Piece]:
    """The level windows covering a lon/lat box (None: the whole level), west to east; BBoxError when it misses
    the map."""
    gb = lvl.geobox
    if box is None:
        return [Piece(Window(0, gb.shape.y, 0, gb.shape.x), 0.0)]
    return [Piece(p.window, p.x_shift)
            for p in gb.bbox_pieces(box, "EPSG:4326", what=f"the map {info.url!r}", contiguous=True)]


# ------------------------------------------------------------------------------------------------------------
# polygons → masks
# ------------------------------------------------------------------------------------------------------------
def geometry_from(obj) -> Any:
    """A shapely (Multi)Polygon from a shapely geometry, a GeoJSON mapping (geometry, Feature, FeatureCollection),
    a GeoJSON text, or the path of a GeoJSON file (the one GeoJSON reader, ``read_geojson``); lon/lat expected."""
    import shapely

    shapes, _ = read_geojson(obj, expect_crs="EPSG:4326")
    if not shapes:
        raise GeometryError("the GeoJSON has no geometry; give a Polygon or MultiPolygon in lon/lat")
    geom = shapes[0] if len(shapes) == 1 else shapely.union_all(shapes)
    _check_lonlat_polygon(geom)
    return geom


def _check_lonlat_polygon(geom) -> None:
    import shapely

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


def geometry_bbox(geom) -> BBox:
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


def store_shapes(geom, crs: str) -> list:
    """A lon/lat polygon in the store CRS (edges densified), plus its copies one wrap period east and west."""
    import shapely
    from pyproj import Transformer
    from shapely import affinity

    if crs == "EPSG:4326":
        out = geom
    else:
        dense = shapely.segmentize(geom, 0.01)
        tr = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
        out = shapely.transform(dense, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
        if not out.is_valid:
            out = shapely.make_valid(out)
    period = wrap_period(crs)
    return [out] + ([affinity.translate(out, xoff=period), affinity.translate(out, xoff=-period)] if period else [])


_RASTERIZE_LOCK = threading.Lock()


def mask_block(shapes, gb_json: dict, rows: slice, cols: slice) -> np.ndarray:
    """Pixels of a block whose centre lies inside the shapes (rasterio.features, ``all_touched=False``); a block
    whose pixel centres all lie inside one shape, or outside every shape, is answered without rasterizing."""
    import shapely

    gb = GeoBox.from_json(gb_json).window(Window(rows.start, rows.stop, cols.start, cols.stop))
    t, (ny, nx) = gb.transform, gb.shape
    corners = [t @ (c + 0.5, r + 0.5) for r in (0, ny - 1) for c in (0, nx - 1)]
    hull = shapely.MultiPoint(corners).convex_hull
    if any(shapely.contains_properly(s, hull) for s in shapes):
        return np.ones((ny, nx), bool)
    if not any(shapely.intersects(s, hull) for s in shapes):
        return np.zeros((ny, nx), bool)
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.features import geometry_mask

    # rasterio's in-memory dataset set-up can emit a spurious NotGeoreferencedWarning when called from dask's
    # worker threads (the transform is set right after; the mask is right): silence exactly that, one block at
    # a time so the temporary warning filter cannot interleave with another block's
    with _RASTERIZE_LOCK, warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)
        return geometry_mask(shapes, out_shape=(ny, nx), transform=t, invert=True, all_touched=False)


def _block_slices(chunks):
    re_ = np.concatenate([[0], np.cumsum(chunks[0])]).astype(int)
    ce = np.concatenate([[0], np.cumsum(chunks[1])]).astype(int)
    return [((i, j), slice(int(re_[i]), int(re_[i + 1])), slice(int(ce[j]), int(ce[j + 1])))
            for i in range(len(chunks[0])) for j in range(len(chunks[1]))]


def lazy_mask(shapes: list, geobox: GeoBox, chunks):
    """A dask bool array over ``geobox`` (with ``chunks``): pixel centres inside the shapes."""
    import dask.array as da
    from dask.base import tokenize

    name = "reefmap-geometry-mask-" + tokenize([s.wkb for s in shapes], geobox.to_json(), chunks)
    gj = geobox.to_json()
    dsk = {(name, *ij): (mask_block, shapes, gj, rows, cols) for ij, rows, cols in _block_slices(chunks)}
    return da.Array(dsk, name, chunks, dtype=bool, meta=np.empty((0, 0), bool))


def count_inside(shapes: list, lvl: Level, piece: Piece, chunks) -> tuple[int, int]:
    """(finished pixels, pixels) whose centre lies inside the shapes, over a piece: the same blocks as its lazy
    mask, from the tile states alone (no dask, no pixel read)."""
    gb, w = piece.geobox(lvl), piece.window
    gj = gb.to_json()
    fin = n = 0
    for _, rows, cols in _block_slices(chunks):
        m = mask_block(shapes, gj, rows, cols)
        st = lvl.states_block(slice(rows.start + w.row_start, rows.stop + w.row_start),
                              slice(cols.start + w.col_start, cols.stop + w.col_start))
        fin += int(np.count_nonzero(m & is_finished(st)))
        n += int(np.count_nonzero(m))
    return fin, n


def _masked(ds, mask, layers):
    import xarray as xr

    for v in layers:
        if v == "reef_probability":
            ds[v] = ds[v].where(mask)
        else:
            ds[v] = xr.where(mask, ds[v], np.uint8(CLASS_NODATA)).astype(np.uint8).assign_attrs(ds[v].attrs)
    ds["tile_state"] = xr.where(mask, ds["tile_state"], np.uint8(OUTSIDE)).astype(np.uint8).assign_attrs(
        var_attrs("tile_state"))
    return ds


# ------------------------------------------------------------------------------------------------------------
# the query
# ------------------------------------------------------------------------------------------------------------
def _piece_dataset(info: MapInfo, lvl: Level, piece: Piece, layers, shapes) -> tuple[Any, int, int]:
    """The lazy Dataset of one piece (masked to the shapes when given) and its (finished, pixels) counts."""
    import xarray as xr

    ds = level_dataset(info, lvl, piece.window, layers)
    if piece.x_shift:
        ds = ds.assign_coords(x=ds.x + piece.x_shift)
    if shapes is None:
        return ds, *lvl.count_finished(piece.window)
    chunks = ds["tile_state"].data.chunks
    mask = xr.DataArray(lazy_mask(shapes, piece.geobox(lvl), chunks), dims=("y", "x"))
    return _masked(ds, mask, layers), *count_inside(shapes, lvl, piece, chunks)


def stale_note(s: dict) -> str:
    """One line saying that an answer came from a stale overview level ('' when it did not), for ``summary`` dicts."""
    n = s.get("stale_overview_tiles", 0)
    if not n:
        return ""
    return (f"overview level {s['level']} is stale: {n} tile(s) finished since it was built count as unfinished "
            f"here; refresh it with `reefmap overviews {s['store']}` (or ask a finer resolution)")


def query(store, bbox=None, geometry=None, resolution=None, layers=None, *, storage_options: dict | None = None):
    """A lazy ``xarray.Dataset``: the subset of the map ``store`` covering ``bbox`` (lon/lat W,S,E,N) and/or
    ``geometry`` (a lon/lat polygon: GeoJSON mapping, text, file or shapely geometry; pixels whose centre lies
    outside it are masked, their ``tile_state`` set to ``OUTSIDE``). With neither, the whole map.

    ``resolution`` (store CRS units) reads the coarsest overview level with pixels no larger than it;
    ``layers`` picks ``reef_probability`` and/or ``classification`` (default both; ``tile_state`` is always
    there). Only the chunks that intersect the subset are read, when the data are computed. The attributes say
    how complete the subset is and what was read (see the module docstring).
    """
    import xarray as xr

    info = inspect_map(store, storage_options)
    layers = check_layers(layers)
    geom = geometry_from(geometry) if geometry is not None else None
    box = parse_bbox(bbox) if bbox is not None else geometry_bbox(geom) if geom is not None else None
    lvl = info.pick_level(resolution)
    parts_at = pieces(info, lvl, box)
    lvl, stale = info.with_states(lvl, [p.window for p in parts_at])
    shapes = store_shapes(geom, info.crs) if geom is not None else None
    parts, fin, n = [], 0, 0
    for p in parts_at:
        ds, f, m = _piece_dataset(info, lvl, p, layers, shapes)
        parts.append(ds)
        fin, n = fin + f, n + m
    if shapes is not None and n == 0:
        raise GeometryError(f"the polygon covers no pixel centre of the map at this resolution "
                            f"({lvl.pixel_size:g} {crs_units(info.crs)}); give a larger polygon or a finer resolution")
    ds = parts[0] if len(parts) == 1 else xr.concat(parts, dim="x")
    first = parts_at[0]
    gb = GeoBox(Shape(first.window.shape.y, ds.sizes["x"]), first.geobox(lvl).transform, lvl.geobox.crs)
    attrs = {"store": urls.redact(info.url), "level": lvl.index, "resolution": lvl.pixel_size, "tile_size": info.grid.tile,
             "complete_fraction": fin / n if n else 0.0, "has_geometry": int(geom is not None),
             "stale_overview_tiles": stale, "unfinished_code": UNFINISHED, "outside_geometry_code": OUTSIDE}
    if box is not None:
        attrs["bbox_lonlat"] = [float(v) for v in box]
    return georeference(ds, gb, attrs)


def summary(ds) -> dict:
    """A JSON-ready description of a query result: store, bbox, CRS, shape, level, resolution, completeness, and
    how many tiles finished since the overview level it read was built (``stale_overview_tiles``)."""
    bbox = ds.attrs.get("bbox_lonlat")
    return {"store": ds.attrs.get("store"), "bbox": None if bbox is None else [float(v) for v in bbox],
            "crs": ds.rio.crs.to_string() if ds.rio.crs is not None else None,
            "shape": {"y": int(ds.sizes["y"]), "x": int(ds.sizes["x"])}, "level": int(ds.attrs.get("level", 0)),
            "resolution": float(ds.attrs["resolution"]) if "resolution" in ds.attrs else None,
            "complete_fraction": round(float(ds.attrs.get("complete_fraction", 0.0)), 6),
            "geometry": bool(ds.attrs.get("has_geometry", 0)),
            "stale_overview_tiles": int(ds.attrs.get("stale_overview_tiles", 0)),
            "layers": [v for v in ds.data_vars if v != "tile_state"]}
