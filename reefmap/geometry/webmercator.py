"""The Web Mercator quad lattice: output grids for global runs, as value objects.

``web_mercator_quads(zoom, tile)`` is the Planet-basemap quad lattice: Web Mercator (EPSG:3857) pixels of
``156543.03392804097 / 2**zoom`` m (4.777 m at zoom 15), cut into quads of ``tile`` px that line up with the
global quad lattice (origin at the top-left corner of the Mercator square, x = -20037508.34 m,
y = +20037508.34 m), keeping only the quad rows that touch ``[lat_min, lat_max]``. Everything is arithmetic
on the affine transform and the shape: nothing is allocated per pixel or per tile, so the 8.4-million-pixel
wide zoom-15 globe is built in microseconds. (The global-run configuration that names such a grid is
``reefmap.config.GlobalRunConfig``.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from affine import Affine

from reefmap.checks import finite_number, whole_number
from reefmap.errors import InvalidParameter
from reefmap.geometry.grid import GeoBox, Shape, TileGrid, TileIndex

#: Earth radius of the spherical Web Mercator (EPSG:3857), metres.
WEB_MERCATOR_RADIUS = 6378137.0
#: Half the side of the Web Mercator square, metres (pi * R).
WEB_MERCATOR_HALF = math.pi * WEB_MERCATOR_RADIUS  # 20037508.342789244
#: Size of a zoom-0 pixel (the 256-px zoom-0 tile covers the whole square), metres.
ZOOM0_PIXEL = 2 * WEB_MERCATOR_HALF / 256  # 156543.03392804097
#: Latitude of the Mercator square's edge (where y = pi * R).
WEB_MERCATOR_MAX_LAT = math.degrees(2 * math.atan(math.exp(math.pi)) - math.pi / 2)  # 85.0511...

_EPS = 1e-9


def mercator_y(lat: float) -> float:
    """Web Mercator northing (m) of latitude ``lat`` (degrees, clamped to the Mercator square)."""
    lat = max(-WEB_MERCATOR_MAX_LAT, min(WEB_MERCATOR_MAX_LAT, float(lat)))
    return WEB_MERCATOR_RADIUS * math.log(math.tan(math.pi / 4 + math.radians(lat) / 2))


@dataclass(frozen=True)
class QuadLattice:
    """Where a ``web_mercator_quads`` grid sits in the global quad lattice (for naming quads like Planet's)."""

    zoom: int
    tile: int
    row_offset: int  #: global quad row of the grid's first tile row
    quads_x: int  #: quads around the world at this zoom and quad size
    quads_y: int  #: quad rows from pole square edge to pole square edge

    def global_quad(self, idx: TileIndex) -> TileIndex:
        """The global lattice position (row from the north edge, column from -180°) of grid tile ``idx``."""
        return TileIndex(int(idx[0]) + self.row_offset, int(idx[1]))

    def quad_id(self, idx: TileIndex) -> str:
        """Planet-style quad id ``"{x}-{y}"`` (y counted from the south edge, as Planet's basemap quads)."""
        gy, gx = self.global_quad(idx)
        return f"{gx}-{self.quads_y - 1 - gy}"


def web_mercator_quads(zoom: int = 15, tile: int = 4096, lat_min: float = -30.0, lat_max: float = 30.0) -> TileGrid:
    """The Planet-basemap quad grid of ``zoom``: EPSG:3857, ``tile``-px quads on the global lattice, keeping the
    quad rows that touch ``[lat_min, lat_max]`` (every column: the grid always goes round the world).

    >>> g = web_mercator_quads(15, 4096, -30, 30)
    >>> tuple(g.shape), round(g.geobox.resolution_x, 4)
    ((359, 2048), 4.7773)
    """
    zoom, tile = whole_number("zoom", zoom, 0, 30), whole_number("tile", tile, 1, 1 << 20)
    lat_min, lat_max = finite_number("lat_min", lat_min), finite_number("lat_max", lat_max)
    if not -90 <= lat_min < lat_max <= 90:
        raise InvalidParameter(f"lat_min {lat_min} and lat_max {lat_max} must satisfy -90 <= lat_min < lat_max <= 90")
    world_px = 256 * (1 << zoom)  # pixels around the world at this zoom
    if world_px % tile:
        raise InvalidParameter(
            f"tile {tile} px does not divide the zoom-{zoom} world of {world_px} px, so quads would not line up with "
            f"the global lattice; use a power of two up to {world_px} (e.g. 4096 at zoom 15)"
        )
    res = ZOOM0_PIXEL / (1 << zoom)
    quad_m = res * tile
    n_quads = world_px // tile
    top = WEB_MERCATOR_HALF - mercator_y(lat_max)  # distance south of the lattice origin, metres
    bottom = WEB_MERCATOR_HALF - mercator_y(lat_min)
    row0 = max(0, math.floor(top / quad_m + _EPS))
    row1 = min(n_quads, max(row0 + 1, math.ceil(bottom / quad_m - _EPS)))
    transform = Affine(res, 0.0, -WEB_MERCATOR_HALF, 0.0, -res, WEB_MERCATOR_HALF - row0 * quad_m)
    geobox = GeoBox(Shape((row1 - row0) * tile, world_px), transform, "EPSG:3857")
    return TileGrid(geobox, tile)


def quad_lattice(grid: TileGrid) -> QuadLattice | None:
    """The quad lattice a ``web_mercator_quads`` grid lies on (None for any other grid)."""
    g = grid.geobox
    if g.crs != "EPSG:3857" or not g.is_axis_aligned:
        return None
    t = g.transform
    zoom = round(math.log2(ZOOM0_PIXEL / t.a)) if t.a > 0 else -1
    if zoom < 0 or not math.isclose(t.a, ZOOM0_PIXEL / (1 << zoom), rel_tol=1e-12) or not math.isclose(-t.e, t.a, rel_tol=1e-12):
        return None
    quad_m = t.a * grid.tile
    row_off = (WEB_MERCATOR_HALF - t.f) / quad_m
    if not math.isclose(t.c, -WEB_MERCATOR_HALF, abs_tol=1e-3) or abs(row_off - round(row_off)) > 1e-6:
        return None
    world_px = 256 * (1 << zoom)
    return QuadLattice(zoom, grid.tile, int(round(row_off)), world_px // grid.tile, world_px // grid.tile)


def tile_geobox(grid: TileGrid) -> GeoBox:
    """A GeoBox with one pixel per *tile* of ``grid`` (edge tiles count whole): what masks rasterize onto."""
    t = grid.geobox.transform @ Affine.scale(grid.tile, grid.tile)
    return GeoBox(grid.shape, t, grid.geobox.crs)
