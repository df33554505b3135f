"""Geometry as value objects: a pixel grid (``GeoBox``), windows into it, and its tiling (``TileGrid``).

No raw ``(a, b)`` tuples cross an API here: every shape, window and bound has named fields, rows before
columns (``y`` before ``x``) everywhere a pair is stored, and the sign of the y resolution lives in the
affine transform only. Nothing in this module does I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple

import numpy as np
from affine import Affine

from reefmap.errors import BBoxError, InvalidParameter
from reefmap.geometry.crs import is_geographic, max_latitude, norm_crs, transform_bounds, wrap_period


class Shape(NamedTuple):
    """A raster shape: ``y`` rows by ``x`` columns."""

    y: int
    x: int


class BBox(NamedTuple):
    """A bounding box in some CRS: west/south/east/north (``left, bottom, right, top``)."""

    left: float
    bottom: float
    right: float
    top: float

    @classmethod
    def parse(cls, text: str | Any) -> "BBox":
        """``"W,S,E,N"`` (or a 4-sequence) → BBox, with a clear error for anything else."""
        if isinstance(text, str):
            parts = [p for p in text.replace(" ", "").split(",") if p != ""]
        else:
            parts = list(text)
        try:
            vals = [float(p) for p in parts]
        except (TypeError, ValueError):
            raise BBoxError(f"bbox {text!r} is not four numbers; give it as W,S,E,N, e.g. -78.5,24.0,-77.5,25.0") from None
        if len(vals) != 4 or not all(math.isfinite(v) for v in vals):
            raise BBoxError(f"bbox {text!r} is not four finite numbers; give it as W,S,E,N, e.g. -78.5,24.0,-77.5,25.0")
        w, s, e, n = vals
        if s >= n:
            raise BBoxError(f"bbox {text!r} has south {s} >= north {n}; give it as W,S,E,N with S < N")
        if w == e:
            raise BBoxError(f"bbox {text!r} has zero width (west == east {w}); give it as W,S,E,N with W != E")
        return cls(w, s, e, n)

    @classmethod
    def parse_lonlat(cls, text: str | Any) -> "BBox":
        """``parse``, then the one lon/lat rule (``reefmap run --bbox``, ``query``, ``stats``): longitudes in
        [-180, 180], latitudes in [-90, 90]; W > E crosses the antimeridian."""
        b = cls.parse(text)
        if not all(-180.0 <= v <= 180.0 for v in (b.left, b.right)) or not all(-90.0 <= v <= 90.0 for v in (b.bottom, b.top)):
            raise BBoxError(
                f"bbox {tuple(b)} is not in lon/lat degrees (longitudes must lie in [-180, 180], latitudes in "
                "[-90, 90]); give W,S,E,N in EPSG:4326 — projected coordinates (metres) are not accepted")
        return b


@dataclass(frozen=True)
class Window:
    """A half-open pixel window ``[row_start, row_stop) x [col_start, col_stop)``. May extend past a grid."""

    row_start: int
    row_stop: int
    col_start: int
    col_stop: int

    def __post_init__(self):
        if self.row_stop < self.row_start or self.col_stop < self.col_start:
            raise InvalidParameter(f"window {self} has a negative size")

    @property
    def shape(self) -> Shape:
        return Shape(self.row_stop - self.row_start, self.col_stop - self.col_start)

    @property
    def slices(self) -> tuple[slice, slice]:
        """``(rows, cols)`` slices, for numpy indexing of a (..., y, x) array."""
        return slice(self.row_start, self.row_stop), slice(self.col_start, self.col_stop)

    def pad(self, n: int) -> "Window":
        return Window(self.row_start - n, self.row_stop + n, self.col_start - n, self.col_stop + n)

    def intersect(self, other: "Window") -> "Window | None":
        r0, r1 = max(self.row_start, other.row_start), min(self.row_stop, other.row_stop)
        c0, c1 = max(self.col_start, other.col_start), min(self.col_stop, other.col_stop)
        if r0 >= r1 or c0 >= c1:
            return None
        return Window(r0, r1, c0, c1)

    def clamp(self, shape: Shape) -> "Window":
        w = self.intersect(Window(0, shape.y, 0, shape.x))
        if w is None:
            raise InvalidParameter(f"window {self} lies outside a grid of shape {tuple(shape)}")
        return w

    def relative_to(self, outer: "Window") -> "Window":
        """This window in the pixel coordinates of ``outer`` (which must contain it)."""
        return Window(self.row_start - outer.row_start, self.row_stop - outer.row_start,
                      self.col_start - outer.col_start, self.col_stop - outer.col_start)

    def to_json(self) -> list[int]:
        return [self.row_start, self.row_stop, self.col_start, self.col_stop]

    @classmethod
    def from_json(cls, v) -> "Window":
        return cls(*map(int, v))


def split_antimeridian(bbox: BBox) -> list[BBox]:
    """A lon/lat box with W > E crosses the antimeridian: its pieces ``[W, 180]`` and ``[-180, E]``; else ``[bbox]``."""
    if bbox.left < bbox.right:
        return [bbox]
    return [BBox(bbox.left, bbox.bottom, 180.0, bbox.top), BBox(-180.0, bbox.bottom, bbox.right, bbox.top)]


@dataclass(frozen=True)
class BoxPiece:
    """One stretch of a grid that a box covers: its pixel ``window``, and ``x_shift`` to add to the piece's x
    coordinates so that it lies where the box does, east of the piece before it (whole wrap periods on a grid
    that goes round the globe, e.g. one period for the eastern piece of a box crossing the antimeridian; else 0)."""

    window: Window
    x_shift: float = 0.0


@dataclass(frozen=True)
class GeoBox:
    """A georeferenced pixel grid: shape + affine transform (pixel corner → CRS) + CRS."""

    shape: Shape
    transform: Affine
    crs: str

    def __post_init__(self):
        object.__setattr__(self, "shape", Shape(int(self.shape[0]), int(self.shape[1])))
        if self.shape.y <= 0 or self.shape.x <= 0:
            raise InvalidParameter(f"grid shape {tuple(self.shape)} must be positive in y and x")
        if not isinstance(self.transform, Affine):
            object.__setattr__(self, "transform", Affine(*list(self.transform)[:6]))
        object.__setattr__(self, "crs", norm_crs(self.crs))

    # -- constructors ---------------------------------------------------------------------------------
    @classmethod
    def from_bbox(cls, bbox: BBox, crs: Any, resolution: float) -> "GeoBox":
        """A north-up grid covering ``bbox`` with square pixels of ``resolution`` CRS units."""
        if resolution <= 0:
            raise InvalidParameter(f"resolution {resolution} must be > 0")
        nx = max(1, math.ceil(round((bbox.right - bbox.left) / resolution, 6)))
        ny = max(1, math.ceil(round((bbox.top - bbox.bottom) / resolution, 6)))
        return cls(Shape(ny, nx), Affine(resolution, 0, bbox.left, 0, -resolution, bbox.top), crs)

    # -- geometry -------------------------------------------------------------------------------------
    @property
    def resolution_x(self) -> float:
        return self.transform.a

    @property
    def resolution_y(self) -> float:
        """Signed: negative for north-up grids."""
        return self.transform.e

    @property
    def is_axis_aligned(self) -> bool:
        return self.transform.b == 0 and self.transform.d == 0

    @property
    def bounds(self) -> BBox:
        xs, ys = self._corners()
        return BBox(min(xs), min(ys), max(xs), max(ys))

    def _corners(self):
        t = self.transform
        pts = [t @ (c, r) for r, c in ((0, 0), (0, self.shape.x), (self.shape.y, 0), (self.shape.y, self.shape.x))]
        return [p[0] for p in pts], [p[1] for p in pts]

    @cached_property
    def _crs_obj(self):
        from pyproj import CRS

        return CRS.from_user_input(self.crs)

    def xs(self) -> np.ndarray:
        """Pixel-centre x coordinates (axis-aligned grids)."""
        t = self.transform
        return t.c + t.a * (np.arange(self.shape.x) + 0.5)

    def ys(self) -> np.ndarray:
        """Pixel-centre y coordinates (axis-aligned grids)."""
        t = self.transform
        return t.f + t.e * (np.arange(self.shape.y) + 0.5)

    def window(self, win: Window) -> "GeoBox":
        """The sub-grid of a window (which may extend past this grid, e.g. a halo)."""
        t = self.transform @ Affine.translation(win.col_start, win.row_start)
        return GeoBox(win.shape, t, self.crs)

    # -- boxes -> pixels: the one rule (plans, region masks, queries) ------------------------------------------
    def bbox_pieces(self, bbox: BBox | str, bbox_crs: Any = "EPSG:4326", *, what: str = "the grid",
                    contiguous: bool = False) -> list[BoxPiece]:
        """The pixels of this grid that ``bbox`` (a ``BBox`` or "W,S,E,N" in ``bbox_crs``) touches, west to east.

        A lon/lat box (``bbox_crs`` geographic) with W > E crosses the antimeridian and is split there; each
        piece is clipped to where this grid's CRS is defined (latitudes within the Mercator square; the grid's
        lon/lat extent for a grid that does not go round the globe), transformed (51 points per edge) and turned
        into the pixels it touches; box edges within 1e-6 pixel of a pixel edge count as on it.

        On a grid whose CRS wraps (geographic or Mercator) the box is one x interval (its eastern piece one period
        east of its western one), moved by whole periods so that it starts within one period east of the grid's
        west edge: each longitude is taken once, even on a grid that spans a little more than the globe (one
        column past ±180°). The part of the interval past the grid's east edge continues at the grid's west end
        (the first column not already taken): a second piece, one period further east (``x_shift``; the
        first piece's shift puts it back where the box starts, 0 for a grid from -180° to 180°). ``contiguous=True``
        refuses (``BBoxError``) two pieces that do not join across the antimeridian (a grid that falls short of
        the globe). Raises ``BBoxError`` naming ``what`` and its extent when the box misses the grid.
        """
        box = bbox if isinstance(bbox, BBox) else BBox.parse(bbox)
        crs = norm_crs(bbox_crs)
        period = wrap_period(self.crs)
        parts = [self._box_in_my_crs(part, crs) for part in (split_antimeridian(box) if is_geographic(crs) else [box])]
        parts = [p for p in parts if p is not None]
        if period is None or not parts:
            found = [w for w in map(self.pixel_window, parts) if w is not None]
            found = [Window(min(w.row_start for w in found), max(w.row_stop for w in found),
                            min(w.col_start for w in found), max(w.col_stop for w in found))] if found else []
            pieces = [BoxPiece(w) for w in found]
        else:
            lo, hi = parts[0].left, parts[-1].right + (period if len(parts) > 1 else 0.0)
            pieces = self._wrapped_pieces(lo, min(hi, lo + period), min(p.bottom for p in parts),
                                          max(p.top for p in parts), period)
        if not pieces:
            raise BBoxError(f"bbox W={box.left}, S={box.bottom}, E={box.right}, N={box.top} does not intersect {what}, "
                            f"whose extent is {self._extent_text()}; pick a box inside it")
        if len(pieces) == 2 and contiguous:
            t = self.transform
            a, b = pieces[0].window, pieces[1].window
            gap = (t.c + t.a * b.col_start + period) - (t.c + t.a * a.col_stop)
            if abs(gap) > abs(t.a) * 0.5:
                raise BBoxError(f"bbox {tuple(box)} crosses the antimeridian, but {what} does not wrap around it "
                                f"continuously (its extent is {self._extent_text()}); split the box at 180°")
        return pieces

    def _wrapped_pieces(self, lo: float, hi: float, bottom: float, top: float, period: float) -> list[BoxPiece]:
        """``bbox_pieces`` of the x interval [lo, hi] (this grid's CRS, at most one period) on a wrapping grid;
        the pieces' x shifts put them back where the interval lies."""
        g = self.bounds
        k = math.floor((lo - g.left) / period)
        lo, hi = lo - k * period, hi - k * period  # now g.left <= lo < g.left + period
        first = self.pixel_window(BBox(lo, bottom, min(hi, g.right), top)) if lo < g.right else None
        rest = self.pixel_window(BBox(max(lo, g.right) - period, bottom, hi - period, top)) if hi > g.right else None
        pieces = [BoxPiece(first, k * period)] if first is not None else []
        if rest is not None and (first is None or rest.col_start < first.col_start):  # else a whole period: once
            stop = rest.col_stop if first is None else min(rest.col_stop, first.col_start)
            pieces.append(BoxPiece(Window(rest.row_start, rest.row_stop, rest.col_start, stop), (k + 1) * period))
        return pieces

    def window_of_bbox(self, bbox: BBox | str, bbox_crs: Any = "EPSG:4326", *, what: str = "the mosaic") -> Window:
        """The pixel window covering ``bbox`` (in ``bbox_crs``), clipped to this grid (``bbox_pieces``' rule).

        Raises ``BBoxError`` when the box misses the grid, or crosses the antimeridian onto both ends of a grid
        that wraps around it (no one window covers that: use ``bbox_pieces`` or ``TileGrid.tiles_touching``).
        """
        box = bbox if isinstance(bbox, BBox) else BBox.parse(bbox)
        pieces = self.bbox_pieces(box, bbox_crs, what=what)
        if len(pieces) > 1:
            raise BBoxError(f"bbox {tuple(box)} crosses the antimeridian onto both ends of {what}: no one window "
                            "covers it; use GeoBox.bbox_pieces or TileGrid.tiles_touching")
        return pieces[0].window

    def pixel_window(self, box: BBox, eps: float = 1e-6) -> Window | None:
        """The pixels that ``box`` (in this grid's CRS) touches, clipped to the grid; None when it misses.
        Box edges within ``eps`` pixel of a pixel edge count as on it (float noise does not widen a box)."""
        inv = ~self.transform
        cols, rows = zip(*(inv @ (x, y) for x in (box.left, box.right) for y in (box.bottom, box.top)))
        win = Window(math.floor(min(rows) + eps), math.ceil(max(rows) - eps),
                     math.floor(min(cols) + eps), math.ceil(max(cols) - eps))
        return win.intersect(Window(0, self.shape.y, 0, self.shape.x))

    def _box_in_my_crs(self, box: BBox, crs: str) -> BBox | None:
        """A box in ``crs`` (not crossing the antimeridian) in this grid's CRS; None when it misses the area the
        grid's CRS can show (a lon/lat box is clipped to it first)."""
        if crs == self.crs:
            return box
        if is_geographic(crs):
            if wrap_period(self.crs) is not None:
                lim = max_latitude(self.crs)
                s, n = max(box.bottom, -lim), min(box.top, lim)
                if s >= n:
                    return None
                box = BBox(box.left, s, box.right, n)
            else:
                gb = self._lonlat_bounds
                if gb.left < gb.right:
                    l, r = max(box.left, gb.left), min(box.right, gb.right)
                    s, n = max(box.bottom, gb.bottom), min(box.top, gb.top)
                    if l >= r or s >= n:
                        return None
                    box = BBox(l, s, r, n)
        vals = transform_bounds(box, crs, self.crs)
        return None if vals is None else BBox(*vals)

    @cached_property
    def _lonlat_bounds(self) -> BBox:
        try:
            return self.geographic_bounds()
        except Exception:  # noqa: BLE001 - a CRS without a lon/lat area of use: the world
            return BBox(-180.0, -90.0, 180.0, 90.0)

    def _extent_text(self) -> str:
        b = self._lonlat_bounds
        return f"W={b.left:.4f}, S={b.bottom:.4f}, E={b.right:.4f}, N={b.top:.4f} (lon/lat)"

    def geographic_bounds(self) -> BBox:
        """The grid's extent in lon/lat (EPSG:4326)."""
        from pyproj import Transformer

        b = self.bounds
        if self.crs == "EPSG:4326":
            return b
        tr = Transformer.from_crs(self.crs, "EPSG:4326", always_xy=True)
        return BBox(*tr.transform_bounds(*b, densify_pts=21))

    # -- serialisation ----------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"shape": {"y": self.shape.y, "x": self.shape.x}, "transform": list(self.transform)[:6], "crs": self.crs}

    @classmethod
    def from_json(cls, d: dict) -> "GeoBox":
        return cls(Shape(d["shape"]["y"], d["shape"]["x"]), Affine(*d["transform"]), d["crs"])

    def __dask_tokenize__(self):
        return ("GeoBox", self.shape, tuple(self.transform)[:6], self.crs)

    def same_grid(self, other: "GeoBox", rtol: float = 1e-9) -> bool:
        return (
            self.shape == other.shape
            and self.crs == other.crs
            and np.allclose(list(self.transform)[:6], list(other.transform)[:6], rtol=rtol, atol=1e-9)
        )


class TileIndex(NamedTuple):
    """A tile's position in a ``TileGrid``: ``iy``-th tile row, ``ix``-th tile column."""

    iy: int
    ix: int


@dataclass(frozen=True)
class TileGrid:
    """A ``GeoBox`` cut into square tiles of ``tile`` pixels (edge tiles are smaller; none is dropped)."""

    geobox: GeoBox
    tile: int

    def __post_init__(self):
        if int(self.tile) != self.tile or self.tile <= 0:
            raise InvalidParameter(f"tile size {self.tile!r} must be a positive whole number of pixels")

    @property
    def shape(self) -> Shape:
        """Number of tiles: ``y`` tile rows by ``x`` tile columns."""
        return Shape(-(-self.geobox.shape.y // self.tile), -(-self.geobox.shape.x // self.tile))

    @property
    def count(self) -> int:
        return self.shape.y * self.shape.x

    def _check(self, idx: TileIndex) -> None:
        if not (0 <= idx[0] < self.shape.y and 0 <= idx[1] < self.shape.x):
            raise InvalidParameter(f"tile {tuple(idx)} is outside a tile grid of shape {tuple(self.shape)}")

    def window(self, idx: TileIndex) -> Window:
        """The pixels tile ``idx`` writes (clamped at the grid's bottom/right edges)."""
        self._check(idx)
        iy, ix = idx
        t = self.tile
        return Window(iy * t, min((iy + 1) * t, self.geobox.shape.y), ix * t, min((ix + 1) * t, self.geobox.shape.x))

    def read_window(self, idx: TileIndex, halo: int) -> Window:
        """The halo'd window tile ``idx`` reads, clamped to the grid (``map_overlap(boundary="none")``)."""
        return self.window(idx).pad(halo).clamp(self.geobox.shape)

    def geobox_of(self, idx: TileIndex) -> GeoBox:
        return self.geobox.window(self.window(idx))

    def tiles_in(self, win: Window) -> tuple[slice, slice]:
        """Tile-row and tile-column slices of the tiles that touch pixel window ``win``."""
        t = self.tile
        return (slice(win.row_start // t, -(-win.row_stop // t)), slice(win.col_start // t, -(-win.col_stop // t)))

    def tiles_touching(self, bbox: BBox | str, crs: Any = "EPSG:4326", *, what: str = "the grid") -> np.ndarray:
        """Boolean ``(tile rows, tile cols)`` array: True for the tiles that touch ``bbox`` (a ``BBox`` or
        "W,S,E,N" in ``crs``; W > E in lon/lat crosses the antimeridian). The one bbox -> tiles rule: the
        pixels are ``GeoBox.bbox_pieces``'; ``BBoxError`` when the box misses the grid."""
        sel = np.zeros(tuple(self.shape), bool)
        for piece in self.geobox.bbox_pieces(bbox, crs, what=what):
            sel[self.tiles_in(piece.window)] = True
        return sel

    def to_json(self) -> dict:
        return {"geobox": self.geobox.to_json(), "tile": self.tile}

    @classmethod
    def from_json(cls, d: dict) -> "TileGrid":
        return cls(GeoBox.from_json(d["geobox"]), int(d["tile"]))


def tile_of_lonlat(grid: TileGrid, lon: float, lat: float) -> TileIndex | None:
    """The tile of ``grid`` holding the point (lon, lat), or None when it lies outside the grid."""
    g = grid.geobox
    x, y = lon, lat
    if g.crs != "EPSG:4326":
        from pyproj import Transformer

        x, y = Transformer.from_crs("EPSG:4326", g.crs, always_xy=True).transform(lon, lat)
    col, row = ~g.transform @ (x, y)
    if not (math.isfinite(col) and math.isfinite(row)):
        return None
    r, c = math.floor(row), math.floor(col)
    if not (0 <= r < g.shape.y and 0 <= c < g.shape.x):
        return None
    return TileIndex(r // grid.tile, c // grid.tile)
