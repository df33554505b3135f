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


def _crs_string(crs: Any) -> str:
    """Canonical text for a CRS: ``EPSG:n`` when it has an EPSG code, else WKT."""
    from pyproj import CRS

    c = CRS.from_user_input(crs)
    epsg = c.to_epsg()
    return f"EPSG:{epsg}" if epsg is not None else c.to_wkt()


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
        object.__setattr__(self, "crs", _crs_string(self.crs))

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

    def window_of_bbox(self, bbox: BBox, bbox_crs: Any = "EPSG:4326") -> Window:
        """Pixel window covering ``bbox`` (given in ``bbox_crs``), clipped to this grid.

        Raises ``BBoxError`` when the box does not intersect the grid.
        """
        from pyproj import Transformer

        if self.crs != _crs_string(bbox_crs):
            tr = Transformer.from_crs(bbox_crs, self.crs, always_xy=True)
            l, b, r, t = tr.transform_bounds(*bbox, densify_pts=21)
        else:
            l, b, r, t = bbox
        if not all(map(math.isfinite, (l, b, r, t))):
            raise BBoxError(f"bbox {tuple(bbox)} cannot be transformed into the mosaic's CRS {self.crs}")
        inv = ~self.transform
        cols, rows = [], []
        for x, y in ((l, b), (l, t), (r, b), (r, t)):
            c, rr = inv @ (x, y)
            cols.append(c)
            rows.append(rr)
        win = Window(math.floor(min(rows)), math.ceil(max(rows)), math.floor(min(cols)), math.ceil(max(cols)))
        inside = win.intersect(Window(0, self.shape.y, 0, self.shape.x))
        if inside is None:
            mb = self.geographic_bounds()
            raise BBoxError(
                f"bbox {tuple(bbox)} does not intersect the mosaic, whose extent is "
                f"W={mb.left:.4f}, S={mb.bottom:.4f}, E={mb.right:.4f}, N={mb.top:.4f} (lon/lat); "
                "pick a box inside it"
            )
        return inside

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

    def to_json(self) -> dict:
        return {"geobox": self.geobox.to_json(), "tile": self.tile}

    @classmethod
    def from_json(cls, d: dict) -> "TileGrid":
        return cls(GeoBox.from_json(d["geobox"]), int(d["tile"]))
