"""Coordinate reference systems: the one normaliser, and what a CRS says about going round the globe.

Every CRS reefmap stores or compares is the text ``norm_crs`` gives (``EPSG:n`` when the CRS has an EPSG code,
else its WKT), so two spellings of one CRS compare equal as strings.

Cache: ``norm_crs``, ``is_geographic`` and ``wrap_period`` remember their answers per CRS *text* (a pure function
of it: pyproj's database does not change while a process runs), at most 256 entries each, never invalidated.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any


def norm_crs(crs: Any) -> str:
    """Canonical text for a CRS (anything ``pyproj.CRS.from_user_input`` takes): ``EPSG:n`` when it has an EPSG
    code, else WKT. Raises pyproj's ``CRSError`` for something that is not a CRS."""
    if isinstance(crs, str):
        return _norm_text(crs)
    from pyproj import CRS

    return _canonical(CRS.from_user_input(crs))


@lru_cache(maxsize=256)
def _norm_text(text: str) -> str:
    from pyproj import CRS

    return _canonical(CRS.from_user_input(text))


def _canonical(c) -> str:
    epsg = c.to_epsg()
    return f"EPSG:{epsg}" if epsg is not None else c.to_wkt()


def is_geographic(crs: Any) -> bool:
    """Whether the CRS's coordinates are longitude/latitude."""
    return _is_geographic_text(norm_crs(crs))


@lru_cache(maxsize=256)
def _is_geographic_text(crs: str) -> bool:
    from pyproj import CRS

    return bool(CRS.from_user_input(crs).is_geographic)


@lru_cache(maxsize=256)
def wrap_period(crs: str) -> float | None:
    """The x period of a CRS that wraps around the globe (geographic in degrees: 360; a normal-aspect Mercator:
    the length of the equator in its units); None for any other CRS. ``crs`` as ``norm_crs`` gives it."""
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


def max_latitude(crs: str) -> float:
    """The highest |latitude| a CRS that wraps around the globe can show: 90 (geographic) or the edge of the
    Mercator square (85.0511...)."""
    from reefmap.geometry.webmercator import WEB_MERCATOR_MAX_LAT

    return 90.0 if is_geographic(crs) else WEB_MERCATOR_MAX_LAT


def transform_bounds(box, src_crs: str, dst_crs: str, densify_pts: int = 51):
    """``pyproj`` ``transform_bounds`` with x/y order always (lon, lat); None when a corner does not transform."""
    from pyproj import Transformer

    vals = Transformer.from_crs(src_crs, dst_crs, always_xy=True).transform_bounds(*box, densify_pts=densify_pts)
    return vals if all(map(math.isfinite, vals)) else None


__all__ = ["norm_crs", "is_geographic", "wrap_period", "max_latitude", "transform_bounds"]
