"""The reader protocol every mosaic source implements, and the one lazy DataArray built over any reader.

A ``Reader`` knows its grid (``GeoBox``), band names, dtype and nodata value, and reads a pixel window of
shape ``(band, y, x)``. Windows may extend past the grid (a halo at the mosaic's edge): those pixels come
back as nodata. Readers are described by a JSON ``spec`` so a worker can rebuild one: ``READERS`` names the
factory of each kind, ``open_reader(spec)`` builds and caches them per process (a bounded LRU), and a pickled
reader travels as its spec — so a file is opened once per worker, never once per tile, and no open handle is
ever pickled.

Pixel validity convention: a pixel is nodata when *every* band equals ``nodata`` (or is NaN for floats).
"""

from __future__ import annotations

import json
import threading
import uuid
from functools import cached_property
from importlib import import_module
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from reefmap.caching import LRUCache
from reefmap.errors import CorruptSource, InvalidParameter
from reefmap.geometry.grid import GeoBox, Window
from reefmap.options import get_option
from reefmap.sources import urls


@runtime_checkable
class Reader(Protocol):
    geobox: GeoBox
    band_names: tuple[str, ...]
    dtype: np.dtype
    nodata: float | int | None

    def read(self, window: Window, bands: tuple[int, ...] | None = None) -> np.ndarray:
        """Pixels of ``window`` as ``(band, y, x)`` of ``dtype``; outside the grid → ``nodata``. ``bands``: the
        0-based positions of the bands to read, in that order (default: all)."""

    def spec(self) -> dict:
        """A JSON-serialisable description; ``open_reader(spec)`` rebuilds an equivalent reader."""


#: reader kind → ``"module:factory"`` building a reader from a spec of that kind; the module is imported the first
#: time such a spec is opened (so opening a GeoTIFF never imports zarr, and a worker rebuilds any kind it is sent)
READERS: dict[str, str] = {
    "memory": "reefmap.sources.memory:MemoryReader.from_spec",
    "zarr": "reefmap.sources.zarr_source:ZarrReader.from_spec",
    "geotiff": "reefmap.sources.geotiff:GeoTIFFMosaicReader.from_spec",
    "stac": "reefmap.sources.stac:StacReader.from_spec",
    "subset": "reefmap.sources.subset:SubsetReader.from_spec",
    "synthetic": "reefmap.synthetic.reader:SyntheticReader.from_spec",  # a layer above: named, never imported here
}
_FACTORIES: dict[str, Callable[[dict], Reader] | str] = dict(READERS)  # + register_reader's; strings until first use

#: the per-process reader cache: the most recently used readers by spec, at most this many (older ones are
#: dropped, closing their files once no caller holds them); ``clear_reader_cache()`` empties it
READER_CACHE_SIZE = 64
_READERS = LRUCache("readers", READER_CACHE_SIZE)


#: the real specs of the most recently opened mosaics whose attributes show them redacted, by the random
#: ``credentials_ref`` in those attributes: credentials stay in this process's memory only (``reader_to_dataarray``,
#: ``reader_of``)
_PRIVATE_SPECS = LRUCache("mosaic credentials", 1024)


def register_reader(kind: str, factory: Callable[[dict], Reader] | str) -> None:
    """Make ``open_reader({"kind": kind, ...})`` call ``factory(spec)`` (a callable, or a ``"module:factory"``
    string imported on first use): for reader kinds outside reefmap. Every process that opens such a spec
    (dask workers included) must have registered it."""
    _FACTORIES[kind] = factory


def _factory(kind) -> Callable[[dict], Reader]:
    f = _FACTORIES.get(kind)
    if f is None:
        raise InvalidParameter(f"unknown mosaic source kind {kind!r}; known kinds: {sorted(_FACTORIES)}")
    if isinstance(f, str):
        module, _, attr = f.partition(":")
        f = import_module(module)
        for part in attr.split("."):
            f = getattr(f, part)
        _FACTORIES[kind] = f
    return f


def spec_key(spec: dict) -> str:
    """A spec's canonical JSON text: the key of the reader cache, and part of the mosaic's dask name."""
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


#: storage_options keys whose values are not secrets (kept in provenance, URLs redacted; every other value is redacted)
_PUBLIC_OPTIONS = frozenset({"anon", "endpoint_url", "project", "requester_pays", "region", "default_cache_type",
                             "use_listings_cache", "skip_instance_cache", "cache_timeout", "client_kwargs"})


def public_spec(spec):
    """``spec`` fit for provenance, attributes and messages: every URL in it is redacted (userinfo and signature-like
    query values, ``urls.redact``) and every ``storage_options`` value that could be a credential (tokens, keys,
    secrets, credential files) becomes ``"<redacted>"``; the keys stay, so the record still says what was used."""
    if isinstance(spec, dict):
        out = {}
        for k, v in spec.items():
            if k == "storage_options" and isinstance(v, dict):
                out[k] = {o: (public_spec(w) if o in _PUBLIC_OPTIONS and not isinstance(w, dict) else "<redacted>")
                          for o, w in v.items()}
            else:
                out[k] = public_spec(v)
        return out
    if isinstance(spec, list):
        return [public_spec(v) for v in spec]
    if isinstance(spec, str):
        return urls.redact_text(spec)
    return spec


def source_identity(reader: "Reader") -> dict:
    """What a map records of the mosaic it was made from, to refuse a different one later (no credentials):
    the kind, the redacted locations (files, store, STAC items) and a fingerprint of the redacted spec (each file's
    header: grid, bands, nodata, type) and pixel type. Not in it: ``storage_options`` (how to reach the data, not
    what it is) and an in-memory array's random id; a re-signed URL keeps its identity."""
    import hashlib

    spec = public_spec(reader.spec())
    what = {k: v for k, v in spec.items() if k not in ("storage_options", "id", "source")}
    if spec.get("kind") == "subset":  # the source's identity, and which part of it
        what["source"] = source_identity(reader.source)
        spec = spec["source"]
    what["pixels"] = [str(np.dtype(reader.dtype)), None if reader.nodata is None else float(reader.nodata),
                      [str(b) for b in reader.band_names]]
    if spec.get("kind") == "stac":
        where = [str(i.get("id")) for i in spec.get("items", [])]
    elif "paths" in spec:
        where = [str(p) for p in spec["paths"]]
    elif "url" in spec:
        where = [str(spec["url"])]
    else:
        where = []
    return {"kind": spec.get("kind"), "locations": where,
            "fingerprint": hashlib.sha256(spec_key(what).encode()).hexdigest()[:16]}


def open_reader(spec: dict) -> Reader:
    """The reader for ``spec``, built once per process and then reused (see ``READER_CACHE_SIZE``)."""
    return _READERS.get_or_create(spec_key(spec), lambda: _factory(spec.get("kind"))(spec))


def cache_reader(reader: Reader) -> Reader:
    """Put a freshly made ``reader`` in ``open_reader``'s cache under its spec, replacing any older one, so that
    unpickling its spec in this process gives back this very reader (and the files it has open)."""
    return _READERS.put(spec_key(reader.spec()), reader)


def clear_reader_cache() -> None:
    """Forget every cached reader: the next ``open_reader`` of any spec builds a new one (re-reading metadata)."""
    _READERS.clear()


#: decoded source blocks by (reader spec key, block row, block column), bounded in bytes by the option
#: ``chunk_cache_mb`` (read at each miss): the halo'd windows of neighbouring tiles decode each block once
_CHUNKS: "LRUCache[np.ndarray]" = LRUCache("source chunks", 0, weight=lambda a: a.nbytes)


class ReadStats:
    """This process's source reads: bytes of the source blocks decoded (a block a window touches is decoded
    whole: a Zarr chunk; a GeoTIFF mosaic's cache block) and bytes of the distinct blocks any window needed."""

    def __init__(self):
        self.lock = threading.Lock()
        self.decoded = 0
        self.needed: dict[tuple, int] = {}

    def count(self, key: tuple, nbytes: int, decoded: bool) -> None:
        with self.lock:
            self.decoded += nbytes if decoded else 0
            self.needed[key] = nbytes

    def snapshot(self) -> tuple[int, dict[tuple, int]]:
        with self.lock:
            return self.decoded, dict(self.needed)


_STATS = ReadStats()


def local_read_stats() -> tuple[int, dict[tuple, int]]:
    """This process's bytes decoded, and ``{block: bytes}`` of the blocks its windows needed (``read_stats``)."""
    return _STATS.snapshot()


def read_stats(client=None) -> dict:
    """Bytes of source blocks decoded and bytes of the distinct blocks needed by the windows read since
    ``reset_read_stats``, and their ratio ``read_amplification`` (1.0: each block decoded once; a 1088 px halo'd
    window over 1024 px chunks decodes 9 chunks for one tile's worth of pixels): in this process, or in this process
    and the workers of ``client`` (a ``distributed.Client``) together (a block that two workers decode counts twice
    in the bytes decoded, once in the bytes needed). ``read_amplification`` is None when nothing was read."""
    parts = [local_read_stats()] + (list(client.run(local_read_stats).values()) if client is not None else [])
    needed = {k: v for _, blocks in parts for k, v in blocks.items()}
    decoded, total = sum(d for d, _ in parts), sum(needed.values())
    return {"decoded_bytes": decoded, "needed_bytes": total,
            "read_amplification": round(decoded / total, 3) if total else None}


def clear_chunk_cache(client=None) -> None:
    """Empty the cache of decoded source blocks in this process (and on ``client``'s workers). A run starts with
    this: its blocks are then shared only among its own tiles, so a source rewritten in place since an earlier run
    in the same processes (a notebook, a warm cluster) is read afresh, never from the earlier run's blocks."""
    _CHUNKS.clear()
    if client is not None:
        client.run(clear_chunk_cache)


def reset_read_stats(client=None) -> None:
    """Start counting ``read_stats`` afresh, with an empty chunk cache so that what follows is measured on its own
    (in this process, and on ``client``'s workers)."""
    global _STATS
    _STATS = ReadStats()
    clear_chunk_cache()
    if client is not None:
        client.run(reset_read_stats)


class ReaderBase:
    """Shared plumbing for readers: pickling as a spec, edge padding, a repr, and the source-chunk cache.

    A reader with a ``cache_block`` (the ``(rows, cols)`` of its source's natural blocks: a Zarr store's chunks)
    reads a window block by block through the ``source chunks`` cache (``_CHUNKS``), so that the halo'd windows of
    neighbouring tiles decode each block once (``read_stats`` counts it); with the option ``chunk_cache_mb`` 0 it
    reads windows directly, and so it does when a block is damaged (``CorruptSource``): a window fails only where
    its own pixels cannot be read, and the error names that window."""

    geobox: GeoBox
    band_names: tuple[str, ...]
    dtype: np.dtype
    nodata: float | int | None
    cache_block: tuple[int, int] | None = None

    def __reduce__(self):
        return (open_reader, (self.spec(),))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec().get('kind')} bands={list(self.band_names)} grid={tuple(self.geobox.shape)}>"

    def fill_value(self):
        if self.nodata is None:
            return 0
        return np.array(self.nodata).astype(self.dtype)

    def read(self, window: Window, bands: tuple[int, ...] | None = None) -> np.ndarray:
        """Pad-aware read of the chosen ``bands`` (positions; all when None): reads the in-grid part with
        ``_read_bands_inside`` (through the chunk cache when the reader has a ``cache_block``) and fills the rest
        with nodata."""
        inside = window.intersect(Window(0, self.geobox.shape.y, 0, self.geobox.shape.x))
        blocks = self.cache_block
        budget = int(get_option("chunk_cache_mb") * 2**20) if blocks is not None and inside is not None else 0
        if inside == window and not budget:
            return self._count_direct(inside, bands)
        nb = len(self.band_names) if bands is None else len(bands)
        shape = (nb, *window.shape)  # filled with nodata only where the window leaves the grid
        out = np.empty(shape, self.dtype) if inside == window else np.full(shape, self.fill_value(), self.dtype)
        if inside is None:
            return out
        if budget:
            if _CHUNKS.maxsize != budget:
                _CHUNKS.resize(budget)
            try:
                for key, bw in self._blocks(inside, bands):
                    data, decoded = _CHUNKS.get_or_make(key, lambda: self._read_bands_inside(bw, bands))
                    _STATS.count(key, _nbytes(self, bw, nb), decoded)
                    part = bw.intersect(inside)
                    out[(slice(None), *part.relative_to(window).slices)] = data[(slice(None), *part.relative_to(bw).slices)]
                return out
            except CorruptSource:  # a damaged block: read just the window, which fails only where it is damaged
                pass
        out[(slice(None), *inside.relative_to(window).slices)] = self._count_direct(inside, bands)
        return out

    def _read_bands_inside(self, window: Window, bands: tuple[int, ...] | None) -> np.ndarray:
        """The chosen bands of an in-grid window: all of them read, then picked (readers that can read fewer
        bands override this)."""
        data = self._read_inside(window)
        return data if bands is None else data[list(bands)]

    def _blocks(self, inside: Window, bands: tuple[int, ...] | None):
        """``(cache key, block window)`` of each ``cache_block`` that the in-grid window ``inside`` touches."""
        cy, cx = self.cache_block
        picked = None if bands is None else tuple(bands)
        for by in range(inside.row_start // cy, (inside.row_stop - 1) // cy + 1):
            for bx in range(inside.col_start // cx, (inside.col_stop - 1) // cx + 1):
                yield (self.cache_key, picked, by, bx), block_window(self.geobox, cy, cx, by, bx)

    def _count_direct(self, inside: Window, bands: tuple[int, ...] | None) -> np.ndarray:
        """``_read_bands_inside(inside, bands)``, counting (with a ``cache_block``) the blocks it decodes."""
        if self.cache_block is not None:
            nb = len(self.band_names) if bands is None else len(bands)
            for key, bw in self._blocks(inside, bands):
                _STATS.count(key, _nbytes(self, bw, nb), True)
        return self._read_bands_inside(inside, bands)

    @cached_property
    def cache_key(self) -> str:
        """The source's identity in the chunk cache: its spec's canonical text."""
        return spec_key(self.spec())

    def _read_inside(self, window: Window) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


def block_window(geobox: GeoBox, cy: int, cx: int, iy: int, ix: int) -> Window:
    """The pixels of chunk ``(iy, ix)`` of a regular ``(cy, cx)`` chunking of ``geobox`` (edge chunks shorter).

    From dask's ``block_id``, which costs O(1) per graph, unlike ``block_info``, which dask materialises for
    every block."""
    h, w = geobox.shape.y, geobox.shape.x
    return Window(iy * cy, min((iy + 1) * cy, h), ix * cx, min((ix + 1) * cx, w))


def _nbytes(reader: Reader, w: Window, bands: int) -> int:
    return bands * w.shape.y * w.shape.x * np.dtype(reader.dtype).itemsize


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
    ``attrs["reefmap_source"]`` so the tile runner can rebuild the reader from the array. Attributes are saved with
    the array, so a spec holding credentials is put there redacted (``public_spec``) with a ``credentials_ref`` to
    the real one, which stays in this process's memory (``reader_of`` finds it).
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
    spec = reader.spec()
    shown = public_spec(spec)
    if shown != spec:
        shown["credentials_ref"] = uuid.uuid4().hex
        _PRIVATE_SPECS.put(shown["credentials_ref"], spec)
    token = name or "reefmap-read-" + _token(spec_key(shown), cy, cx)
    arr = da.map_blocks(_read_block, reader, cy, cx, dtype=reader.dtype, chunks=dchunks, name=token,
                        meta=np.empty((0, 0, 0), reader.dtype))
    out = xr.DataArray(arr, dims=("band", "y", "x"), coords={"band": list(reader.band_names)}, name="mosaic")
    if g.is_axis_aligned:
        out = _with_axis_coords(out, g)
    out = out.rio.write_crs(g.crs).rio.write_transform(g.transform)
    if reader.nodata is not None:
        out.attrs["_FillValue"] = reader.nodata
        out.attrs["nodata"] = reader.nodata
    out.attrs["reefmap_source"] = json.dumps(shown, sort_keys=True)
    return out


def reader_of(mosaic) -> Reader:
    """The reader behind a DataArray made by ``open_mosaic`` (or a ``Reader`` passed through): of exactly the bands
    and pixels the DataArray shows when it was narrowed with ``.sel``/``.isel`` (``subset_of_dataarray``)."""
    if isinstance(mosaic, Reader):
        return mosaic
    spec = getattr(mosaic, "attrs", {}).get("reefmap_source")
    if spec is None:
        raise InvalidParameter(
            "this DataArray was not opened by reefmap.open_mosaic, so the tile runner cannot re-read it on "
            "workers; open it with reefmap.open_mosaic(...) (or wrap it with reefmap.sources.memory_reader)"
        )
    spec = json.loads(spec)
    ref = spec.pop("credentials_ref", None)
    if ref is not None:
        spec = _PRIVATE_SPECS.get(ref)
        if spec is None:
            raise InvalidParameter(
                "this mosaic's credentials are kept only in the memory of the process that opened it (they are "
                "never saved with the array), and this process no longer has them; open it again with "
                "reefmap.open_mosaic(...) here"
            )
    from reefmap.sources.subset import subset_of_dataarray

    return subset_of_dataarray(mosaic, open_reader(spec))


def _split(n: int, c: int) -> tuple[int, ...]:
    full, rest = divmod(n, c)
    return (c,) * full + ((rest,) if rest else ())


def _token(*parts: Any) -> str:
    import hashlib

    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]
