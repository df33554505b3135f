"""A mosaic stored in Zarr (v3 or v2), as written by ``xarray``/``rioxarray`` ``to_zarr``.

The store is a group holding one data variable with dimensions ``(band, y, x)`` and a CF grid-mapping
variable (``spatial_ref``, written by ``da.rio.write_crs``) that carries the CRS (``crs_wkt`` or
``spatial_ref`` attribute) and, usually, the affine transform (``GeoTransform``). Pixels are read raw — no CF
decoding, so a uint8 mosaic stays uint8 (never float with NaN); ``scale_factor`` / ``add_offset`` attributes are
ignored.

A local store laid out simply (``reefmap.zarrchunks.raw_chunks``: Zarr 3, bytes [+ zstd], no sharding) is read
chunk file by chunk file and decoded in the calling thread, for windows made of whole chunks (the source-chunk
cache's blocks): zarr-python 3 runs every synchronous read on its one event-loop thread, so the threads of one
process would otherwise wait for each other. Any other store or window is read through zarr.
"""

from __future__ import annotations

import base64
import math
import os
import threading
from typing import Any

import numpy as np
from affine import Affine

from reefmap.errors import CorruptSource, SourceError, SourceNotFound
from reefmap.geometry.grid import GeoBox, Shape, Window
from reefmap.sources import urls
from reefmap.sources.base import ReaderBase
from reefmap.sources.memory import coerce_nodata
from reefmap.zarrchunks import chunk_key, raw_chunks

DIMS = ("band", "y", "x")


class ZarrReader(ReaderBase):
    """Reads windows of the ``(band, y, x)`` variable of a Zarr store (local path, ``file://`` or fsspec URL).

    The store's metadata (and the first/last x and y coordinates) are read when the reader is made; the array
    is opened once per reader and a window is just ``array[:, r0:r1, c0:c1]``, read chunk by chunk through the
    source-chunk cache (``ReaderBase``). ``raw`` (a ``RawChunks``; None: always through zarr, as for a remote or
    not simply laid-out store — setting it to None forces the zarr path) reads windows of whole chunks from the
    chunk files directly, in the calling thread; ``raw_chunk_reads`` counts the chunk files it decoded.

    CRS: from the variable's ``grid_mapping`` variable (default ``spatial_ref``): its ``crs_wkt`` or
    ``spatial_ref`` attribute. Transform: that variable's ``GeoTransform`` attribute when it agrees with the
    x/y coordinates, else derived from the (pixel-centre) x/y coordinates. Nodata: the variable's
    ``_FillValue`` attribute, else a ``nodata`` attribute, else the Zarr array's fill value.
    """

    kind = "zarr"

    def __init__(self, url: Any, variable: str | None = None, storage_options: dict | None = None):
        self.url = urls.normalize(url)
        self.storage_options = dict(storage_options or {})
        group = _open_group(self.url, self.storage_options)
        self.variable = _pick_variable(group, variable, self.url)
        arr = group[self.variable]
        self._array = arr
        self.cache_block = (int(arr.chunks[1]), int(arr.chunks[2]))  # a window decodes whole chunks: cache them
        attrs = dict(arr.attrs)
        nb, ny, nx = (int(n) for n in arr.shape)
        self.dtype = np.dtype(arr.dtype)
        crs = _crs_of(group, attrs, self.url, self.variable)
        transform = _transform_of(group, attrs, Shape(ny, nx), self.url, self.variable)
        self.geobox = GeoBox(Shape(ny, nx), transform, crs)
        self.nodata = _nodata_of(arr, attrs, self.dtype, self.url)
        self.band_names = _band_names(group, nb)
        self.raw = raw_chunks(arr, compressed=None) if urls.is_local(self.url) else None
        self.raw_chunk_reads = 0
        self._count_lock = threading.Lock()
        self._array_dir = os.path.join(urls.local_path(self.url), *arr.path.split("/")) if self.raw is not None else None

    def _read_inside(self, window: Window) -> np.ndarray:
        return self._read_bands_inside(window, None)

    def _read_bands_inside(self, window: Window, bands: tuple[int, ...] | None) -> np.ndarray:
        """Only the chosen bands' chunks are read."""
        r0, r1, c0, c1 = window.to_json()
        try:
            if self.raw is not None and self._whole_chunks(window):
                block = self._read_chunk_files(window, bands)
            elif bands is None:
                block = self._array[:, r0:r1, c0:c1]
            else:
                block = self._array.oindex[list(bands), r0:r1, c0:c1]
        except FileNotFoundError as e:
            raise SourceNotFound(f"Zarr store {self.url} disappeared while reading window {window.to_json()}: {e}") from e
        except Exception as e:  # noqa: BLE001 - any codec/IO failure of a chunk
            raise CorruptSource(
                f"cannot decode variable {self.variable!r} of Zarr store {self.url} in window "
                f"rows {r0}:{r1}, cols {c0}:{c1} ({type(e).__name__}: {e}); a chunk there is truncated or corrupt: "
                "rewrite that part of the store"
            ) from e
        return np.asarray(block, dtype=self.dtype)

    def _whole_chunks(self, window: Window) -> bool:
        """Whether the in-grid ``window`` is made of whole chunks (edge chunks end at the grid's edge)."""
        _, cy, cx = self.raw.shape
        ny, nx = self.geobox.shape
        return (window.row_start % cy == 0 and window.col_start % cx == 0
                and (window.row_stop % cy == 0 or window.row_stop == ny)
                and (window.col_stop % cx == 0 or window.col_stop == nx))

    def _read_chunk_files(self, window: Window, bands: tuple[int, ...] | None) -> np.ndarray:
        """The chosen bands of a window of whole chunks, each chunk file that holds them read and decoded here
        (a missing chunk reads as the fill value; stored edge chunks are padded to the full chunk: cropped)."""
        cb, cy, cx = self.raw.shape
        picked = list(range(len(self.band_names))) if bands is None else list(bands)
        by_chunk: dict[int, tuple[list[int], list[int]]] = {}  # band chunk → (positions in the block, in the chunk)
        for k, b in enumerate(picked):
            at, within = by_chunk.setdefault(b // cb, ([], []))
            at.append(k)
            within.append(b % cb)
        out = np.empty((len(picked), *window.shape), self.dtype)
        r0, r1, c0, c1 = window.to_json()
        for iy in range(r0 // cy, -(-r1 // cy)):
            h = min(r1, (iy + 1) * cy) - iy * cy
            for ix in range(c0 // cx, -(-c1 // cx)):
                w = min(c1, (ix + 1) * cx) - ix * cx
                rows, cols = slice(iy * cy - r0, iy * cy - r0 + h), slice(ix * cx - c0, ix * cx - c0 + w)
                for ib, (at, within) in by_chunk.items():
                    chunk = self._chunk_file((ib, iy, ix))
                    if chunk is None:
                        out[_as_index(at), rows, cols] = self.raw.fill
                    else:
                        out[_as_index(at), rows, cols] = chunk[_as_index(within), :h, :w]
        return out

    def _chunk_file(self, coords: tuple[int, int, int]) -> np.ndarray | None:
        """Chunk ``coords`` decoded (its full stored shape), or None when the store has no such chunk."""
        path = os.path.join(urls.local_path(self.url), *chunk_key(self._array, coords).split("/"))
        try:
            with open(path, "rb") as f:
                b = f.read()
        except FileNotFoundError:
            if not os.path.exists(os.path.join(self._array_dir, "zarr.json")):
                raise  # the store itself is gone, not just this chunk
            return None
        chunk = self.raw.decode(b)
        with self._count_lock:
            self.raw_chunk_reads += 1
        return chunk

    def spec(self) -> dict:
        return {"kind": self.kind, "url": self.url, "variable": self.variable,
                "storage_options": self.storage_options, "geobox": self.geobox.to_json()}

    @classmethod
    def from_spec(cls, spec: dict) -> "ZarrReader":
        r = cls(spec["url"], variable=spec.get("variable"), storage_options=spec.get("storage_options"))
        if "geobox" in spec and not r.geobox.same_grid(GeoBox.from_json(spec["geobox"])):
            raise SourceError(
                f"Zarr store {r.url} changed since the mosaic was opened (its grid is now {r.geobox.to_json()}, "
                f"was {spec['geobox']}); reopen it with reefmap.open_mosaic"
            )
        return r


# -- helpers -------------------------------------------------------------------------------------------


def _as_index(positions: list[int]):
    """A list of consecutive positions as a slice (a view, not a fancy-index copy); any other list as is."""
    if positions == list(range(positions[0], positions[0] + len(positions))):
        return slice(positions[0], positions[0] + len(positions))
    return positions


def _open_group(url: str, storage_options: dict):
    import zarr
    from zarr.errors import ContainsArrayError, NodeNotFoundError

    if not urls.exists(url, storage_options):
        raise SourceNotFound(f"Zarr store {url} does not exist; check the path or URL (and storage_options for remote stores)")
    # consolidated metadata is ignored: it can be stale after a store is appended to
    if urls.is_local(url):
        kw: dict = dict(store=urls.local_path(url))
    else:
        kw = dict(store=url, storage_options=storage_options)
    try:
        return zarr.open_group(mode="r", use_consolidated=False, **kw)
    except ContainsArrayError as e:
        raise SourceError(
            f"{url} is a single Zarr array, not a group; open the group that holds it (written by "
            "xarray's to_zarr, with its x/y coordinates and spatial_ref) and pick it with variable="
        ) from e
    except (NodeNotFoundError, FileNotFoundError) as e:
        raise SourceError(
            f"{url} exists but is not a Zarr store (no zarr.json or .zgroup); "
            "write one with xarray: da.to_dataset(name='image').to_zarr(url)"
        ) from e
    except Exception as e:  # noqa: BLE001
        raise SourceError(f"cannot open Zarr store {url}: {type(e).__name__}: {e}") from e


def _dims(arr) -> tuple | None:
    names = getattr(arr.metadata, "dimension_names", None)
    if names is None:
        names = arr.attrs.get("_ARRAY_DIMENSIONS")
    return tuple(names) if names is not None else None


def _pick_variable(group, variable: str | None, url: str) -> str:
    arrays = dict(group.arrays())
    dims = {name: _dims(a) for name, a in arrays.items()}
    candidates = sorted(n for n, d in dims.items() if d == DIMS)
    if variable is not None:
        if variable not in arrays:
            raise SourceError(
                f"Zarr store {url} has no variable {variable!r}; (band, y, x) variables there: {candidates or 'none'}"
            )
        if dims[variable] != DIMS:
            raise SourceError(
                f"variable {variable!r} of Zarr store {url} has dims {dims[variable]}, not (band, y, x); "
                f"(band, y, x) variables there: {candidates or 'none'}"
            )
        return variable
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        listing = ", ".join(f"{n}{d}" for n, d in sorted(dims.items(), key=lambda kv: kv[0])) or "no arrays"
        raise SourceError(
            f"Zarr store {url} has no variable with dims (band, y, x) (it has: {listing}); write the mosaic as a "
            "DataArray with dims (band, y, x), e.g. da.transpose('band', 'y', 'x').to_dataset(name='image').to_zarr(url)"
        )
    raise SourceError(
        f"Zarr store {url} has several (band, y, x) variables: {candidates}; pick one with variable="
    )


def _crs_of(group, attrs: dict, url: str, variable: str) -> str:
    gm_name = attrs.get("grid_mapping", "spatial_ref")
    sources = []
    if isinstance(gm_name, str) and gm_name in group:
        sources.append(dict(group[gm_name].attrs))
    sources.append(attrs)
    for a in sources:
        for key in ("crs_wkt", "spatial_ref", "crs"):
            v = a.get(key)
            if isinstance(v, str) and v.strip():
                try:
                    GeoBox(Shape(1, 1), Affine.identity(), v)
                except Exception as e:  # noqa: BLE001
                    raise SourceError(f"Zarr store {url}: the CRS {v[:80]!r} of variable {variable!r} cannot be parsed: {e}") from e
                return v
    raise SourceError(
        f"Zarr store {url}: variable {variable!r} has no CRS (no grid-mapping variable {gm_name!r} with crs_wkt or "
        "spatial_ref); write one with rioxarray before saving: da.rio.write_crs('EPSG:32618').rio.write_transform(...)"
    )


def _coord_ends(group, name: str):
    if name not in group:
        return None
    a = group[name]
    if len(a.shape) != 1 or a.shape[0] == 0:
        return None
    first = float(a[0:1][0])
    last = float(a[a.shape[0] - 1 : a.shape[0]][0])
    return first, last, int(a.shape[0])


def _transform_of(group, attrs: dict, shape: Shape, url: str, variable: str) -> Affine:
    gm_name = attrs.get("grid_mapping", "spatial_ref")
    gt = None
    if isinstance(gm_name, str) and gm_name in group:
        text = group[gm_name].attrs.get("GeoTransform")
        if text is not None:
            try:
                vals = [float(v) for v in (text.split() if isinstance(text, str) else text)]
                c, a, b, f, d, e = vals[:6]
                gt = Affine(a, b, c, d, e, f)
            except (TypeError, ValueError):
                gt = None
    xs, ys = _coord_ends(group, "x"), _coord_ends(group, "y")
    if gt is not None:
        if xs is None or ys is None or _agrees(gt, xs, ys, shape):
            return gt
    if xs is None or ys is None or xs[2] != shape.x or ys[2] != shape.y or shape.x < 2 or shape.y < 2:
        raise SourceError(
            f"Zarr store {url}: cannot tell the transform of variable {variable!r} (no usable GeoTransform on the grid "
            "mapping and no x/y coordinates of two or more pixels); write it with rioxarray: "
            "da.rio.write_transform(transform) (or keep the x/y coordinates) before to_zarr"
        )
    rx = (xs[1] - xs[0]) / (shape.x - 1)
    ry = (ys[1] - ys[0]) / (shape.y - 1)
    return Affine(rx, 0.0, xs[0] - rx / 2, 0.0, ry, ys[0] - ry / 2)


def _agrees(gt: Affine, xs, ys, shape: Shape) -> bool:
    """Whether a GeoTransform matches the pixel-centre x/y coordinates (it goes stale after slicing)."""
    if not (gt.b == 0 and gt.d == 0):
        return True  # rotated grids carry no 1-D coordinates worth checking
    if xs[2] != shape.x or ys[2] != shape.y:
        return False
    x0, y0 = gt @ (0.5, 0.5)
    x1, y1 = gt @ (shape.x - 0.5, shape.y - 0.5)
    tol_x, tol_y = abs(gt.a) * 1e-3, abs(gt.e) * 1e-3
    return (
        math.isclose(xs[0], x0, abs_tol=tol_x) and math.isclose(xs[1], x1, abs_tol=tol_x)
        and math.isclose(ys[0], y0, abs_tol=tol_y) and math.isclose(ys[1], y1, abs_tol=tol_y)
    )


def _decode_fill(v, dtype: np.dtype):
    if isinstance(v, str):
        low = v.lower()
        if low in ("nan", "+nan", "-nan"):
            return float("nan")
        if low in ("infinity", "+infinity", "inf"):
            return float("inf")
        if low in ("-infinity", "-inf"):
            return float("-inf")
        try:
            raw = base64.standard_b64decode(v)
            if len(raw) == dtype.itemsize:
                return np.frombuffer(raw, dtype=dtype.newbyteorder("<"))[0].item()
            if len(raw) == 8:
                return np.frombuffer(raw, dtype="<f8")[0].item()
        except (ValueError, TypeError):
            pass
        try:
            return float(v)
        except ValueError:
            return None
    if isinstance(v, (list, tuple)):
        return None
    return v


def _nodata_of(arr, attrs: dict, dtype: np.dtype, url: str):
    for key in ("_FillValue", "nodata"):
        if key in attrs and attrs[key] is not None:
            v = _decode_fill(attrs[key], dtype)
            break
    else:
        v = getattr(arr, "fill_value", None)
        v = None if v is None else _decode_fill(np.asarray(v).item(), dtype)
    if v is None:
        return None
    if dtype.kind in "iub" and isinstance(v, float) and not math.isfinite(v):
        return None
    try:
        return coerce_nodata(v, dtype)
    except Exception as e:  # noqa: BLE001
        raise SourceError(f"Zarr store {url}: nodata value {v!r} does not fit {dtype} pixels: {e}") from e


def _band_names(group, nb: int) -> tuple[str, ...]:
    if "band" in group:
        a = group["band"]
        if len(a.shape) == 1 and a.shape[0] == nb:
            vals = np.asarray(a[:]).ravel()
            names = tuple(v.decode() if isinstance(v, bytes) else str(v) for v in vals.tolist())
            if len(set(names)) == nb:
                return names
    return tuple(str(i + 1) for i in range(nb))
