"""The one GeoJSON reader: a file, URL, GeoJSON text, mapping or shapely geometry -> shapely geometries + their CRS.

The CRS rule: ``crs=`` when given; else a legacy GeoJSON ``"crs"`` member (``{"type": "name", "properties":
{"name": ...}}``, GeoJSON 2008); else EPSG:4326, as RFC 7946 says GeoJSON is WGS 84 lon/lat. OGC CRS84 (GeoJSON's
lon/lat) is spelt EPSG:4326: they differ only in axis order, and reefmap always reads x = lon, y = lat.
Errors are ``GeometryError`` naming the source; callers wrap them in their own (a mask's ``MaskError``).
"""

from __future__ import annotations

import json
import os
from typing import Any

from reefmap.errors import GeometryError
from reefmap.geometry.crs import norm_crs

LONLAT = "EPSG:4326"


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


__all__ = ["LONLAT", "read_geojson", "vector_crs"]
