"""Mosaic sources: ``open_mosaic`` turns a Zarr store, GeoTIFF files, STAC items or an in-memory array into one
lazily chunked ``DataArray(band, y, x)`` with its CRS, transform and nodata.

Every source is a ``Reader`` (see ``base``) described by a JSON spec, so workers rebuild it once per process.
The reader modules (which import rasterio, zarr, stackstac) are imported only when needed.
"""

from __future__ import annotations

import os
from typing import Any

from reefmap.errors import InvalidParameter, SourceNotFound
from reefmap.sources import urls
from reefmap.sources.base import (
    Reader,
    ReaderBase,
    cache_reader,
    clear_reader_cache,
    open_reader,
    clear_chunk_cache,
    read_stats,
    reader_of,
    reader_to_dataarray,
    register_reader,
    reset_read_stats,
)
from reefmap.sources.memory import MemoryReader, is_dataarray, memory_reader

__all__ = [
    "open_mosaic",
    "open_source",
    "memory_reader",
    "Reader",
    "ReaderBase",
    "MemoryReader",
    "ZarrReader",
    "GeoTIFFMosaicReader",
    "StacReader",
    "open_reader",
    "reader_of",
    "reader_to_dataarray",
    "register_reader",
    "clear_reader_cache",
    "clear_chunk_cache",
    "read_stats",
    "reset_read_stats",
]

_LAZY = {
    "ZarrReader": "reefmap.sources.zarr_source",
    "GeoTIFFMosaicReader": "reefmap.sources.geotiff",
    "StacReader": "reefmap.sources.stac",
}

SUPPORTED = (
    "a Zarr store (path or URL ending in .zarr, or a directory/prefix holding zarr.json), "
    "GeoTIFF/COG files (a path or URL ending in .tif/.tiff, or a list of them), "
    "STAC items (pystac.Item, ItemCollection, or item dicts), "
    "an in-memory reader (reefmap.sources.memory_reader(array, geobox)), or a Reader"
)

_TIFF = (".tif", ".tiff")


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'reefmap.sources' has no attribute {name!r}")


def open_mosaic(source: Any, *, chunks: int | dict = 1024, crs: Any = None, resolution: Any = None,
                variable: str | None = None, storage_options: dict | None = None):
    """Open a mosaic as one lazy ``xarray.DataArray(band, y, x)`` (nothing but metadata is read here).

    ``source`` may be:

    - a **Zarr store**: a local path, ``file://`` or fsspec URL (``gs://``, ``memory://`` ...) ending in ``.zarr``
      or holding ``zarr.json``; ``variable=`` picks the ``(band, y, x)`` variable when there are several;
    - **GeoTIFF/COG** files: one path/URL ending in ``.tif``/``.tiff``, or a list of them forming a mosaic
      (where they overlap, the first file listed with a valid pixel wins); ``crs=`` (and ``resolution=``)
      reproject them onto one grid (needed when their CRSs differ);
    - **STAC items**: ``pystac.Item``\\ s, an ``ItemCollection`` or item dicts (one single-band asset per band);
      ``crs=`` (an EPSG code) and ``resolution=`` are passed to stackstac;
    - a ``Reader`` (e.g. ``memory_reader(array, geobox)``), used as is.

    ``chunks`` is the dask chunk size in pixels (an int, or ``{"y": .., "x": ..}``); ``storage_options`` are the
    fsspec options of remote stores/files (e.g. ``{"token": "anon"}``). The result carries the CRS and
    transform (``.rio``), ``_FillValue``/``nodata`` and the reader's spec (``attrs["reefmap_source"]``).
    """
    reader = open_source(source, crs=crs, resolution=resolution, variable=variable,
                         storage_options=storage_options, chunks=chunks)
    return reader_to_dataarray(reader, chunks)


def open_source(source: Any, *, crs: Any = None, resolution: Any = None, variable: str | None = None,
                storage_options: dict | None = None, chunks: Any = 1024) -> Reader:
    """The ``Reader`` ``open_mosaic`` would wrap (same arguments); cached per process by its spec."""
    kind = source_kind(source, storage_options)
    if variable is not None and kind != "zarr":
        raise InvalidParameter(f"variable={variable!r} applies to Zarr stores only; this source is {kind}")
    if storage_options and kind in ("stac", "memory", "reader"):
        raise InvalidParameter(
            f"storage_options apply to Zarr stores and GeoTIFF files only; this source is {kind} "
            "(for STAC assets on cloud storage, configure GDAL through environment variables)"
        )
    if kind == "reader":
        reader = source
        _check_no_reprojection(reader, crs, resolution, "a Reader")
        return reader
    if kind == "memory":
        reader = memory_reader(source)
        _check_no_reprojection(reader, crs, resolution, "an in-memory array")
        return reader
    if kind == "zarr":
        from reefmap.sources.zarr_source import ZarrReader

        reader = ZarrReader(source, variable=variable, storage_options=storage_options)
        _check_no_reprojection(reader, crs, resolution, f"Zarr store {reader.url}")
    elif kind == "geotiff":
        from reefmap.sources.geotiff import GeoTIFFMosaicReader

        paths = [source] if isinstance(source, (str, os.PathLike)) else list(source)
        reader = GeoTIFFMosaicReader(paths, crs=crs, resolution=resolution, storage_options=storage_options)
    else:  # stac
        from reefmap.sources.stac import StacReader

        epsg = None
        if crs is not None:
            from pyproj import CRS

            epsg = CRS.from_user_input(crs).to_epsg()
            if epsg is None:
                raise InvalidParameter(f"crs {crs!r} has no EPSG code; stackstac needs one (e.g. crs='EPSG:32618')")
        cs = chunks.get("y", 1024) if isinstance(chunks, dict) else (chunks or 1024)
        reader = StacReader(source, epsg=epsg, resolution=resolution, chunksize=int(cs))
    return cache_reader(reader)  # the newest wins: it has just read the current metadata


def source_kind(source: Any, storage_options: dict | None = None) -> str:
    """``"reader"``, ``"memory"``, ``"zarr"``, ``"geotiff"`` or ``"stac"`` for ``source`` (else ``InvalidParameter``)."""
    if isinstance(source, Reader):
        return "reader"
    if is_dataarray(source):
        return "memory"
    from reefmap.sources.stac import is_stac_like  # light: pystac only

    if is_stac_like(source):
        return "stac"
    if isinstance(source, (str, os.PathLike)):
        return _location_kind(source, storage_options)
    if isinstance(source, (list, tuple)):
        if not source:
            raise InvalidParameter(f"open_mosaic got an empty {type(source).__name__}; supported sources: {SUPPORTED}")
        if all(is_stac_like(s) for s in source):
            return "stac"
        if all(isinstance(s, (str, os.PathLike)) and urls.suffix(s) in _TIFF for s in source):
            return "geotiff"
        bad = [s for s in source if not (isinstance(s, (str, os.PathLike)) and urls.suffix(s) in _TIFF)]
        raise InvalidParameter(
            f"open_mosaic got a list it cannot use: {bad[0]!r} is neither a .tif/.tiff path nor a STAC item; "
            f"a list must be all GeoTIFF paths or all STAC items. Supported sources: {SUPPORTED}"
        )
    raise InvalidParameter(f"open_mosaic cannot open {type(source).__name__} {source!r}; supported sources: {SUPPORTED}")


def _location_kind(source, storage_options) -> str:
    s = urls.as_str(source)
    suf = urls.suffix(s)
    if suf == ".zarr":
        return "zarr"
    if suf in _TIFF:
        return "geotiff"
    if urls.exists(urls.join(s, "zarr.json"), storage_options) or urls.exists(urls.join(s, ".zgroup"), storage_options):
        return "zarr"
    if suf == "" and not urls.exists(s, storage_options):
        raise SourceNotFound(f"{s} does not exist (and is not a .zarr/.tif path); supported sources: {SUPPORTED}")
    raise InvalidParameter(f"open_mosaic cannot tell what {s!r} is; supported sources: {SUPPORTED}")


def _check_no_reprojection(reader, crs, resolution, what: str) -> None:
    g = reader.geobox
    if crs is not None:
        from reefmap.geometry.crs import norm_crs

        if norm_crs(crs) != g.crs:
            raise InvalidParameter(
                f"{what} is in {g.crs if g.crs.startswith('EPSG:') else 'its own CRS'}, not crs={crs!r}; reprojection "
                "is supported for GeoTIFF and STAC sources only: leave crs= out, or reproject the data first"
            )
    if resolution is not None:
        res = (resolution, resolution) if not isinstance(resolution, (list, tuple)) else tuple(resolution)
        mine = (abs(g.resolution_x), abs(g.resolution_y))
        if any(abs(float(a) - b) > 1e-9 * max(1.0, b) for a, b in zip(res, mine)):
            raise InvalidParameter(
                f"{what} has resolution {mine}, not resolution={resolution!r}; resampling is supported for GeoTIFF "
                "and STAC sources only: leave resolution= out"
            )
