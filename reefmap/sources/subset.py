"""A part of a mosaic: some of its bands, in a chosen order, over a window of its grid.

``run()`` maps exactly what it is given: a ``DataArray`` from ``open_mosaic`` narrowed with ``.sel``/``.isel``
(``subset_of_dataarray``) and the bands the model asks for (``reefmap.sources.bands.select_bands``) become one
``SubsetReader``. Its JSON spec holds the source's spec, the band positions and the window, so a worker reads only
those bands of only that window. The subset is a mosaic of its own: pixels outside its window (a tile's halo at the
subset's edge) are nodata, as at any mosaic's edge, so mapping a subset gives the map of that subset written to a
file of its own.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from reefmap.errors import InvalidParameter
from reefmap.geometry.grid import Window
from reefmap.sources.base import LAZY_COORDS_ABOVE, Reader, ReaderBase, open_reader


class SubsetReader(ReaderBase):
    """Bands ``bands`` (0-based positions in ``source``, in this order) of ``source`` over ``window`` of its grid."""

    kind = "subset"

    def __init__(self, source: Reader, bands: Sequence[int] | None = None, window: Window | None = None):
        full = Window(0, source.geobox.shape.y, 0, source.geobox.shape.x)
        bands = tuple(range(len(source.band_names))) if bands is None else tuple(int(b) for b in bands)
        window = full if window is None else window
        if not bands or not all(0 <= b < len(source.band_names) for b in bands):
            raise InvalidParameter(f"band positions {list(bands)} must be 0..{len(source.band_names) - 1} "
                                   f"(the source has bands {list(source.band_names)})")
        if window.intersect(full) != window or window.shape.y < 1 or window.shape.x < 1:
            raise InvalidParameter(f"window {window.to_json()} (rows, cols) is not a non-empty part of the source's "
                                   f"grid of {source.geobox.shape.y} x {source.geobox.shape.x} pixels")
        if isinstance(source, SubsetReader):  # a subset of a subset: one level, in the first source's terms
            bands = tuple(source.bands[b] for b in bands)
            r, c = source.window.row_start, source.window.col_start
            window = Window(window.row_start + r, window.row_stop + r, window.col_start + c, window.col_stop + c)
            source = source.source
        self.source = source
        self.bands = bands
        self.window = window
        self.geobox = source.geobox.window(window)
        self.band_names = tuple(source.band_names[b] for b in bands)
        self.dtype = source.dtype
        self.nodata = source.nodata

    def spec(self) -> dict:
        return {"kind": self.kind, "source": self.source.spec(), "bands": list(self.bands),
                "window": self.window.to_json()}

    @classmethod
    def from_spec(cls, spec: dict) -> "SubsetReader":
        return cls(open_reader(spec["source"]), spec["bands"], Window.from_json(spec["window"]))

    def _read_bands_inside(self, window: Window, bands: tuple[int, ...] | None) -> np.ndarray:
        picked = self.bands if bands is None else tuple(self.bands[b] for b in bands)
        r, c = self.window.row_start, self.window.col_start
        there = Window(window.row_start + r, window.row_stop + r, window.col_start + c, window.col_stop + c)
        if isinstance(self.source, ReaderBase):
            return self.source.read(there, picked)
        return self.source.read(there)[list(picked)]  # a reader from outside reefmap: read(window) only

    def _read_inside(self, window: Window) -> np.ndarray:
        return self._read_bands_inside(window, None)


def subset_of_dataarray(mosaic, reader: Reader) -> Reader:
    """The part of ``reader`` that ``mosaic`` (the DataArray ``open_mosaic`` made of it, perhaps narrowed with
    ``.sel``/``.isel`` on ``band``, ``y`` and ``x``) shows: ``reader`` itself when nothing was narrowed. Refused: a
    selection that is not a contiguous window (strided, reordered or repeated pixels), other dimensions, or values
    changed (another dtype): the runner reads the source again, so it can only map what the source holds."""
    what = "this DataArray"
    if np.dtype(mosaic.dtype) != np.dtype(reader.dtype):
        raise InvalidParameter(
            f"{what} holds {mosaic.dtype} values but its source holds {np.dtype(reader.dtype)}: the runner re-reads the "
            "source, so changed values would be ignored; write the changed array to a Zarr store "
            "(da.to_dataset(name='image').to_zarr(path)) and map that, or map the source and give the model a scaling")
    extra = [d for d in mosaic.dims if d not in ("band", "y", "x")]
    if extra or [d for d in mosaic.dims if d != "band"] != ["y", "x"]:
        raise InvalidParameter(f"{what} has dims {tuple(mosaic.dims)}; the runner maps (band, y, x) arrays: select one "
                               "value of any other dimension and keep y before x")
    if "band" in mosaic.coords:
        names = [str(v) for v in np.atleast_1d(np.asarray(mosaic.coords["band"].values)).tolist()]
    else:
        names = list(reader.band_names)
    missing = [n for n in names if n not in reader.band_names]
    if missing:
        raise InvalidParameter(f"{what} has bands {missing} that its source does not have (it has "
                               f"{list(reader.band_names)}); select bands with .sel(band=[...]) of the source's")
    bands = [reader.band_names.index(n) for n in names]
    g = reader.geobox
    rows = _axis_window(mosaic, "y", g.shape.y, g.transform.f, g.transform.e, g.is_axis_aligned)
    cols = _axis_window(mosaic, "x", g.shape.x, g.transform.c, g.transform.a, g.is_axis_aligned)
    window = Window(rows[0], rows[1], cols[0], cols[1])
    if bands == list(range(len(reader.band_names))) and window == Window(0, g.shape.y, 0, g.shape.x):
        return reader
    return SubsetReader(reader, bands, window)


def _axis_window(mosaic, dim: str, n: int, origin: float, step: float, aligned: bool) -> tuple[int, int]:
    """The pixel range ``[start, stop)`` of the source's axis ``dim`` that ``mosaic``'s coordinates cover."""
    size = int(mosaic.sizes[dim])
    if size == 0:
        raise InvalidParameter(f"this DataArray selects no pixels along {dim}: nothing to map; check the .sel/.isel range "
                               "(a y slice runs from north to south: .sel(y=slice(north, south)))")
    if not aligned or dim not in mosaic.coords:
        if size == n:
            return 0, n
        raise InvalidParameter(f"this DataArray has {size} of its source's {n} pixels along {dim} but no {dim} "
                               "coordinates to tell which; select from the DataArray open_mosaic returned")
    first = float(mosaic.coords[dim][0].item())
    start = (first - origin) / step - 0.5
    ok = math.isclose(start, round(start), abs_tol=1e-6) and 0 <= round(start) and round(start) + size <= n
    if ok and size > 1:  # every step (a lazy range of a huge axis is regular by construction: its two ends)
        values = mosaic.coords[dim] if size <= LAZY_COORDS_ABOVE else mosaic.coords[dim][[0, size - 1]]
        steps = np.diff(np.asarray(values, dtype=float)) / (1 if size <= LAZY_COORDS_ABOVE else size - 1)
        ok = bool(np.allclose(steps, step, rtol=1e-9, atol=0))
    if not ok:
        raise InvalidParameter(
            f"this DataArray's {dim} coordinates are not a contiguous run of its source's pixels (a strided, reversed "
            f"or reordered selection, or changed coordinates); select with .isel({dim}=slice(a, b)) or "
            f".sel({dim}=slice(...)), or write it to a Zarr store and map that")
    return int(round(start)), int(round(start)) + size
