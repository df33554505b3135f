"""The output map: a Zarr v3 store on the mosaic's grid.

Layout (format ``reefmap-map/2``, one Zarr group; every object is written by exactly one tile, so writes never race):

- ``reef_probability`` (y, x) uint8: p = value / 250 (``scale_factor``), 255 = nodata (``_FillValue`` and Zarr fill
  value: NaN for a plain xarray reader, which sees no probability where a pixel is nodata or unfinished);
- ``classification`` (y, x) uint8: CF ``flag_values`` / ``flag_meanings``: 0 = nodata, the classes, 254 =
  unfinished, which is also the Zarr fill value: a tile not computed yet reads as "unfinished", never as nodata;
- ``x``, ``y`` pixel-centre coordinates and ``spatial_ref`` (CF grid mapping + GDAL ``GeoTransform``), so
  ``xr.open_zarr(store).rio.crs`` / ``.rio.transform()`` are the mosaic's; every root array is on the pixel grid,
  so rioxarray's whole-Dataset operations (``clip_box``, ``reproject``) and ``to_netcdf`` work on it;
- ``tiles/status`` (tile_y, tile_x) uint8, one 1x1 chunk per tile: 0 pending, 1 done, 2/3/4 skipped
  (nodata / land / deep water), 9 failed — written only after the tile's pixels and proof are;
- ``tiles/proof`` (tile_y, tile_x, 5) uint64, one chunk per tile (``PROOF_FIELDS``): the stored size and CRC32C of
  each of the tile's data chunks (size 0: no chunk, the layer equals the fill value), written after the chunks;
  read only by ``reefmap verify`` and by ``run`` before it skips finished tiles (``reefmap.store.integrity``);
- ``tile_errors/t{iy}_{ix}`` groups whose attributes hold a tile's latest failure reason (read while its state is 9);
- ``plans/{token}`` groups recording each run's plan; the root attribute ``reefmap`` holds provenance as JSON.

Format ``reefmap-map/1`` stores (root ``tile_status``, classification filled with 0, ``reefmap`` a dict) are read and
resumed as they are; their new tiles get proofs too.

Data chunks are the tiles: a tile writes whole chunks only, with deterministic content, so repeating a
tile (after a kill, or from a second concurrent run) rewrites identical bytes.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import posixpath
import threading
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from reefmap import __version__
from reefmap.classes import ClassScheme
from reefmap.errors import NotAReefmapStore, StoreError, StoreMismatch
from reefmap.geometry.grid import GeoBox, TileGrid, TileIndex, Window
from reefmap.sources import urls
from reefmap.store.format import (CLASS_NODATA, DATA_ZSTD_LEVEL, FILL_VALUES, PROOF_FIELDS, PROOF_PATH, PROB_NODATA, PROB_SCALE,
                                  STATE_CODES, STATUS_PATH, STORE_FORMAT, TILES_GROUP, UNFINISHED, DATA_VARS, TileState,
                                  classification_attrs, decode_meta, encode_meta, format_version, is_finished,
                                  scheme_of_meta)
from reefmap.zarrchunks import chunk_key, raw_chunks, raw_layout



def code_version() -> str:
    """reefmap's version, plus the git commit when running from a checkout."""
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        rev = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
        if rev.returncode == 0 and rev.stdout.strip():
            dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return f"{__version__}+g{rev.stdout.strip()}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        pass
    return __version__


def spatial_ref_attrs(geobox: GeoBox) -> dict:
    """Attributes of a ``spatial_ref`` variable for ``geobox``: CF grid mapping, WKT and GDAL ``GeoTransform``
    (what rioxarray and GDAL read the CRS and transform from)."""
    from pyproj import CRS

    crs = CRS.from_user_input(geobox.crs)
    attrs = {k: v for k, v in crs.to_cf().items() if isinstance(v, (str, int, float))}
    t = geobox.transform
    attrs.update(crs_wkt=crs.to_wkt(), spatial_ref=crs.to_wkt(),
                 GeoTransform=" ".join(repr(float(v)) for v in (t.c, t.a, t.b, t.f, t.d, t.e)))
    return attrs


def write_grid_coords(group, geobox: GeoBox, tile: int) -> None:
    """Create in the Zarr ``group`` the coordinates of ``geobox``: ``spatial_ref`` (``spatial_ref_attrs``) and, for
    an axis-aligned grid, the pixel-centre ``x``/``y`` arrays (chunks of up to 64 tiles of ``tile`` px).

    Each is created only if absent and never overwritten: two runs creating one store at once write identical
    values, and one that lost the race leaves the winner's alone.
    """
    from zarr.errors import ContainsArrayError, ContainsGroupError

    def create(name, **kw):
        try:
            return group.create_array(name, overwrite=False, **kw)
        except (ContainsArrayError, ContainsGroupError):
            return None

    sref = create("spatial_ref", shape=(), dtype="int64", fill_value=0, attributes=spatial_ref_attrs(geobox))
    if sref is not None:
        sref[...] = 0
    if not geobox.is_axis_aligned:
        return
    for name, vals, attrs in (
        ("x", geobox.xs(), {"standard_name": "projection_x_coordinate", "axis": "X"}),
        ("y", geobox.ys(), {"standard_name": "projection_y_coordinate", "axis": "Y"}),
    ):
        n = len(vals)
        a = create(name, shape=(n,), chunks=(min(n, tile * 64),), dtype="float64", fill_value=np.nan,
                   dimension_names=[name], attributes=attrs)
        if a is not None:
            a[:] = vals


class MapStore:
    """A reefmap map on any fsspec URL or local path. Pickles as its URL; reopened lazily per process.

    ``mode="r"`` (or ``MapStore.open_readonly``) opens it read-only: what ``status``, queries and exports use;
    ``"r+"`` (the default) also writes tiles. The public read API: ``group`` (the checked Zarr group),
    ``open_group`` (a fresh, unchecked handle), ``attrs``/``grid``/``version``, ``states``/``scan_states``/
    ``status_keys``/``read_states``, ``plans``/``planned``/``errors``, and the raw chunk access the integrity checks
    use (``chunk_sizes``, ``chunk_mask``, ``read_chunks``, ``chunk_bytes``, ``delete_chunk``, ``proofs``).

    What is cached: the Zarr group and array handles, opened once per ``MapStore`` (their metadata is fixed
    once the store is created). Nothing else: tile states, plans and errors are read afresh on every call.
    """

    def __init__(self, url: str | os.PathLike, storage_options: dict | None = None, mode: str = "r+", *,
                 group=None):
        """``group``: an already open handle on the store's root group (``open_group``), to read through it."""
        if mode not in ("r", "r+"):
            raise StoreError(f"MapStore mode {mode!r} must be 'r' (read-only) or 'r+' (read and write tiles)")
        self.url = urls.normalize(url)
        self.storage_options = storage_options or {}
        self.mode = mode
        self._group = group
        self._arrays: dict[str, Any] = {}
        self._version: int | None = None
        self._lock = threading.Lock()

    @classmethod
    def open_readonly(cls, url: str | os.PathLike, storage_options: dict | None = None) -> "MapStore":
        """The map at ``url``, opened read-only (nothing is read until it is used)."""
        return cls(url, storage_options, mode="r")

    def __reduce__(self):
        return (MapStore, (self.url, self.storage_options, self.mode))

    def __repr__(self):
        return f"<MapStore {self.url}{' (read-only)' if self.mode == 'r' else ''}>"

    # -- opening ------------------------------------------------------------------------------------------------
    def open_group(self, mode: str | None = None):
        """A new handle on the store's root Zarr group (``mode``: this store's by default); no reefmap checks."""
        import zarr

        kw = {} if urls.is_local(self.url) else {"storage_options": self.storage_options}
        return zarr.open_group(self.url, mode=mode or self.mode, zarr_format=3, **kw)

    @property
    def group(self):
        """The root Zarr group (opened once, in this store's mode); ``NotAReefmapStore`` if it is not a map."""
        if self._group is None:
            with self._lock:
                if self._group is None:
                    try:
                        g = self.open_group()
                    except (FileNotFoundError, KeyError) as e:
                        raise NotAReefmapStore(f"{self.url!r} is not a reefmap map (no Zarr group there: {e})") from None
                    except Exception as e:  # zarr raises its own errors for missing/foreign nodes
                        raise NotAReefmapStore(f"{self.url!r} is not a reefmap map ({type(e).__name__}: {e})") from None
                    if "reefmap" not in g.attrs:
                        raise NotAReefmapStore(
                            f"{self.url!r} is a Zarr group but not a reefmap map (no 'reefmap' attributes); "
                            "point at a store written by reefmap, or choose a new output path"
                        )
                    self._group = g
        return self._group

    def exists(self) -> bool:
        return urls.exists(urls.join(self.url, "zarr.json"), self.storage_options)

    def array(self, name: str):
        """The member ``name`` (an array, or the ``tile_errors``/``plans`` group; a path such as ``tiles/status``),
        opened once."""
        a = self._arrays.get(name)
        if a is None:
            a = self._arrays[name] = self.group[name]
        return a

    @property
    def attrs(self) -> dict:
        """The root ``reefmap`` attribute (provenance, identity, grid) as a dict, whatever the format version."""
        meta = decode_meta(self.group.attrs["reefmap"])
        if meta is None:
            raise NotAReefmapStore(f"{self.url!r} has a 'reefmap' attribute that is neither JSON nor a mapping; "
                                   "point at a store written by reefmap")
        return meta

    @property
    def version(self) -> int:
        """The store's format version (1 or 2; see ``reefmap.store.format``), read once."""
        if self._version is None:
            v = format_version(self.attrs)
            if v not in STATUS_PATH:
                raise NotAReefmapStore(f"{self.url!r} has map format {self.attrs.get('format')!r}, which this "
                                       f"reefmap cannot read (it reads {STORE_FORMAT} and earlier); upgrade reefmap")
            self._version = v
        return self._version

    @property
    def status_path(self) -> str:
        """Where the tile states live: ``tiles/status`` (format 2) or ``tile_status`` (format 1)."""
        return STATUS_PATH[self.version]

    @property
    def grid(self) -> TileGrid:
        return TileGrid.from_json(self.attrs["grid"])

    @property
    def scheme(self) -> ClassScheme:
        """The class scheme of the map's ``classification`` layer (the demo scheme for maps that record none)."""
        return scheme_of_meta(self.attrs)

    # -- creation -----------------------------------------------------------------------------------------------
    @classmethod
    def create_or_open(cls, url: str | os.PathLike, grid: TileGrid, identity: dict, provenance: dict,
                       storage_options: dict | None = None, *, allow_new_sources: bool = False) -> "MapStore":
        """Open the map at ``url`` if it exists and was made for the same ``identity`` (grid, model, halo …, and
        the input ``sources``: see ``check_identity``); create it otherwise. A mismatch raises ``StoreMismatch``
        naming what differs — never mixes runs. A local store holding symlinks is refused (``check_no_symlinks``).

        ``provenance`` is recorded in the root attribute; its ``SCHEME_KEY`` (the model's class scheme as
        ``ClassScheme.to_json``; the demo scheme when absent) also gives the ``classification`` layer its CF flags.
        Creating is safe to race: two runs creating one store write identical metadata.
        """
        store = cls(url, storage_options)
        identity = {"grid": grid.to_json(), **identity}
        if store.exists():
            try:
                store.check_no_symlinks()
                store.check_identity(identity, allow_new_sources=allow_new_sources, specs=provenance.get("sources", ()))
                return store
            except NotAReefmapStore:
                if not store._being_created():
                    raise
        fs, path = urls.url_to_fs(store.url, store.storage_options)
        if fs.exists(path) and (not fs.isdir(path) or fs.ls(path)) and not store._being_created():
            raise NotAReefmapStore(
                f"output {store.url!r} already exists and is not a reefmap map; choose a new --out (nothing was written)"
            )
        store._create(grid, identity, provenance)
        store.check_identity(identity)  # a concurrent creator with another configuration may have won
        return store

    #: the suffix of a file written aside and renamed into place (``put_raw``; zarr's local store names its own so)
    PARTIAL = ".partial"
    _MEMBERS = {"spatial_ref", "x", "y", "reef_probability", "classification", TILES_GROUP, "tile_errors", "plans"}

    def _being_created(self) -> bool:
        """Another run is creating this store: its folder holds only reefmap's members and files being renamed
        into place (``*.partial``), and no root attributes yet — perhaps not even the root ``zarr.json``."""
        fs, path = urls.url_to_fs(self.url, self.storage_options)
        try:
            names = {posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False)}
        except FileNotFoundError:
            return False
        if any(n not in self._MEMBERS and n != "zarr.json" and not n.endswith(self.PARTIAL) for n in names):
            return False
        if "zarr.json" not in names:
            return True
        try:
            return "reefmap" not in self.open_group("r").attrs
        except Exception:  # a root zarr.json that is not a Zarr group: not ours
            return False

    def check_identity(self, identity: dict, *, allow_new_sources: bool = False, specs=()) -> None:
        """Refuse (``StoreMismatch``, naming each difference) to write this run into a store made with another
        ``identity``: grid, model, halo, screen, bands, and ``sources``, the ``source_identity`` records of the input.

        Sources: the store keeps the records of every input it accepted. A record it has not seen is refused unless
        ``allow_new_sources`` (then it is added, and ``specs``, the run's public source specs, are appended to the
        provenance's ``sources``); a store written before sources were recorded accepts and records it.
        """
        have = self.attrs.get("identity", {})
        diffs = []
        for key, want in identity.items():
            if key == "sources":
                continue
            got = have.get(key)
            if key == "grid" and got is not None:
                same = TileGrid.from_json(got).tile == TileGrid.from_json(want).tile and \
                    TileGrid.from_json(got).geobox.same_grid(TileGrid.from_json(want).geobox)
            else:
                same = got == want
            if not same:
                diffs.extend(_differences(key, got, want))
        if diffs:
            raise StoreMismatch(
                f"store {self.url!r} was written by a different run configuration ({'; '.join(diffs)}); "
                "refusing to mix them: use a new --out, or re-run with the store's model and parameters"
            )
        if "sources" in identity:
            self._accept_sources(have.get("sources"), identity["sources"], allow_new_sources, list(specs))

    def _accept_sources(self, known: list | None, run: list, allow_new: bool, specs: list) -> None:
        new = [s for s in run if s not in (known or [])]
        if not new:
            return
        if known is not None and not allow_new:
            raise StoreMismatch(
                f"store {self.url!r} was made from other input: {_source_difference(known, new[0])}; refusing to "
                "mix inputs in one map: use a new --out, or pass --allow-new-sources (allow_new_sources=True) to "
                "extend this map with this input"
            )
        self._writable()
        attrs = self.attrs
        attrs["identity"] = {**attrs["identity"], "sources": [*(known or []), *new]}
        attrs["sources"] = [*attrs.get("sources", []), *(s for s in specs if s not in attrs.get("sources", []))]
        self.group.attrs["reefmap"] = attrs

    def check_no_symlinks(self) -> None:
        """Refuse (``StoreError``) a local store with a symlink among its folders: tiles written through it would land
        outside the store. Checked once when a store is opened for writing, without following any link."""
        if not urls.is_local(self.url):
            return
        links = store_symlinks(urls.local_path(self.url))
        if links:
            shown = ", ".join(links[:3]) + (f" and {len(links) - 3} more" if len(links) > 3 else "")
            raise StoreError(
                f"store {self.url!r} holds symlinks ({shown}): writing tiles through them would write outside the "
                "store, so nothing was written. Replace each link with a real folder holding its files (e.g. copy "
                "the store with `cp -rL STORE COPY` and resume into the copy), or use a new --out"
            )

    def _create(self, grid: TileGrid, identity: dict, provenance: dict) -> None:
        from zarr.errors import ContainsArrayError, ContainsGroupError

        for _ in range(20):  # two runs may create the group at the same moment: one wins, the other opens it
            try:
                g = self.open_group("a")
                break
            except ContainsGroupError:
                continue
        t = grid.tile
        ny, nx = grid.geobox.shape
        common = {"grid_mapping": "spatial_ref", "coordinates": "spatial_ref"}

        def create_array(name, **kw):
            """Create ``name`` unless it exists; never overwrite (a concurrent run may already be writing)."""
            try:
                return g.create_array(name, overwrite=False, **kw)
            except (ContainsArrayError, ContainsGroupError):
                return None

        from zarr.codecs import ZstdCodec

        write_grid_coords(g, grid.geobox, t)
        fills = FILL_VALUES[2]
        create_array(
            "reef_probability", shape=(ny, nx), chunks=(t, t), dtype="uint8", fill_value=fills["reef_probability"],
            dimension_names=["y", "x"], compressors=ZstdCodec(level=DATA_ZSTD_LEVEL),
            attributes={**common, "_FillValue": PROB_NODATA, "scale_factor": 1.0 / PROB_SCALE, "add_offset": 0.0,
                        "valid_range": [0, PROB_SCALE],
                        "long_name": "probability that the pixel is coral reef", "units": "1",
                        "comment": f"stored as uint8: probability = value / {PROB_SCALE}; {PROB_NODATA} (NaN once "
                                   "decoded) = no probability: nodata, or a tile not computed yet; classification "
                                   f"tells which ({CLASS_NODATA} nodata, {UNFINISHED} unfinished)"},
        )
        create_array(
            "classification", shape=(ny, nx), chunks=(t, t), dtype="uint8", fill_value=fills["classification"],
            dimension_names=["y", "x"], compressors=ZstdCodec(level=DATA_ZSTD_LEVEL),
            attributes={**common, **classification_attrs(scheme_of_meta(provenance)), "nodata": CLASS_NODATA,
                        "long_name": "benthic/surface class (argmax of the model's class probabilities)",
                        "comment": f"{UNFINISHED} = unfinished: the pixel's tile is not computed yet (pending or "
                                   f"failed; the array's fill value); {CLASS_NODATA} = nodata in the input"},
        )
        create_array(
            STATUS_PATH[2], shape=tuple(grid.shape), chunks=(1, 1), dtype="uint8", fill_value=0, compressors=None,
            dimension_names=["tile_y", "tile_x"],
            attributes={"flag_values": [int(s) for s in TileState],
                        "flag_meanings": " ".join(s.name.lower() for s in TileState), "tile_size": t,
                        "long_name": "per-tile completion state, written after the tile's pixels and proof"},
        )
        self._create_proofs(g, tuple(grid.shape))
        for name in ("tile_errors", "plans"):
            try:
                g.require_group(name)
            except (ContainsArrayError, ContainsGroupError):
                pass
        # the root attributes go last: a store is only "a reefmap map" once everything above exists
        if "reefmap" in g.attrs:
            self._group = None
            return
        g.attrs["reefmap"] = encode_meta({
            "format": STORE_FORMAT, "identity": identity, "grid": grid.to_json(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **provenance,
        })
        self._group = None

    @staticmethod
    def _create_proofs(g, tiles_shape: tuple[int, int]):
        """Create ``tiles/proof`` in the root group ``g`` unless it exists; return it."""
        from zarr.errors import ContainsArrayError, ContainsGroupError

        try:
            return g.create_array(
                PROOF_PATH, shape=(*tiles_shape, len(PROOF_FIELDS)), chunks=(1, 1, len(PROOF_FIELDS)), dtype="uint64",
                fill_value=0, compressors=None, dimension_names=["tile_y", "tile_x", "field"], overwrite=False,
                attributes={"fields": list(PROOF_FIELDS), "hash": "crc32c",
                            "long_name": "per finished tile, the stored size and CRC32C of each data chunk (size 0: "
                                         "no chunk), written after the chunks and before the tile's state"})
        except (ContainsArrayError, ContainsGroupError):
            return g[PROOF_PATH]

    # -- tile writes -------------------------------------------------------------------------------------------
    def _writable(self) -> None:
        if self.mode == "r":
            raise StoreError(f"map {self.url!r} was opened read-only; open it with MapStore(url) to write tiles")

    def write_tile(self, write: Window, prob: np.ndarray, cls: np.ndarray) -> None:
        """Write one tile's layers and then its proof (``write_tiles`` of one tile). Call ``mark`` after it: a
        tile's state is written only after its data and proof."""
        self.write_tiles([(write, prob, cls)])

    def write_tiles(self, items) -> None:
        """Write the layers of tiles ``items`` (``(write window, prob, cls)``; whole, aligned chunks: idempotent
        and race-free), then their proofs: the size and CRC32C of each chunk as stored (a layer equal to the
        array's fill value is stored as no chunk: size 0). Call ``mark_many`` after it: a tile's state is written
        only after its data and proof.

        Where the arrays are laid out as this store makes them (``raw_layout``), each chunk is encoded here with the
        array's own codecs (bytes + zstd: the very bytes zarr writes) and its proof computed from those bytes;
        every chunk of ``items`` goes to the store in one concurrent round, then every proof (local disk: files
        written and renamed into place; ``gs://``: one round-trip for all, not one per chunk). Otherwise through
        zarr, chunk by chunk, each proof read back."""
        self._writable()
        items = list(items)
        t = self.array("reef_probability").chunks[0]  # the data chunks are the tiles
        tiles = [(w.row_start // t, w.col_start // t) for w, _, _ in items]
        encoders = [self.chunk_encoder(name) for name in DATA_VARS]
        proof_raw = raw_layout(self.proof_array(), (1, 1, len(PROOF_FIELDS)), np.uint64)
        if any(e is None for e in encoders) or not proof_raw:
            for (write, prob, cls), tile in zip(items, tiles):
                proof = [1]
                for name, a in zip(DATA_VARS, (prob, cls)):
                    self.array(name)[write.slices] = a
                    proof += chunk_proof(self.chunk_bytes(name, tile))
                self.proof_array()[tile[0], tile[1], :] = np.array(proof, np.uint64)
            return
        puts, proofs = {}, {}
        for (write, *layers), tile in zip(items, tiles):
            proof = [1]
            for name, enc, a in zip(DATA_VARS, encoders, layers):
                b = enc(write, a)
                puts[self._data_key(name, tile)] = b
                proof += chunk_proof(b)
            proofs[self._data_key(PROOF_PATH, tile)] = np.array(proof, "<u8").tobytes()
        self.put_raw(puts)
        self.put_raw(proofs)

    def chunk_encoder(self, name: str):
        """``encode(window, layer) -> bytes | None``: the stored bytes of the chunk of data layer ``name`` holding
        ``window`` (None: the chunk equals the fill value, zarr stores none), with the array's own codecs; None
        when the array is not laid out as this store makes it (``raw_layout``)."""
        arr = self.array(name)
        t = arr.chunks
        raw = raw_chunks(arr, t, np.uint8, compressed=True)
        if raw is None:
            return None

        def encode(write: Window, a: np.ndarray) -> bytes | None:
            if write.shape.y == t[0] and write.shape.x == t[1]:
                return raw.encode(a)
            chunk = np.full(t, raw.fill, np.uint8)  # an edge tile: zarr stores the whole chunk, padded with the fill value
            chunk[:write.shape.y, :write.shape.x] = a
            return raw.encode(chunk)

        return encode

    def put_raw(self, blobs: dict[str, bytes | None]) -> None:
        """Store ``{key: bytes}`` (None: delete the key) under the store's root, all at once: concurrent requests
        (one round-trip remotely); each local file is written aside and renamed into place (never half-written)."""
        if urls.is_local(self.url):  # as zarr's LocalStore does, without a hop to its event loop thread per call
            for k, b in blobs.items():
                path = os.path.join(self.url, *k.split("/"))
                if b is None:
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(path)
                    continue
                os.makedirs(os.path.dirname(path), exist_ok=True)
                part = f"{path}.{uuid.uuid4().hex}{self.PARTIAL}"
                try:
                    with open(part, "wb") as f:
                        f.write(b)
                    os.replace(part, path)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.remove(part)
                    raise
            return
        import asyncio

        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        store = self.group.store_path.store
        proto = default_buffer_prototype()

        async def put_all():
            await asyncio.gather(*(store.set(k, proto.buffer.from_bytes(b)) if b is not None else store.delete(k)
                                   for k, b in blobs.items()))

        if blobs:
            sync(put_all())

    def proof_array(self):
        """``tiles/proof``, created on the first write into a format-1 store (which has none)."""
        try:
            return self.array(PROOF_PATH)
        except KeyError:
            self._writable()
            a = self._arrays[PROOF_PATH] = self._create_proofs(self.group, tuple(self.grid.shape))
            return a

    def mark(self, idx: TileIndex, state: TileState, error: str | None = None) -> None:
        """Record a tile's state — call only after its pixels are written (``write_tile``)."""
        self.mark_many([(idx, state, error)])

    def mark_many(self, marks) -> None:
        """Record the states of tiles ``marks`` (``(index, state, error or None)``), all at once (one concurrent
        round of 1-byte state chunks where the state array is laid out as this store makes it) — call only after
        their pixels are written (``write_tiles``). A FAILED tile's reason is recorded first."""
        self._writable()
        marks = [((int(i[0]), int(i[1])), TileState(s), e) for i, s, e in marks]
        errs = None
        for (iy, ix), state, error in marks:
            if state == TileState.FAILED:
                errs = errs if errs is not None else self.array("tile_errors")
                _put_group(errs, f"t{iy}_{ix}", {"tile": [iy, ix], "error": str(error)[:4000],
                                                 "time": _dt.datetime.now(_dt.timezone.utc).isoformat()})
        # a later success leaves the record: it is read only while the tile's state is FAILED (``errors()``), and
        # deleting it could remove the files of another run recording the same tile's failure at that moment
        arr = self.array(self.status_path)
        if raw_layout(arr, (1, 1), np.uint8):
            self.put_raw({self._data_key(self.status_path, idx): bytes([int(state)]) for idx, state, _ in marks})
            return
        for (iy, ix), state, _ in marks:
            arr[iy, ix] = int(state)

    def record_plan(self, plan) -> None:
        """Record ``plan`` once: a plan already recorded is not written again (re-running a finished map writes
        nothing, so it works on a read-only copy)."""
        self._writable()
        plans = self.array("plans")
        if plan.token not in plans:
            _put_group(plans, plan.token, plan.to_json())

    # -- reading state -----------------------------------------------------------------------------------------
    def states(self) -> np.ndarray:
        """Tile states as a uint8 array over the tile grid (0 = pending); see ``scan_states``."""
        return self.scan_states().states

    def scan_states(self) -> "StateScan":
        """Every tile's state, read in bulk, and the tiles whose state cannot be trusted, read as pending.

        Reads the raw 1-byte state chunks in bulk (``os.scandir`` + plain reads locally; fsspec ``find`` + concurrent
        ``cat`` remotely), ~30x faster than one zarr codec-pipeline read per chunk (50k states: about a second);
        falls back to zarr reads whenever the array is not laid out as this store writes it (1x1 chunks, the bare
        ``bytes`` codec, "/"-separated default chunk keys). A state chunk that is not one valid state byte (empty,
        truncated, random) is *unreadable*: that tile reads as pending, so a run recomputes it (never does one tile
        make the store unusable). In a format-2 store a finished tile always has a ``classification`` chunk: one
        listing of that array finds the finished tiles whose data are *missing*, also read as pending.
        """
        arr = self.array(self.status_path)
        if raw_layout(arr, (1, 1), np.uint8):
            out = np.zeros(arr.shape, np.uint8)
            unreadable = []
            for key, b in self.read_chunks(self.status_path).items():
                if len(b) == 1 and _VALID_STATE[b[0]]:
                    out[key] = b[0]
                else:
                    unreadable.append(key)
        else:
            out, unreadable = self._states_via_zarr()
        missing = np.zeros((0, 2), np.int64)
        if self.version >= 2:
            lost = is_finished(out) & ~self.chunk_mask("classification")
            if lost.any():
                missing = np.argwhere(lost)
                out[lost] = TileState.PENDING
        return StateScan(out, np.array(sorted(unreadable), np.int64).reshape(-1, 2), missing)

    def _states_via_zarr(self) -> tuple[np.ndarray, list]:
        """States through zarr (one codec-pipeline read per tile with a state: the sure, slow path), and the tiles
        whose state is unreadable."""
        arr = self.array(self.status_path)
        out = np.zeros(arr.shape, np.uint8)
        keys = self.status_keys()
        if not keys:
            return out, []
        iy, ix = np.array(keys, dtype=np.int64).T
        vals, bad = self._read_status_values(iy, ix)
        out[iy, ix] = vals
        return out, [(int(y), int(x)) for y, x in zip(iy[bad], ix[bad])]

    def _read_status_values(self, iy: np.ndarray, ix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The state bytes of tiles ``(iy, ix)`` through zarr, and which could not be read (those read 0)."""
        arr = self.array(self.status_path)
        try:
            vals = np.asarray(arr.vindex[iy, ix], np.uint8)
        except Exception:  # one damaged chunk fails the whole read: read tile by tile
            vals = np.zeros(len(iy), np.uint8)
            failed = np.zeros(len(iy), bool)
            for k, (y, x) in enumerate(zip(iy.tolist(), ix.tolist())):
                try:
                    vals[k] = arr[y, x]
                except Exception:
                    failed[k] = True
            bad = failed | ~_VALID_STATE[vals]
            return np.where(bad, np.uint8(0), vals).astype(np.uint8), bad
        bad = ~_VALID_STATE[vals]
        return np.where(bad, np.uint8(0), vals).astype(np.uint8), bad

    def read_states(self, iy, ix) -> np.ndarray:
        """The states (uint8) of the tiles ``(iy[k], ix[k])``: one read per tile, for a few selected tiles
        (``states()`` reads them all in bulk). Untrustworthy states read as pending, as in ``scan_states``."""
        iy, ix = np.asarray(iy, np.int64).ravel(), np.asarray(ix, np.int64).ravel()
        if not len(iy):
            return np.zeros(0, np.uint8)
        vals, _ = self._read_status_values(iy, ix)
        if self.version >= 2:
            fin = np.flatnonzero(is_finished(vals))
            if len(fin) > self.DIRECT_CHECKS:
                have = self.chunk_mask("classification")[iy[fin], ix[fin]]
            else:
                have = np.array([self.chunk_exists("classification", (iy[k], ix[k])) for k in fin], bool)
            vals[fin[~have]] = TileState.PENDING
        return vals

    #: above this many tiles, ``read_states`` lists a data array's chunks instead of asking for each
    DIRECT_CHECKS = 64

    def status_keys(self) -> list[tuple[int, int]]:
        """``(iy, ix)`` of every tile with a recorded state (one listing of the state chunks; a tile
        without one is pending)."""
        from zarr.core.sync import sync

        store = self.group.store_path.store
        prefix = self.array(self.status_path).path + "/c/"

        async def _list():
            return [k async for k in store.list_prefix(prefix)]

        keys = (_chunk_key(k[len(prefix):]) for k in sync(_list()))
        return [k for k in keys if k is not None]

    # -- raw chunks (what proves a finished tile's data are there) ----------------------------------------------
    def _chunk_files(self, path: str, sizes: bool):
        """``(tile, file, size or None)`` of every stored chunk of the member ``path`` (``tile``: its first two
        chunk coordinates): ``os.scandir`` locally, one fsspec ``find`` remotely. Orphaned ``*.partial`` files of
        interrupted writes are not chunks."""
        ndim = len(self.array(path).shape)
        if urls.is_local(self.url):
            def walk(d, depth, key):
                try:
                    it = os.scandir(d)
                except (FileNotFoundError, NotADirectoryError):
                    return
                with it:
                    for e in it:
                        if not e.name.isdigit():
                            continue
                        k = (*key, int(e.name))
                        if depth > 1:
                            yield from walk(e.path, depth - 1, k)
                            continue
                        try:
                            size = e.stat().st_size if sizes else None
                        except FileNotFoundError:  # deleted since the listing
                            continue
                        yield k[:2], e.path, size

            yield from walk(os.path.join(self.url, *path.split("/"), "c"), ndim, ())
            return
        import fsspec

        fs, root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        prefix = f"{root.rstrip('/')}/{path}/c/"
        try:
            found = fs.find(prefix, detail=True)
        except FileNotFoundError:
            return
        for p, info in found.items():
            key = _chunk_key(p[len(prefix):], ndim)
            if key is not None:
                yield key, p, info.get("size")

    def chunk_mask(self, path: str) -> np.ndarray:
        """Which tiles have a stored chunk of the member ``path`` (bool over the tile grid; one listing)."""
        out = np.zeros(tuple(self.grid.shape), bool)
        keys = [k for k, _, _ in self._chunk_files(path, sizes=False)]
        if keys:
            iy, ix = np.array(keys, np.int64).T
            ok = (iy < out.shape[0]) & (ix < out.shape[1])
            out[iy[ok], ix[ok]] = True
        return out

    def chunk_sizes(self, path: str) -> dict[tuple[int, int], int]:
        """``{tile: stored size in bytes}`` of every chunk of the member ``path`` (one listing with sizes)."""
        return {k: int(size) for k, _, size in self._chunk_files(path, sizes=True)}

    def read_chunks(self, path: str, tiles=None) -> dict[tuple[int, int], bytes]:
        """``{tile: stored bytes}`` of the chunks of the member ``path`` (all of them, or those of ``tiles``),
        read in bulk as stored (still encoded): small chunks only (the states, the proofs)."""
        return {k: b for k, b in self._chunk_contents(path, tiles, batch=None)}

    def chunk_digests(self, path: str, tiles=None) -> dict[tuple[int, int], tuple[int, int]]:
        """``{tile: (size, CRC32C)}`` of the stored chunks of the member ``path`` (all, or those of ``tiles``),
        each read and hashed in turn (memory stays one batch of chunks)."""
        return {k: tuple(chunk_proof(b)) for k, b in self._chunk_contents(path, tiles)}

    def _chunk_contents(self, path: str, tiles=None, batch: int | None = 64):
        """``(tile, stored bytes)`` of the stored chunks of ``path`` (all, or those of ``tiles``), one listing, then
        plain reads locally or concurrent fsspec ``cat`` of ``batch`` chunks at a time remotely (None: all)."""
        files = [(k, f) for k, f, _ in self._chunk_files(path, sizes=False)]
        if tiles is not None:
            want = set(map(tuple, tiles))
            files = [(k, f) for k, f in files if k in want]
        if urls.is_local(self.url):
            for k, f in files:
                try:
                    with open(f, "rb") as fh:
                        b = fh.read()
                except FileNotFoundError:  # deleted since the listing
                    continue
                yield k, b
            return
        import fsspec

        fs, _ = fsspec.core.url_to_fs(self.url, **self.storage_options)
        batch = batch or max(1, len(files))
        for i in range(0, len(files), batch):
            part = files[i:i + batch]
            blobs = fs.cat([f for _, f in part], on_error="omit")
            yield from ((k, blobs[f]) for k, f in part if f in blobs)

    def _data_key(self, name: str, tile) -> str:
        arr = self.array(name)
        return chunk_key(arr, (tile[0], tile[1], *([0] * (len(arr.shape) - 2))))

    def chunk_bytes(self, name: str, tile) -> bytes | None:
        """The stored (encoded) bytes of tile ``tile``'s chunk of the member ``name``; None when there is none."""
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        buf = sync(self.group.store_path.store.get(self._data_key(name, tile), prototype=default_buffer_prototype()))
        return None if buf is None else buf.to_bytes()

    def chunk_exists(self, name: str, tile) -> bool:
        from zarr.core.sync import sync

        return bool(sync(self.group.store_path.store.exists(self._data_key(name, tile))))

    def delete_chunk(self, name: str, tile) -> None:
        """Remove tile ``tile``'s chunk of the member ``name`` (it then reads as the fill value)."""
        from zarr.core.sync import sync

        self._writable()
        sync(self.group.store_path.store.delete(self._data_key(name, tile)))

    def proofs(self) -> dict[tuple[int, int], np.ndarray | None]:
        """``{tile: proof}`` of every tile with a recorded proof (``PROOF_FIELDS`` as uint64; None where the
        proof chunk itself is damaged). Empty for a format-1 store whose tiles were all written before proofs."""
        try:
            self.array(PROOF_PATH)
        except KeyError:
            return {}
        n = len(PROOF_FIELDS)
        out = {}
        for k, b in self.read_chunks(PROOF_PATH).items():
            p = np.frombuffer(b, "<u8") if len(b) == 8 * n else None
            out[k] = p if p is not None and p[0] == 1 else None
        return out

    def plans(self) -> list:
        from reefmap.planning.plan import Plan

        return [Plan.from_json(dict(grp.attrs)) for _, grp in self.group["plans"].groups()]

    def planned(self) -> np.ndarray:
        """Union of every recorded plan's selection (bool over the tile grid)."""
        sel = np.zeros(tuple(self.grid.shape), bool)
        for p in self.plans():
            sel |= p.selection
        return sel

    def errors(self) -> dict[tuple[int, int], str]:
        """``{(iy, ix): reason}`` of the tiles whose state is FAILED now."""
        failed = self.states() == TileState.FAILED
        out = {}
        for _, grp in self.array("tile_errors").groups():
            iy, ix = grp.attrs["tile"]
            if failed[iy, ix]:
                out[(iy, ix)] = grp.attrs["error"]
        return out


def store_symlinks(root: str) -> list[str]:
    """The symlinks in the local store folder ``root``, found without following any: every entry of its group and
    array folders and of each array's ``c/`` folder, not the chunk files below ``c/<row>/`` (a chunk is written as a
    new file renamed over the old one, which replaces a link rather than writing through it)."""
    found, todo = [], [root]
    while todo:
        folder = todo.pop()
        with os.scandir(folder) as entries:
            for e in entries:
                if e.is_symlink():
                    found.append(e.path)
                elif e.is_dir(follow_symlinks=False) and os.path.basename(folder) != "c":
                    todo.append(e.path)
    return sorted(found)


def _source_difference(known: list[dict], new: dict) -> str:
    """How the input ``new`` (a ``source_identity`` record) differs from those a store was made from (``known``)."""
    def where(s):
        locs = s.get("locations") or []
        shown = ", ".join(locs[:3]) + (f" (+{len(locs) - 3} more)" if len(locs) > 3 else "")
        return f"{s.get('kind')} {shown or '(no location)'}"

    same_place = [k for k in known if k.get("kind") == new.get("kind") and k.get("locations") == new.get("locations")]
    if same_place:
        return (f"this run reads {where(new)}, which the store also read, but the data there changed (metadata "
                f"fingerprint {same_place[-1].get('fingerprint')} when the map was made, {new.get('fingerprint')} now)")
    return f"the store has {'; '.join(where(k) for k in known)}, this run reads {where(new)}"


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) < 120 else s[:117] + "..."


def _differences(key: str, got: Any, want: Any) -> list[str]:
    """``"key: store has X, this run has Y"`` for each differing leaf of two (nested) mappings, so that the message
    shows the difference itself (``grid.tile: store has 256, this run has 512``), not a cut-off repr."""
    if isinstance(got, dict) and isinstance(want, dict):
        return [d for k in sorted(set(got) | set(want), key=str) if got.get(k) != want.get(k)
                for d in _differences(f"{key}.{k}", got.get(k), want.get(k))]
    return [f"{key}: store has {_short(got)}, this run has {_short(want)}"]


def _chunk_key(rel: str, ndim: int = 2) -> tuple[int, int] | None:
    """``"iy/ix"`` (a chunk key below ``c/``; ``"iy/ix/0"`` for ``ndim`` 3) → ``(iy, ix)``; None for anything
    else (orphaned ``*.partial`` files)."""
    parts = rel.split("/")
    if len(parts) == ndim and all(p.isdigit() for p in parts):
        return int(parts[0]), int(parts[1])
    return None


def chunk_proof(b: bytes | None) -> list[int]:
    """``[size, CRC32C]`` of a stored chunk's bytes; ``[0, 0]`` for no chunk."""
    if b is None:
        return [0, 0]
    import google_crc32c

    return [len(b), google_crc32c.value(b)]


_VALID_STATE = np.zeros(256, bool)
_VALID_STATE[STATE_CODES] = True


@dataclass(frozen=True)
class StateScan:
    """``MapStore.scan_states``: the states (untrustworthy ones read as pending), the tiles whose state chunk is
    unreadable, and (format 2) the finished tiles whose data chunks are missing; both as ``(n, 2)`` tile indices."""

    states: np.ndarray
    unreadable: np.ndarray
    missing: np.ndarray


def _put_group(parent, key: str, attributes: dict) -> None:
    """Create the group ``parent/key`` with ``attributes``, or replace the attributes of the one there.

    Never deletes (``create_group(overwrite=True)`` removes the directory first): two runs on one store that
    record the same plan or the same failure at once would otherwise remove each other's files mid-write.
    """
    from zarr.errors import ContainsArrayError, ContainsGroupError

    try:
        parent.create_group(key, attributes=attributes)
    except (ContainsGroupError, ContainsArrayError):
        parent[key].attrs.put(attributes)
