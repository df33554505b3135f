"""A mosaic of one or many GeoTIFF / Cloud-Optimized GeoTIFF files, read window by window with rasterio.

Files may be local paths, ``file://`` URLs or any fsspec URL (``gs://``, ``memory://`` ...; remote files are
served to GDAL through rasterio's Python ``opener``, so only the byte ranges a window needs are fetched).
"""

from __future__ import annotations

import atexit
import math
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from affine import Affine

from reefmap.errors import CorruptSource, CRSMismatch, InvalidParameter, SourceError, SourceNotFound
from reefmap.geometry.crs import norm_crs
from reefmap.geometry.grid import GeoBox, Shape, Window
from reefmap.sources import urls
from reefmap.sources.base import ReaderBase
from reefmap.sources.memory import coerce_nodata

#: how far (in pixels) a file's origin may sit from the common pixel grid and still count as aligned
ALIGN_TOL_PX = 1e-3
#: relative tolerance when comparing two files' resolutions
RES_RTOL = 1e-6
#: GDAL's warp approximation error (pixels). Its default (0.125) makes a warped window's pixels depend on the
#: window (chunking); this small value makes every window read the pixels the whole-grid warp gives. (0 is
#: rejected by rasterio's WarpedVRT.)
WARP_TOLERANCE_PX = 1e-6
#: the mosaic-grid blocks (pixels) that windows are read in and cached by (the source-chunk cache, ``ReaderBase``):
#: neighbouring tiles' halo'd windows then read each block once
CACHE_BLOCK_PX = 1024


@dataclass(frozen=True)
class FileInfo:
    """What the header of one file says, plus where the file sits in the mosaic grid."""

    path: str
    crs: str
    transform: Affine
    shape: Shape
    indexes: tuple[int, ...]  # 1-based data bands (alpha excluded)
    alpha: int | None  # 1-based index of an alpha band
    nodata: float | int | None
    dtype: str
    descriptions: tuple[str | None, ...]  # per band of the file, 1..count (the alpha band too)
    window: Window | None = None  # the file's footprint in mosaic pixels (clipped to the grid)
    warp: bool = False  # read through a WarpedVRT onto the mosaic grid

    @property
    def bounds(self):
        t, (h, w) = self.transform, self.shape
        xs = [(t @ (c, r))[0] for r, c in ((0, 0), (0, w), (h, 0), (h, w))]
        ys = [(t @ (c, r))[1] for r, c in ((0, 0), (0, w), (h, 0), (h, w))]
        return min(xs), min(ys), max(xs), max(ys)

    def to_json(self) -> dict:
        return {
            "path": self.path, "crs": self.crs, "transform": list(self.transform)[:6],
            "shape": [self.shape.y, self.shape.x], "indexes": list(self.indexes), "alpha": self.alpha,
            "nodata": self.nodata, "dtype": self.dtype, "descriptions": list(self.descriptions),
            "window": None if self.window is None else self.window.to_json(), "warp": self.warp,
        }

    @classmethod
    def from_json(cls, d: dict) -> "FileInfo":
        return cls(
            path=d["path"], crs=d["crs"], transform=Affine(*d["transform"]), shape=Shape(*d["shape"]),
            indexes=tuple(d["indexes"]), alpha=d["alpha"], nodata=d["nodata"], dtype=d["dtype"],
            descriptions=tuple(d["descriptions"]),
            window=None if d.get("window") is None else Window.from_json(d["window"]), warp=bool(d.get("warp")),
        )


class GeoTIFFMosaicReader(ReaderBase):
    """One or many GeoTIFFs as one mosaic on a common pixel grid.

    Grid: without ``crs``/``resolution``, the union of the files' bounds on the *first* file's pixel grid
    (its resolution and pixel alignment). All files must then share the CRS (else ``CRSMismatch``), the
    resolution and the alignment (else ``SourceError``). With ``crs=`` (and optionally ``resolution=``, in
    CRS units; default: the first file's resolution when it is in that CRS, else GDAL's suggested one), files
    not already on the target grid are reprojected with a rasterio ``WarpedVRT`` (nearest neighbour).

    Precedence: where files overlap, **the first file listed that has a valid pixel wins** — later files only
    fill pixels that every earlier file leaves as nodata. A pixel of a file is valid when its alpha band is
    non-zero (files with an alpha band), else when not every band equals the file's nodata value, else always
    (files with neither).

    Bands: every file must have the same number of bands, not counting an alpha band: an alpha band is
    dropped and pixels with alpha 0 become nodata. Nodata: the first file's nodata value that is set; else
    0 when a file has an alpha band, files are warped, or several files may leave gaps; else ``None``.

    Making the reader reads file headers only. Pixels are read per window, each file opened lazily on its
    first read and then reused, one open dataset per file per thread (rasterio datasets are not
    thread-safe). A window that cannot be decoded (a truncated or corrupt file) raises ``CorruptSource``
    naming the file and the window.
    """

    kind = "geotiff"
    cache_block = (CACHE_BLOCK_PX, CACHE_BLOCK_PX)

    def __init__(self, paths: Sequence[Any] | Any, crs: Any = None, resolution: Any = None,
                 storage_options: dict | None = None, alpha_as_data: bool = False):
        if isinstance(paths, (str, bytes)) or not isinstance(paths, Sequence):
            paths = [paths]
        if not paths:
            raise InvalidParameter("open_mosaic got an empty list of GeoTIFF files; give at least one path")
        self.paths = tuple(urls.normalize(p) for p in paths)
        self.storage_options = dict(storage_options or {})
        self.target_crs = None if crs is None else _canon_crs(crs, "crs")
        self.resolution = _parse_resolution(resolution)
        self.alpha_is_data = bool(alpha_as_data)
        infos = _scan_headers(self.paths, self.storage_options)
        self._setup(*_plan(infos, self.target_crs, self.resolution))

    # -- construction ------------------------------------------------------------------------------------
    def _setup(self, geobox: GeoBox, files: list[FileInfo]):
        self.geobox = geobox
        self.files = tuple(files)
        f0 = files[0]
        #: the 0-based position of the first file's alpha-flagged band, when it is read as data (else None)
        self.alpha_band = self._indexes(f0).index(f0.alpha) if self.alpha_is_data and f0.alpha else None
        counts = {len(self._indexes(f)) for f in files}
        if len(counts) > 1:
            listing = "; ".join(f"{f.path}: {len(self._indexes(f))}" for f in files)
            raise SourceError(
                f"GeoTIFF files have different numbers of bands (alpha not counted): {listing}; "
                "mosaic only files with the same bands"
            )
        self.dtype = np.result_type(*[np.dtype(f.dtype) for f in files])
        nd = next((f.nodata for f in files if f.nodata is not None), None)
        if nd is None and (any(self._alpha(f) for f in files) or any(f.warp for f in files) or len(files) > 1):
            nd = 0
        self.nodata = coerce_nodata(nd, self.dtype) if nd is not None else None
        desc = [f0.descriptions[i - 1] for i in self._indexes(f0)]  # descriptions, else colour interpretations (red, ...)
        if all(d for d in desc) and len(set(desc)) == len(desc):
            self.band_names = tuple(str(d) for d in desc)
        elif self.alpha_band is not None:  # the bands that have a name keep it: the alpha-flagged one is "4" or so
            self.band_names = tuple(str(d) if d and desc.count(d) == 1 else str(i + 1) for i, d in enumerate(desc))
        else:
            self.band_names = tuple(str(i + 1) for i in range(len(desc)))
        self._local = threading.local()

    @classmethod
    def from_spec(cls, spec: dict) -> "GeoTIFFMosaicReader":
        self = cls.__new__(cls)
        self.paths = tuple(spec["paths"])
        self.storage_options = dict(spec.get("storage_options") or {})
        self.target_crs = spec.get("crs")
        self.resolution = None if spec.get("resolution") is None else tuple(spec["resolution"])
        self.alpha_is_data = bool(spec.get("alpha_as_data"))
        if "files" in spec and "geobox" in spec:
            self._setup(GeoBox.from_json(spec["geobox"]), [FileInfo.from_json(f) for f in spec["files"]])
        else:  # a hand-written spec: read the headers
            infos = _scan_headers(self.paths, self.storage_options)
            self._setup(*_plan(infos, self.target_crs, self.resolution))
        return self

    def spec(self) -> dict:
        return {
            "kind": self.kind,
            "paths": list(self.paths),
            "crs": self.target_crs,
            "resolution": None if self.resolution is None else list(self.resolution),
            "storage_options": self.storage_options,
            "geobox": self.geobox.to_json(),
            "files": [f.to_json() for f in self.files],
            **({"alpha_as_data": True} if self.alpha_is_data else {}),
        }

    def _indexes(self, f: FileInfo) -> tuple[int, ...]:
        """The 1-based bands of file ``f`` read as data: the alpha-flagged one too when ``alpha_as_data``."""
        return tuple(sorted(f.indexes + (f.alpha,))) if self.alpha_is_data and f.alpha else f.indexes

    def _alpha(self, f: FileInfo) -> int | None:
        """The 1-based band of file ``f`` used as its validity mask, if any."""
        return None if self.alpha_is_data else f.alpha

    def with_alpha_as_data(self) -> "GeoTIFFMosaicReader | None":
        """This mosaic with the band its first file flags as alpha (colour interpretation and mask flags) read as a
        data band (its ``alpha_band``) and pixels valid by nodata only; None when no file flags an alpha band."""
        if self.alpha_is_data or not self.files[0].alpha:
            return None
        return GeoTIFFMosaicReader.from_spec({**self.spec(), "alpha_as_data": True})

    # -- reading -----------------------------------------------------------------------------------------
    def _read_inside(self, window: Window) -> np.ndarray:
        return self._read_bands_inside(window, None)

    def _read_bands_inside(self, window: Window, bands: tuple[int, ...] | None) -> np.ndarray:
        """Only the chosen bands are read from each file; a pixel is valid by those bands (or the alpha band)."""
        nb = len(self.band_names) if bands is None else len(bands)
        out = np.full((nb, *window.shape), self.fill_value(), dtype=self.dtype)
        filled = np.zeros(tuple(window.shape), dtype=bool)
        for i, f in enumerate(self.files):
            inter = window.intersect(f.window) if f.window is not None else None
            if inter is None:
                continue
            rel = inter.relative_to(window)
            sub_filled = filled[rel.slices]
            if sub_filled.all():
                continue
            data, valid = self._read_file(i, inter, bands)
            take = valid & ~sub_filled
            sub_out = out[(slice(None), *rel.slices)]
            sub_out[:, take] = data[:, take]
            sub_filled |= take
            if filled.all():
                break
        return out

    def _read_file(self, i: int, inter: Window, bands: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(data (band, y, x), valid (y, x))`` of bands ``bands`` (all: None) of file ``i`` over mosaic window
        ``inter``."""
        from rasterio.windows import Window as RioWindow

        f = self.files[i]
        h = self._handle(i)
        ds = h.datasets[-1]
        if f.warp:
            rw = RioWindow(inter.col_start, inter.row_start, inter.shape.x, inter.shape.y)
        else:
            rel = _file_window(f, self.geobox, inter)
            rw = RioWindow(rel.col_start, rel.row_start, rel.shape.x, rel.shape.y)
        data_bands = self._indexes(f)
        alpha = self._alpha(f) if not f.warp else ds.count if ds.count > len(data_bands) else None
        chosen = list(data_bands) if bands is None else [data_bands[b] for b in bands]
        indexes = chosen + ([alpha] if alpha else [])
        try:
            arr = h.run(ds.read, indexes=indexes, window=rw)
        except Exception as e:  # noqa: BLE001 - GDAL reports decode failures as RasterioIOError/CPLE_*
            self._check_reads(i, h)  # a failed request is not a corrupt file
            cause = e.__cause__ or e
            raise CorruptSource(
                f"cannot read GeoTIFF {f.path} in mosaic window rows {inter.row_start}:{inter.row_stop}, cols "
                f"{inter.col_start}:{inter.col_stop}: {type(cause).__name__}: {cause}. The file is truncated or "
                "corrupt there: re-download or rewrite it"
            ) from e
        self._check_reads(i, h)  # GDAL may go on past a block it could not fetch: never return what it made of it
        data = arr[: len(chosen)]
        if alpha:
            valid = arr[-1] != 0
        elif f.nodata is not None and not (isinstance(f.nodata, float) and math.isnan(f.nodata)):
            valid = np.any(data != np.asarray(f.nodata).astype(data.dtype), axis=0)
        elif f.nodata is not None:
            valid = np.any(~np.isnan(data), axis=0)
        else:
            valid = np.ones(data.shape[1:], dtype=bool)
        if data.dtype != self.dtype:
            data = data.astype(self.dtype)
        return data, valid

    def _handle(self, i: int) -> "_Handle":
        handles = getattr(self._local, "handles", None)
        if handles is None:
            handles = self._local.handles = {}
        h = handles.get(i)
        if h is None:
            h = handles[i] = _Handle()
            try:
                h.datasets = h.run(self._open, i)
            except BaseException:
                del handles[i]
                raise
        return h

    def _check_reads(self, i: int, h: "_Handle") -> None:
        """``Unreachable`` if a request for file ``i`` failed during the last read (a remote file's ``opener``);
        the file is then closed, so that the next read opens it afresh."""
        opener = getattr(h.datasets[0], "opener", None) if h.datasets else None
        if opener is None or opener.error is None:
            return
        self._local.handles.pop(i, None)
        h.close()
        opener.check(self.files[i].path)

    def _open(self, i: int) -> tuple:
        """Open file ``i`` (and its WarpedVRT); returns the datasets, the one to read from last."""
        f = self.files[i]
        src = _open_dataset(f.path, self.storage_options)
        t = src.transform
        if (src.height, src.width) != tuple(f.shape) or not np.allclose(list(t)[:6], list(f.transform)[:6]):
            src.close()
            raise SourceError(
                f"GeoTIFF {f.path} changed since the mosaic was opened (its grid is now {src.height}x{src.width} "
                f"at {tuple(t)[:6]}); reopen the mosaic with reefmap.open_mosaic"
            )
        if not f.warp:
            return (src,)
        from rasterio.enums import Resampling
        from rasterio.vrt import WarpedVRT

        g = self.geobox
        kw: dict = dict(crs=g.crs, transform=g.transform, width=g.shape.x, height=g.shape.y,
                        resampling=Resampling.nearest, tolerance=WARP_TOLERANCE_PX)
        if f.nodata is not None and self._alpha(f) is None:
            kw.update(src_nodata=f.nodata, nodata=f.nodata)
        elif self._alpha(f) is None:
            kw.update(add_alpha=True)
        vrt = WarpedVRT(src, **kw)
        return (src, vrt)

    def close(self) -> None:
        """Close the datasets this thread opened (other threads' close when those threads end)."""
        handles = getattr(self._local, "handles", None) or {}
        for h in handles.values():
            h.close()
        handles.clear()


class _Handle:
    """The open datasets of one file in one thread, pinned to the ``contextvars`` context they were opened in.

    rasterio serves fsspec files to GDAL through a registry held in a ``ContextVar``; dask runs every task in a
    fresh copy of the context, so a dataset opened in one task could not be read in the next one. Opening,
    reading and closing all run inside this handle's own, initially empty, context (one thread uses it, so it
    is never entered twice at once; a *copy* of the caller's context would share the registry's dict object
    with other threads' handles and break them).
    """

    __slots__ = ("ctx", "datasets", "__weakref__")

    def __init__(self):
        import contextvars

        self.ctx = contextvars.Context()  # empty: a copy would share rasterio's registry dict with others
        self.datasets: tuple = ()
        _LIVE_HANDLES.add(self)

    def run(self, fn, *args, **kw):
        return self.ctx.run(fn, *args, **kw)

    def close(self) -> None:
        ds, self.datasets = self.datasets, ()

        def _close():
            for d in reversed(ds):
                try:
                    d.close()
                except Exception:  # noqa: BLE001 - closing is best effort
                    pass

        if ds:
            self.run(_close)

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


_LIVE_HANDLES: "weakref.WeakSet[_Handle]" = weakref.WeakSet()


@atexit.register
def _close_all_handles() -> None:
    """Close every open file before interpreter teardown: a remote (fsspec) file closed later, from a garbage
    collected handle, fails noisily once its filesystem's event loop is gone."""
    for h in list(_LIVE_HANDLES):
        try:
            h.close()
        except Exception:  # noqa: BLE001
            pass


# -- headers and the grid ----------------------------------------------------------------------------------


def _canon_crs(crs: Any, what: str) -> str:
    try:
        return norm_crs(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)
    except Exception as e:  # noqa: BLE001
        raise InvalidParameter(f"{what} {crs!r} is not a CRS pyproj understands (e.g. 'EPSG:32618'): {e}") from e


def _crs_label(crs: str) -> str:
    if crs.startswith("EPSG:"):
        return crs
    from pyproj import CRS

    return f"{CRS.from_user_input(crs).name!r} (no EPSG code)"


def _parse_resolution(resolution) -> tuple[float, float] | None:
    if resolution is None:
        return None
    vals = [resolution, resolution] if np.isscalar(resolution) else list(resolution)
    try:
        rx, ry = (float(v) for v in vals)
    except (TypeError, ValueError):
        raise InvalidParameter(f"resolution {resolution!r} must be a number (or an (x, y) pair) of CRS units") from None
    if not (rx > 0 and ry > 0 and math.isfinite(rx) and math.isfinite(ry)):
        raise InvalidParameter(f"resolution {resolution!r} must be positive and finite")
    return rx, ry


def _open_dataset(path: str, storage_options: dict):
    """``rasterio.open`` for a local path or an fsspec URL; typed errors for missing and unreadable files."""
    import rasterio
    from rasterio.errors import RasterioIOError

    if not urls.exists(path, storage_options):
        raise SourceNotFound(f"GeoTIFF {path} does not exist; check the path or URL (and storage_options for remote files)")
    try:
        if urls.is_local(path):
            return rasterio.open(urls.local_path(path))
        fs, p = urls.url_to_fs(path, storage_options)
        opener = urls.rasterio_opener(fs)
        # no probing of side-car files (.msk, .ovr, .aux.xml): a request each, and GDAL prints the URL of each one
        # that fails (for a presigned URL, with its signature) on stderr
        try:
            with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
                src = rasterio.open(p, opener=opener)
        except RasterioIOError:
            opener.check(path)  # a failed read (HTTP 500 ...) is not a broken file
            raise
        if opener.error is not None:  # GDAL opened what it could fetch: not the file
            src.close()
            opener.check(path)
        src.opener = opener  # later reads check it too (GeoTIFFMosaicReader._check_reads)
        return src
    except RasterioIOError as e:
        raise SourceError(f"{path} is not a readable GeoTIFF (GDAL: {e}); check that it is a complete GeoTIFF/COG file") from e


def _read_header(path: str, storage_options: dict) -> FileInfo:
    import warnings

    from rasterio.enums import ColorInterp
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        src = _open_dataset(path, storage_options)
    with src:
        if src.crs is None or not src.crs.to_wkt():
            raise SourceError(f"GeoTIFF {path} has no CRS; assign one (e.g. gdal_edit.py -a_srs EPSG:32618 {path})")
        if src.transform == Affine.identity() and not src.gcps[0]:
            raise SourceError(f"GeoTIFF {path} has no geotransform; georeference it before mosaicking")
        alpha = None  # a band flagged alpha, unless its description names it otherwise (B08, nir: a data band)
        for i, ci in enumerate(src.colorinterp, start=1):
            if ci == ColorInterp.alpha and (src.descriptions[i - 1] or "alpha").lower() in ("alpha", "mask"):
                alpha = i
        indexes = tuple(i for i in range(1, src.count + 1) if i != alpha)
        dtypes = {src.dtypes[i - 1] for i in indexes}
        if len(dtypes) > 1:
            raise SourceError(f"GeoTIFF {path} mixes band types {sorted(dtypes)}; reefmap needs one pixel type per file")
        dtype = dtypes.pop()
        nodata = src.nodata
        if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
            try:
                nodata = coerce_nodata(nodata, dtype)
            except InvalidParameter:  # a nodata value the pixel type cannot hold: it matches no pixel
                nodata = float(nodata)
        return FileInfo(
            path=path, crs=_canon_crs(src.crs, f"the CRS of {path}"), transform=src.transform,
            shape=Shape(src.height, src.width), indexes=indexes, alpha=alpha, nodata=nodata, dtype=dtype,
            descriptions=tuple(src.descriptions[i - 1] or _COLOUR_NAMES.get(src.colorinterp[i - 1].name)
                               for i in range(1, src.count + 1)),
        )


#: band labels from a GeoTIFF's colour interpretation, for bands without a description
_COLOUR_NAMES = {"red": "red", "green": "green", "blue": "blue", "gray": "gray"}


def _scan_headers(paths: Sequence[str], storage_options: dict) -> list[FileInfo]:
    if len(paths) == 1:
        return [_read_header(paths[0], storage_options)]
    with ThreadPoolExecutor(max_workers=min(8, len(paths))) as ex:
        return list(ex.map(lambda p: _read_header(p, storage_options), paths))


def _plan(infos: list[FileInfo], target_crs: str | None, resolution) -> tuple[GeoBox, list[FileInfo]]:
    crss = {f.crs for f in infos}
    if target_crs is None and len(crss) > 1:
        listing = "; ".join(f"{f.path} is in {_crs_label(f.crs)}" for f in infos)
        raise CRSMismatch(
            f"cannot mosaic GeoTIFF files in different CRSs without a target CRS: {listing}. "
            f"Pass crs= (e.g. crs={_crs_label(infos[0].crs)!r}) to reproject them all onto one grid"
        )
    if target_crs is None and resolution is None:
        return _plan_native(infos)
    return _plan_warped(infos, target_crs or infos[0].crs, resolution)


def _offsets(f: FileInfo, t0: Affine) -> tuple[float, float]:
    """The file's origin in pixels of the grid ``t0`` (column, row), unrounded."""
    return (f.transform.c - t0.c) / t0.a, (f.transform.f - t0.f) / t0.e


def _same_res(t: Affine, rx: float, ry: float) -> bool:
    return math.isclose(abs(t.a), rx, rel_tol=RES_RTOL) and math.isclose(abs(t.e), ry, rel_tol=RES_RTOL)


def _is_aligned(f: FileInfo, t0: Affine) -> bool:
    if not (f.transform.b == 0 and f.transform.d == 0) or not _same_res(f.transform, abs(t0.a), abs(t0.e)):
        return False
    if (f.transform.a > 0) != (t0.a > 0) or (f.transform.e > 0) != (t0.e > 0):
        return False
    cx, ry = _offsets(f, t0)
    return abs(cx - round(cx)) <= ALIGN_TOL_PX and abs(ry - round(ry)) <= ALIGN_TOL_PX


def _plan_native(infos: list[FileInfo]) -> tuple[GeoBox, list[FileInfo]]:
    f0 = infos[0]
    t0 = f0.transform
    if not (t0.b == 0 and t0.d == 0):
        raise SourceError(
            f"GeoTIFF {f0.path} has a rotated geotransform; pass crs= (and resolution=) to warp the mosaic onto a north-up grid"
        )
    for f in infos[1:]:
        if not _same_res(f.transform, abs(t0.a), abs(t0.e)) or not (f.transform.b == 0 and f.transform.d == 0):
            raise SourceError(
                f"GeoTIFF {f.path} has pixel size {(f.transform.a, f.transform.e)} but the first file {f0.path} has "
                f"{(t0.a, t0.e)}; pass resolution= (and crs=) to resample them onto one grid"
            )
        if not _is_aligned(f, t0):
            cx, ry = _offsets(f, t0)
            raise SourceError(
                f"GeoTIFF {f.path} is not aligned to the pixel grid of the first file {f0.path} (its origin falls at "
                f"column {cx:.4f}, row {ry:.4f} of that grid); pass resolution= (and crs=) to resample onto one grid"
            )
    offs = [tuple(int(round(v)) for v in _offsets(f, t0)) for f in infos]
    c_min = min(c for c, _ in offs)
    r_min = min(r for _, r in offs)
    c_max = max(c + f.shape.x for (c, _), f in zip(offs, infos))
    r_max = max(r + f.shape.y for (_, r), f in zip(offs, infos))
    transform = t0 @ Affine.translation(c_min, r_min) if (c_min or r_min) else t0
    geobox = GeoBox(Shape(r_max - r_min, c_max - c_min), transform, f0.crs)
    files = [
        _replace(f, window=Window(r - r_min, r - r_min + f.shape.y, c - c_min, c - c_min + f.shape.x), warp=False)
        for (c, r), f in zip(offs, infos)
    ]
    return geobox, files


def _plan_warped(infos: list[FileInfo], target: str, resolution) -> tuple[GeoBox, list[FileInfo]]:
    from rasterio.warp import calculate_default_transform, transform_bounds

    f0 = infos[0]
    same0 = f0.crs == target and f0.transform.b == 0 and f0.transform.d == 0
    if resolution is None:
        if same0:
            resolution = (abs(f0.transform.a), abs(f0.transform.e))
        else:
            l, b, r, t = f0.bounds
            tr, _, _ = calculate_default_transform(f0.crs, target, f0.shape.x, f0.shape.y, left=l, bottom=b, right=r, top=t)
            resolution = (abs(tr.a), abs(tr.e))
    rx, ry = resolution
    ax, ay = (f0.transform.c, f0.transform.f) if same0 else (0.0, 0.0)
    boxes = []
    for f in infos:
        try:
            bb = f.bounds if f.crs == target else transform_bounds(f.crs, target, *f.bounds, densify_pts=21)
        except Exception as e:  # noqa: BLE001
            raise SourceError(f"the bounds of GeoTIFF {f.path} cannot be transformed to {_crs_label(target)}: {e}") from e
        if not all(map(math.isfinite, bb)):
            raise SourceError(
                f"the bounds of GeoTIFF {f.path} ({_crs_label(f.crs)}) do not transform to finite coordinates in "
                f"{_crs_label(target)}; pick a target crs= that covers the file"
            )
        boxes.append(bb)
    eps = 1e-6
    left = ax + math.floor((min(b[0] for b in boxes) - ax) / rx + eps) * rx
    right = ax + math.ceil((max(b[2] for b in boxes) - ax) / rx - eps) * rx
    bottom = ay + math.floor((min(b[1] for b in boxes) - ay) / ry + eps) * ry
    top = ay + math.ceil((max(b[3] for b in boxes) - ay) / ry - eps) * ry
    shape = Shape(max(1, int(round((top - bottom) / ry))), max(1, int(round((right - left) / rx))))
    transform = Affine(rx, 0.0, left, 0.0, -ry, top)
    geobox = GeoBox(shape, transform, target)
    full = Window(0, shape.y, 0, shape.x)
    files = []
    for f, bb in zip(infos, boxes):
        direct = f.crs == target and _is_aligned(f, transform)
        if direct:
            c, r = (int(round(v)) for v in _offsets(f, transform))
            win = Window(r, r + f.shape.y, c, c + f.shape.x).intersect(full)
        else:
            inv = ~transform
            c0, r0 = inv @ (bb[0], bb[3])
            c1, r1 = inv @ (bb[2], bb[1])
            win = Window(
                math.floor(min(r0, r1) + eps), math.ceil(max(r0, r1) - eps),
                math.floor(min(c0, c1) + eps), math.ceil(max(c0, c1) - eps),
            ).intersect(full)
        files.append(_replace(f, window=win, warp=not direct))
    return geobox, files


def _replace(f: FileInfo, **kw) -> FileInfo:
    from dataclasses import replace

    return replace(f, **kw)


def _file_window(f: FileInfo, geobox: GeoBox, inter: Window) -> Window:
    """Mosaic window ``inter`` in the pixel coordinates of (directly read) file ``f``."""
    c, r = (int(round(v)) for v in _offsets(f, geobox.transform))
    return Window(inter.row_start - r, inter.row_stop - r, inter.col_start - c, inter.col_stop - c)
