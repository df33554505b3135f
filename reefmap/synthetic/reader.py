"""The synthetic world as a mosaic source: ``SyntheticReader`` (a grid over the world) and the lazy arrays
``synthetic_mosaic`` / ``synthetic_truth`` built over it.

Pixel (row, col) of the grid is world pixel (row, col); nothing is rendered until a window is read.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np
from affine import Affine

from reefmap.classes import DEMO_SCHEME, NODATA
from reefmap.errors import InvalidParameter
from reefmap.geometry.grid import GeoBox, Shape, Window
from reefmap.sources.base import ReaderBase, block_window, reader_to_dataarray, spec_key
from reefmap.synthetic.render import render
from reefmap.synthetic.world import SyntheticWorld, resolve_world


class SyntheticReader(ReaderBase):
    """The synthetic world on a grid: pixel (row, col) of ``geobox`` is world pixel (row, col)."""

    band_names = ("red", "green", "blue")
    dtype = np.dtype("uint8")
    nodata = 0

    def __init__(self, geobox: GeoBox, world: SyntheticWorld | None = None):
        if not isinstance(geobox, GeoBox):
            raise InvalidParameter(
                f"geobox {geobox!r} must be a reefmap.geometry.grid.GeoBox; build one with synthetic_geobox()")
        if world is not None and not isinstance(world, SyntheticWorld):
            raise InvalidParameter(f"world {world!r} must be a SyntheticWorld (or None for the defaults)")
        self.geobox = geobox
        self.world = world if world is not None else SyntheticWorld()

    @classmethod
    def from_spec(cls, spec: dict) -> "SyntheticReader":
        try:
            return cls(GeoBox.from_json(spec["geobox"]), SyntheticWorld.from_json(spec["world"]))
        except (KeyError, TypeError) as e:
            raise InvalidParameter(
                f"synthetic source spec {spec!r} is malformed ({e!r}); build it with SyntheticReader(...).spec()"
            ) from None

    def spec(self) -> dict:
        return {"kind": "synthetic", "geobox": self.geobox.to_json(), "world": self.world.to_json()}

    def _read_inside(self, window: Window) -> np.ndarray:
        return render(self.world, window)[0]

    def _inside(self, window: Window) -> Window | None:
        return window.intersect(Window(0, self.geobox.shape.y, 0, self.geobox.shape.x))

    def truth(self, window: Window) -> np.ndarray:
        """Class codes ``(y, x)`` uint8 of ``window``; pixels outside the grid are 0 (nodata)."""
        out = np.zeros(window.shape, np.uint8)
        inside = self._inside(window)
        if inside is not None:
            out[inside.relative_to(window).slices] = render(self.world, inside, want_rgb=False)[1]
        return out

    def read_with_truth(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """``(read(window), truth(window))`` from one rendering pass."""
        rgb = np.zeros((3, *window.shape), np.uint8)
        truth = np.zeros(window.shape, np.uint8)
        inside = self._inside(window)
        if inside is not None:
            rel = inside.relative_to(window).slices
            rgb[(slice(None), *rel)], truth[rel] = render(self.world, inside)
        return rgb, truth


#: top-left corner of the default grid: the north-west corner of the real Bahamas scene (lon, lat)
DEFAULT_ORIGIN_LONLAT = (-78.96, 25.55)


def _shape(size_or_shape: Any) -> Shape:
    if isinstance(size_or_shape, (int, np.integer)) and not isinstance(size_or_shape, bool):
        size_or_shape = (size_or_shape, size_or_shape)
    try:
        y, x = size_or_shape
        ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in (y, x))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InvalidParameter(
            f"size_or_shape {size_or_shape!r} must be a positive whole number of pixels or a (rows, cols) pair, "
            "e.g. 2048 or (1024, 4096)"
        )
    return Shape(int(y), int(x))


@lru_cache(maxsize=16)
def _default_origin(crs: str) -> tuple[float, float]:
    from pyproj import Transformer

    return Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(*DEFAULT_ORIGIN_LONLAT)


def synthetic_geobox(size_or_shape: int | tuple[int, int] = 2048, resolution: float = 300.0,
                     crs: Any = "EPSG:32618", origin: tuple[float, float] | None = None) -> GeoBox:
    """A north-up grid of ``size_or_shape`` pixels (an int is a square) with its top-left corner at ``origin``
    (x, y in CRS units; default: the north-west corner of the real Bahamas scene, -78.96°, 25.55°)."""
    shape = _shape(size_or_shape)
    if isinstance(resolution, bool) or not isinstance(resolution, (int, float, np.integer, np.floating)) or not (
        math.isfinite(resolution) and resolution > 0
    ):
        raise InvalidParameter(f"resolution {resolution!r} must be a positive number of CRS units, e.g. 300.0")
    if origin is None:
        origin = _default_origin(crs if isinstance(crs, str) else GeoBox(Shape(1, 1), Affine.identity(), crs).crs)
    try:
        x0, y0 = (float(v) for v in origin)
    except (TypeError, ValueError):
        raise InvalidParameter(f"origin {origin!r} must be an (x, y) pair in CRS units") from None
    if not (math.isfinite(x0) and math.isfinite(y0)):
        raise InvalidParameter(f"origin {origin!r} must be finite; pass an (x, y) pair in the CRS {crs}")
    return GeoBox(shape, Affine(float(resolution), 0.0, x0, 0.0, -float(resolution), y0), crs)


def _reader(size_or_shape, seed, world, resolution, crs, geobox) -> SyntheticReader:
    if geobox is None:
        geobox = synthetic_geobox(size_or_shape, resolution, crs)
    return SyntheticReader(geobox, resolve_world(seed, world))


def synthetic_mosaic(size_or_shape: int | tuple[int, int] = 2048, seed: int = 0, *, world: SyntheticWorld | None = None,
                     resolution: float = 300.0, crs: Any = "EPSG:32618", chunks: int | dict = 1024,
                     geobox: GeoBox | None = None):
    """The lazy RGB ``DataArray(band, y, x)`` uint8 of a synthetic world (nodata 0), with CRS and transform.

    ``geobox`` (any grid, global ones included) replaces ``size_or_shape``/``resolution``/``crs``; nothing is
    rendered until a chunk is computed.
    """
    return reader_to_dataarray(_reader(size_or_shape, seed, world, resolution, crs, geobox), chunks)


def _truth_block(reader: SyntheticReader, cy: int, cx: int, block_id=None):
    return reader.truth(block_window(reader.geobox, cy, cx, *block_id))


def synthetic_truth(size_or_shape: int | tuple[int, int] = 2048, seed: int = 0, *, world: SyntheticWorld | None = None,
                    resolution: float = 300.0, crs: Any = "EPSG:32618", chunks: int | dict = 1024,
                    geobox: GeoBox | None = None):
    """The lazy class raster ``DataArray(y, x)`` uint8 (codes of ``reefmap.classes.DEMO_SCHEME``) matching
    ``synthetic_mosaic`` called with the same arguments: same grid, coordinates, CRS and chunks."""
    import dask.array as da
    import xarray as xr

    reader = _reader(size_or_shape, seed, world, resolution, crs, geobox)
    mosaic = reader_to_dataarray(reader, chunks)
    name = "reefmap-truth-" + mosaic.data.name.removeprefix("reefmap-read-")
    chunks = mosaic.data.chunks[1:]
    arr = da.map_blocks(_truth_block, reader, chunks[0][0], chunks[1][0], dtype=np.uint8, chunks=chunks, name=name,
                        meta=np.empty((0, 0), np.uint8))
    out = xr.DataArray(arr, dims=("y", "x"), coords=mosaic.drop_vars("band").coords, name="truth")
    out.attrs = {"_FillValue": NODATA, "flag_values": list(DEMO_SCHEME.codes),
                 "flag_meanings": " ".join(DEMO_SCHEME.flag_words),
                 "long_name": f"truth of the synthetic world seed {reader.world.seed}",
                 "reefmap_source": spec_key(reader.spec())}
    return out.rio.write_crs(reader.geobox.crs).rio.write_transform(reader.geobox.transform)
