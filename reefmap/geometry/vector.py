"""The one GeoJSON reader: a file, URL, GeoJSON text, mapping or shapely geometry -> shapely geometries + their CRS;
and the features of class polygon files (GeoJSON, GeoPackage) rasterised onto a grid: the labels of training and
the truth of calval (``read_features``, ``class_features``, ``to_crs``, ``rasterize``).

The CRS rule: ``crs=`` when given; else a legacy GeoJSON ``"crs"`` member (``{"type": "name", "properties":
{"name": ...}}``, GeoJSON 2008); else EPSG:4326, as RFC 7946 says GeoJSON is WGS 84 lon/lat. OGC CRS84 (GeoJSON's
lon/lat) is spelt EPSG:4326: they differ only in axis order, and reefmap always reads x = lon, y = lat.
Errors are ``GeometryError`` naming the source; callers wrap them in their own (a mask's ``MaskError``).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from reefmap.classes import ClassScheme
from reefmap.errors import GeometryError, TruthError
from reefmap.geometry.crs import norm_crs
from reefmap.geometry.grid import GeoBox

LONLAT = "EPSG:4326"
#: the file name endings read as vector files (GeoJSON, GeoPackage) by ``read_features``
VECTOR_EXTS = (".geojson", ".json", ".gpkg")


def vector_crs(crs: Any, where: str = "geometry") -> str:
    """``norm_crs`` with OGC CRS84 spelt EPSG:4326; ``GeometryError`` for something pyproj does not know."""
    from pyproj import CRS

    try:
        c = CRS.from_user_input(crs)
    except Exception as e:  # pyproj.exceptions.CRSError
        raise GeometryError(f"{where}: CRS {crs!r} is not one pyproj knows ({e})") from None
    if c.to_epsg() is None and "CRS84" in c.name:
        return LONLAT
    s = norm_crs(c)
    return LONLAT if "CRS84" in s else s


def read_geojson(source: Any, crs: Any = None, *, expect_crs: Any = None) -> tuple[list, str]:
    """The non-empty shapely geometries of ``source`` and their CRS (``vector_crs`` text).

    ``source``: a shapely geometry; a GeoJSON mapping (geometry, Feature, FeatureCollection, GeometryCollection);
    GeoJSON text; or the path/URL (fsspec) of a GeoJSON file. ``crs`` overrides the CRS the source states (see
    the module docstring). ``expect_crs``: refuse (``GeometryError``) a source in another CRS. The list may be
    empty (a collection without geometries): whether that is an error is the caller's call.
    """
    import shapely

    if isinstance(source, shapely.Geometry):
        where, doc = "the geometry", None
    elif isinstance(source, (str, os.PathLike)) and not os.fspath(source).lstrip().startswith("{"):
        where = f"file {os.fspath(source)!r}"
        doc = _read_file(os.fspath(source), where)
    elif isinstance(source, str):
        where = "the GeoJSON text"
        try:
            doc = json.loads(source)
        except ValueError as e:
            raise GeometryError(f"{where} is not valid GeoJSON ({e})") from None
    else:
        where, doc = "the GeoJSON", source
    if doc is not None and (not isinstance(doc, dict) or "type" not in doc):
        raise GeometryError(f"{where} is not GeoJSON (no 'type' in {_short(doc)}); give a geometry, Feature or "
                            "FeatureCollection, a GeoJSON file or a shapely geometry")
    if crs is not None:
        out_crs = vector_crs(crs, where)
    else:
        out_crs = LONLAT if doc is None else _stated_crs(doc, where)
    if expect_crs is not None and out_crs != vector_crs(expect_crs, where):
        declared = _declared_name(doc) if crs is None and doc is not None else out_crs
        raise GeometryError(f"{where} declares CRS {declared!r}; give it in {expect_crs} "
                            f"(e.g. reproject it with ogr2ogr -t_srs {expect_crs})")
    shapes = [source] if doc is None else _shapes(doc, where)
    return [s for s in shapes if not s.is_empty], out_crs


def read_features(source, *, what: str = "truth") -> tuple[list[tuple[Any, dict]], str]:
    """(shapely geometry, properties) of each feature of a GeoJSON or GeoPackage file (labels, truth, regions),
    and their CRS; ``TruthError`` naming ``what`` when it cannot be read."""
    import shapely

    path = os.fspath(source)
    if not os.path.exists(path):
        raise TruthError(f"{what} file {path!r} does not exist; give a GeoJSON or GeoPackage file")
    if path.lower().endswith(".gpkg"):
        return read_gpkg(path, what)
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read())
        _, crs = read_geojson(doc)
        feats = doc["features"] if doc.get("type") == "FeatureCollection" else [doc]
        out = [(shapely.geometry.shape(f["geometry"]), dict(f.get("properties") or {})) for f in feats
               if isinstance(f, dict) and f.get("geometry")]
    except Exception as e:  # json, shapely and reefmap GeometryError alike: the file cannot serve
        raise TruthError(f"{what} file {path!r} cannot be read as GeoJSON ({type(e).__name__}: {e}); give a "
                         "FeatureCollection of polygons with a class property") from None
    return out, crs


def read_gpkg(path: str, what: str) -> tuple[list[tuple[Any, dict]], str]:
    """The features of a GeoPackage's first feature table (sqlite3 + the GeoPackage binary header + WKB)."""
    import sqlite3

    import shapely

    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            table, column, srs = con.execute("SELECT table_name, column_name, srs_id FROM gpkg_geometry_columns").fetchone()
            org, org_id = con.execute("SELECT organization, organization_coordsys_id FROM gpkg_spatial_ref_sys "
                                      "WHERE srs_id = ?", (srs,)).fetchone()
            cur = con.execute(f'SELECT * FROM "{table}"')
            cols = [d[0] for d in cur.description]
            rows = cur.fetchall()
        finally:
            con.close()
        out = []
        for row in rows:
            rec = dict(zip(cols, row))
            blob = rec.pop(column)
            if blob is None:
                continue
            env = (0, 32, 48, 48, 64)[(blob[3] >> 1) & 7]
            out.append((shapely.from_wkb(bytes(blob[8 + env:])), rec))
    except Exception as e:  # sqlite3, a malformed header or WKB: the file cannot serve
        raise TruthError(f"{what} file {path!r} cannot be read as a GeoPackage ({type(e).__name__}: {e}); give a "
                         "GeoPackage with one feature table, or GeoJSON") from None
    return out, f"{org}:{org_id}" if str(org).upper() == "EPSG" else "EPSG:4326"


def to_crs(geoms: list, src: str, dst: str) -> list:
    import shapely
    from pyproj import Transformer

    if src == dst:
        return list(geoms)
    tr = Transformer.from_crs(src, dst, always_xy=True)
    return [shapely.transform(g, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1]))) for g in geoms]


def rasterize(shapes_values, gb: GeoBox, fill: int, dtype="int32") -> np.ndarray:
    """(geometry, value) pairs burnt onto the grid ``gb`` (pixels whose centre is inside; later ones win), ``fill``
    elsewhere."""
    from rasterio import features

    items = list(shapes_values)
    if not items:
        return np.full(tuple(gb.shape), fill, dtype)
    return features.rasterize(items, out_shape=tuple(gb.shape), transform=gb.transform, fill=fill, dtype=dtype)


def class_features(path: str, attribute: str, scheme: ClassScheme, *, what: str = "truth",
                   hint: str = "name the class attribute") -> tuple[list, list[int], str]:
    """The polygons of a GeoJSON/GeoPackage file of classes, their class codes (``attribute`` holds codes or
    class names of ``scheme``, any case) and their CRS. ``TruthError`` for a feature without ``attribute`` (``hint``
    says how to name another) or values outside the scheme (listed)."""
    feats, crs = read_features(path, what=what)
    lookup = {n.lower(): c for n, c in zip(scheme.names, scheme.codes)} | {str(c): c for c in scheme.codes}
    codes, bad = [], set()
    for _, props in feats:
        if attribute not in props:
            raise TruthError(f"{what} {path!r}: a feature has no attribute {attribute!r} (it has {sorted(props)}); {hint}")
        v = props[attribute]
        key = str(int(v)) if isinstance(v, (int, float)) and float(v).is_integer() else str(v).lower()
        if key not in lookup:
            bad.add(str(v))
        codes.append(lookup.get(key))
    if bad:
        raise TruthError(f"{what} {path!r}: class values {sorted(bad)} of attribute {attribute!r} are not in the "
                         f"class scheme {dict(zip(scheme.names, scheme.codes))}; map them to these names or codes")
    return [g for g, _ in feats], codes, crs


def _read_file(path: str, where: str) -> dict:
    import fsspec

    if "://" not in path and not os.path.exists(path):
        raise GeometryError(f"{where} does not exist; give a GeoJSON file")
    try:
        with fsspec.open(path, "rb") as f:
            return json.loads(f.read())
    except (OSError, UnicodeDecodeError) as e:
        raise GeometryError(f"{where} cannot be read ({e})") from None
    except json.JSONDecodeError as e:
        raise GeometryError(f"{where} is not valid GeoJSON ({e})") from None


def _shapes(doc: dict, where: str) -> list:
    import shapely

    kind = doc["type"]
    if kind == "FeatureCollection":
        geoms = [f.get("geometry") for f in doc.get("features") or [] if isinstance(f, dict)]
    elif kind == "Feature":
        geoms = [doc.get("geometry")]
    elif kind == "GeometryCollection":
        geoms = list(doc.get("geometries") or [])
    else:
        geoms = [doc]
    try:
        return [shapely.geometry.shape(g) for g in geoms if g]
    except Exception as e:  # shapely raises GeometryTypeError, ValueError, KeyError...
        raise GeometryError(f"{where} holds a geometry shapely cannot read ({type(e).__name__}: {e})") from None


def _declared_name(doc: dict) -> str | None:
    c = doc.get("crs")
    if isinstance(c, dict) and c.get("type") == "name" and isinstance(c.get("properties"), dict):
        return str(c["properties"].get("name"))
    return None if c is None else str(c)


def _stated_crs(doc: dict, where: str) -> str:
    """The CRS a GeoJSON document states: its legacy ``crs`` member, else EPSG:4326 (RFC 7946)."""
    c = doc.get("crs")
    if c is None:
        return LONLAT
    name = _declared_name(doc)
    if not (isinstance(c, dict) and c.get("type") == "name" and name):
        raise GeometryError(f"{where} has a 'crs' member {c!r} reefmap cannot read; use a named CRS "
                            "({'type': 'name', 'properties': {'name': 'EPSG:3857'}})")
    return vector_crs(name, where)


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) < 80 else s[:77] + "..."


__all__ = ["LONLAT", "VECTOR_EXTS", "class_features", "rasterize", "read_features", "read_geojson", "to_crs",
           "vector_crs"]
