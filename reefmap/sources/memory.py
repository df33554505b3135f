"""An in-memory mosaic: a numpy (or xarray/dask) array already in this process.

The reader's spec holds only an id into a process-local registry, so it works with the threaded scheduler
and in-process clusters (``LocalCluster(processes=False)``). A worker in another process cannot see the
array: rebuilding the reader there raises a ``SourceError`` saying to write the array to a Zarr store.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import numpy as np

from reefmap.errors import InvalidParameter, SourceError
from reefmap.geometry.grid import GeoBox, Shape, Window
from reefmap.sources.base import ReaderBase

_REGISTRY: dict[str, "MemoryReader"] = {}
_REG_LOCK = threading.Lock()


class MemoryReader(ReaderBase):
    """Reads windows of an array ``(band, y, x)`` held in this process (see ``memory_reader``)."""

    kind = "memory"

    def __init__(self, array, geobox: GeoBox, nodata=None, band_names=None, *, id: str | None = None):
        self._array = array
        self.geobox = geobox
        self.dtype = np.dtype(array.dtype)
        self.nodata = coerce_nodata(nodata, self.dtype)
        nb = int(array.shape[0])
        self.band_names = tuple(str(b) for b in band_names) if band_names is not None else tuple(str(i + 1) for i in range(nb))
        if len(self.band_names) != nb:
            raise InvalidParameter(f"band_names {list(self.band_names)} has {len(self.band_names)} names for {nb} bands")
        self.id = id or uuid.uuid4().hex

    def _read_inside(self, window: Window) -> np.ndarray:
        block = self._array[(slice(None), *window.slices)]
        if hasattr(block, "dask"):  # a dask-backed array: compute the window here, in the calling task
            import dask

            with dask.config.set(scheduler="sync"):
                block = block.compute()
        return np.asarray(block, dtype=self.dtype)

    def spec(self) -> dict:
        return {"kind": self.kind, "id": self.id}

    @classmethod
    def from_spec(cls, spec: dict) -> "MemoryReader":
        with _REG_LOCK:
            r = _REGISTRY.get(spec.get("id"))
        if r is None:
            raise SourceError(
                f"in-memory mosaic {spec.get('id')!r} is not registered in this process: an array passed with "
                "memory_reader lives only in the process that made it, so it works with the threaded scheduler or "
                "an in-process cluster (LocalCluster(processes=False)) only; for worker processes, write the array "
                "to a Zarr store (DataArray.to_zarr) and open that with reefmap.open_mosaic"
            )
        return r

    def release(self) -> None:
        """Drop this array from the process registry (later rebuilds of its spec fail)."""
        with _REG_LOCK:
            _REGISTRY.pop(self.id, None)


def memory_reader(array, geobox: GeoBox | None = None, nodata: Any = "auto", band_names=None) -> MemoryReader:
    """A reader over ``array`` (``(band, y, x)``; a 2-D array is one band) on ``geobox``.

    ``array`` may be a numpy array, a dask array or an ``xarray.DataArray``. For a DataArray with a CRS
    (rioxarray) ``geobox`` may be left out: it is taken from ``da.rio.crs`` and ``da.rio.transform()``;
    ``nodata`` defaults to ``da.rio.nodata`` (else ``None``), band names to the ``band`` coordinate.
    The array is kept in a process-local registry until ``reader.release()``.
    """
    arr = array
    if is_dataarray(arr):
        da = arr
        if da.ndim == 2:
            da = da.expand_dims("band")
        if da.ndim != 3:
            raise InvalidParameter(f"memory_reader needs a (band, y, x) array; got dims {da.dims}")
        if geobox is None:
            geobox = _geobox_of_dataarray(da)
        if isinstance(nodata, str) and nodata == "auto":
            nodata = _dataarray_nodata(da)
        if band_names is None and "band" in da.coords:
            band_names = [str(v) for v in np.asarray(da.coords["band"].values).ravel()]
        arr = da.data
    else:
        if isinstance(nodata, str) and nodata == "auto":
            nodata = None
        if not hasattr(arr, "shape") or not hasattr(arr, "dtype"):
            arr = np.asarray(arr)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise InvalidParameter(f"memory_reader needs a (band, y, x) array; got shape {tuple(arr.shape)}")
    if geobox is None:
        raise InvalidParameter(
            "memory_reader needs a geobox for a plain array: pass geobox=GeoBox(Shape(ny, nx), transform, crs), "
            "or pass an xarray.DataArray with a CRS (da.rio.write_crs(...))"
        )
    if not isinstance(geobox, GeoBox):
        raise InvalidParameter(f"geobox must be a reefmap.geometry.grid.GeoBox, got {type(geobox).__name__}")
    if tuple(arr.shape[1:]) != tuple(geobox.shape):
        raise InvalidParameter(
            f"array of shape {tuple(arr.shape)} does not match the geobox's grid {tuple(geobox.shape)} (y, x)"
        )
    r = MemoryReader(arr, geobox, nodata, band_names)
    with _REG_LOCK:
        _REGISTRY[r.id] = r
    return r


def coerce_nodata(value, dtype):
    """A nodata value as a plain Python number of the array's kind (``0.0`` → ``0`` for uint8), or ``None``.

    A value the dtype cannot hold (NaN or out of range for an integer dtype) raises ``InvalidParameter``.
    """
    if value is None:
        return None
    dtype = np.dtype(dtype)
    v = np.asarray(value).item()
    if dtype.kind in "iub":
        if not (isinstance(v, (int, float)) and float(v).is_integer()):
            raise InvalidParameter(f"nodata {value!r} cannot be stored in {dtype} pixels; give a whole number")
        v = int(v)
        info = np.iinfo(dtype) if dtype.kind != "b" else None
        if info is not None and not (info.min <= v <= info.max):
            raise InvalidParameter(f"nodata {value!r} is out of range for {dtype} pixels ({info.min}..{info.max})")
        return v
    if dtype.kind == "f":
        return float(v)
    return v


def is_dataarray(obj) -> bool:
    """Whether ``obj`` is an ``xarray.DataArray``."""
    import xarray as xr

    return isinstance(obj, xr.DataArray)


def _geobox_of_dataarray(da) -> GeoBox:
    import rioxarray  # noqa: F401

    crs = da.rio.crs
    if crs is None:
        raise InvalidParameter(
            "this DataArray has no CRS; set one with da.rio.write_crs('EPSG:...') or pass geobox= to memory_reader"
        )
    return GeoBox(Shape(da.rio.height, da.rio.width), da.rio.transform(), crs.to_wkt())


def _dataarray_nodata(da):
    import rioxarray  # noqa: F401

    nd = da.rio.nodata
    if nd is None:
        nd = da.attrs.get("nodata", da.attrs.get("_FillValue"))
    return None if nd is None else np.asarray(nd).item()
