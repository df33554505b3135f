"""The reader protocol every mosaic source implements, and the one lazy DataArray built over any reader.

A ``Reader`` knows its grid (``GeoBox``), band names, dtype and nodata value, and reads a pixel window of
shape ``(band, y, x)``. Windows may extend past the grid (a halo at the mosaic's edge): those pixels come
back as nodata. Readers are described by a JSON ``spec`` so a worker can rebuild one; ``open_reader(spec)``
caches them per process, and a pickled reader travels as its spec — so a file is opened once per worker,
never once per tile, and no open handle is ever pickled.

Pixel validity convention: a pixel is nodata when *every* band equals ``nodata`` (or is NaN for floats).
"""

from __future__ import annotations

import json
import threading
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from reefmap.errors import InvalidParameter
from reefmap.geometry.grid import GeoBox, Window


@runtime_checkable
class Reader(Protocol):
    geobox: GeoBox
    band_names: tuple[str, ...]
    dtype: np.dtype
    nodata: float | int | None

    def read(self, window: Window) -> np.ndarray:
        """Pixels of ``window`` as ``(band, y, x)`` of ``dtype``; outside the grid → ``nodata``."""

    def spec(self) -> dict:
        """A JSON-serialisable description; ``open_reader(spec)`` rebuilds an equivalent reader."""


_FACTORIES: dict[str, Callable[[dict], Reader]] = {}
_CACHE: dict[str, Reader] = {}
_LOCK = threading.Lock()


def register_reader(kind: str, factory: Callable[[dict], Reader]) -> None:
    """Make ``open_reader({"kind": kind, ...})`` call ``factory(spec)``."""
    _FACTORIES[kind] = factory


def spec_key(spec: dict) -> str:
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


#: storage_options keys whose values are not secrets (kept in provenance; every other value is redacted)
_PUBLIC_OPTIONS = frozenset({"anon", "endpoint_url", "project", "requester_pays", "region", "default_cache_type",
                             "use_listings_cache", "skip_instance_cache", "cache_timeout", "client_kwargs"})


def public_spec(spec):
    """``spec`` fit for provenance: every ``storage_options`` value that could be a credential (tokens, keys,
    secrets, credential files) becomes ``"<redacted>"``; the keys stay, so the record still says what was used."""
    if isinstance(spec, dict):
        out = {}
        for k, v in spec.items():
            if k == "storage_options" and isinstance(v, dict):
                out[k] = {o: (w if o in _PUBLIC_OPTIONS and not isinstance(w, dict) else "<redacted>") for o, w in v.items()}
            else:
                out[k] = public_spec(v)
        return out
    if isinstance(spec, list):
        return [public_spec(v) for v in spec]
    return spec


def open_reader(spec: dict) -> Reader:
    """The reader for ``spec``, built once per process and then reused."""
    key = spec_key(spec)
    with _LOCK:
        r = _CACHE.get(key)
    if r is not None:
        return r
    kind = spec.get("kind")
    if kind not in _FACTORIES:
        from reefmap.sources import _register_builtin  # noqa: F401  (import side effect: registers built-in kinds)

    if kind not in _FACTORIES:
        raise InvalidParameter(f"unknown mosaic source kind {kind!r}; known kinds: {sorted(_FACTORIES)}")
    r = _FACTORIES[kind](spec)
    with _LOCK:
        return _CACHE.setdefault(key, r)


class ReaderBase:
    """Shared plumbing for readers: pickling as a spec, edge padding, a repr."""

    geobox: GeoBox
    band_names: tuple[str, ...]
    dtype: np.dtype
    nodata: float | int | None

    def __reduce__(self):
        return (open_reader, (self.spec(),))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec().get('kind')} bands={list(self.band_names)} grid={tuple(self.geobox.shape)}>"

    def fill_value(self):
        if self.nodata is None:
            return 0
        return np.array(self.nodata).astype(self.dtype)

    def read(self, window: Window) -> np.ndarray:
        """Pad-aware read: reads the in-grid part with ``_read_inside`` and fills the rest with nodata."""
        inside = window.intersect(Window(0, self.geobox.shape.y, 0, self.geobox.shape.x))
        if inside == window:
            return self._read_inside(window)
        out = np.full((len(self.band_names), *window.shape), self.fill_value(), dtype=self.dtype)
        if inside is not None:
            rel = inside.relative_to(window)
            out[(slice(None), *rel.slices)] = self._read_inside(inside)
        return out

    def _read_inside(self, window: Window) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


def block_window(geobox: GeoBox, cy: int, cx: int, iy: int, ix: int) -> Window:
    """The pixels of chunk ``(iy, ix)`` of a regular ``(cy, cx)`` chunking of ``geobox`` (edge chunks shorter).

    From dask's ``block_id``, which costs O(1) per graph, unlike ``block_info``, which dask materialises for
    every block."""
    h, w = geobox.shape.y, geobox.shape.x
    return Window(iy * cy, min((iy + 1) * cy, h), ix * cx, min((ix + 1) * cx, w))


def _read_block(reader: Reader, cy: int, cx: int, block_id=None):
    _, iy, ix = block_id
    return reader.read(block_window(reader.geobox, cy, cx, iy, ix))


#: axes longer than this get lazy ``RangeIndex`` coordinates (a global grid's would take a gigabyte each)
LAZY_COORDS_ABOVE = 2**22


def _with_axis_coords(out, g: GeoBox):
    """``out`` with pixel-centre ``y``/``x`` coordinates: exact arrays (``GeoBox.ys/xs``), or lazy ranges
    (``xarray.indexes.RangeIndex``) for huge axes."""
    if max(g.shape.y, g.shape.x) <= LAZY_COORDS_ABOVE:
        return out.assign_coords(y=g.ys(), x=g.xs())
    import xarray as xr
    from xarray.indexes import RangeIndex
    from xarray.indexes.range_index import RangeCoordinateTransform

    t = g.transform
    for dim, origin, step, n in (("y", t.f, t.e, g.shape.y), ("x", t.c, t.a, g.shape.x)):
        start = origin + 0.5 * step
        tr = RangeCoordinateTransform(start, start + n * step, n, dim, dim, step=step)
        out = out.assign_coords(xr.Coordinates.from_xindex(RangeIndex(tr)))
    return out


def reader_to_dataarray(reader: Reader, chunks: int | dict | None = 1024, name: str | None = None):
    """The lazy ``DataArray(band, y, x)`` over ``reader``: one dask task per chunk, nothing read until compute.

    Carries the CRS and transform (rioxarray), ``_FillValue`` and ``nodata``, and the reader's spec in
    ``attrs["reefmap_source"]`` so the tile runner can rebuild the reader from the array.
    """
    import dask.array as da
    import rioxarray  # noqa: F401  (registers .rio)
    import xarray as xr

    g = reader.geobox
    if isinstance(chunks, dict):
        cy, cx = int(chunks.get("y", 1024)), int(chunks.get("x", 1024))
    else:
        cy = cx = int(chunks or 1024)
    nb = len(reader.band_names)
    dchunks = ((nb,), _split(g.shape.y, cy), _split(g.shape.x, cx))
    token = name or "reefmap-read-" + _token(spec_key(reader.spec()), cy, cx)
    arr = da.map_blocks(_read_block, reader, cy, cx, dtype=reader.dtype, chunks=dchunks, name=token,
                        meta=np.empty((0, 0, 0), reader.dtype))
    out = xr.DataArray(arr, dims=("band", "y", "x"), coords={"band": list(reader.band_names)}, name="mosaic")
    if g.is_axis_aligned:
        out = _with_axis_coords(out, g)
    out = out.rio.write_crs(g.crs).rio.write_transform(g.transform)
    if reader.nodata is not None:
        out.attrs["_FillValue"] = reader.nodata
        out.attrs["nodata"] = reader.nodata
    out.attrs["reefmap_source"] = json.dumps(reader.spec(), sort_keys=True)
    return out


def reader_of(mosaic) -> Reader:
    """The reader behind a DataArray made by ``open_mosaic`` (or a ``Reader`` passed through)."""
    if isinstance(mosaic, Reader):
        return mosaic
    spec = getattr(mosaic, "attrs", {}).get("reefmap_source")
    if spec is None:
        raise InvalidParameter(
            "this DataArray was not opened by reefmap.open_mosaic, so the tile runner cannot re-read it on "
            "workers; open it with reefmap.open_mosaic(...) (or wrap it with reefmap.sources.memory_reader)"
        )
    return open_reader(json.loads(spec))


def _split(n: int, c: int) -> tuple[int, ...]:
    full, rest = divmod(n, c)
    return (c,) * full + ((rest,) if rest else ())


def _token(*parts: Any) -> str:
    import hashlib

    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]
