"""The tile plan: which tiles of the output grid a run computes, and what each reads and writes.

A ``Plan`` is pure data (JSON round-trip, deterministic token): a ``TileGrid`` (tiles = output Zarr chunks),
the halo, and a boolean selection over the tile grid. Each ``TileTask`` names the window it writes and the
halo'd window it reads (clamped at the mosaic's edges like ``map_overlap(boundary="none")``; edge tiles are
smaller, never dropped). Nothing here touches pixels or imports torch.
"""

from __future__ import annotations

import base64
import hashlib
import json
import zlib
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterator

import numpy as np

from reefmap.errors import InvalidParameter
from reefmap.geometry.grid import BBox, GeoBox, TileGrid, TileIndex, Window


@dataclass(frozen=True)
class TileTask:
    """One unit of work: tile ``index`` writes ``write`` and reads ``read`` (both in mosaic pixels)."""

    index: TileIndex
    write: Window
    read: Window

    @property
    def core(self) -> Window:
        """The written window in the coordinates of the read block (what to keep after predicting)."""
        return self.write.relative_to(self.read)


@dataclass(frozen=True, eq=False)
class Plan:
    grid: TileGrid
    halo: int
    selection: np.ndarray  # bool (tile rows, tile cols)

    def __post_init__(self):
        sel = np.ascontiguousarray(self.selection, dtype=bool)
        if sel.shape != tuple(self.grid.shape):
            raise InvalidParameter(f"plan selection of shape {sel.shape} does not match tile grid {tuple(self.grid.shape)}")
        sel.setflags(write=False)
        object.__setattr__(self, "selection", sel)
        if self.halo < 0:
            raise InvalidParameter(f"halo {self.halo} must be >= 0")

    def __eq__(self, other):
        return isinstance(other, Plan) and self.token == other.token

    def __hash__(self):
        return hash(self.token)

    @property
    def count(self) -> int:
        return int(self.selection.sum())

    def tiles(self) -> np.ndarray:
        """Selected tile indices as an ``(n, 2)`` int array of ``(iy, ix)``, in row-major order."""
        return np.argwhere(self.selection)

    def task(self, idx: TileIndex | tuple[int, int]) -> TileTask:
        idx = TileIndex(int(idx[0]), int(idx[1]))
        return TileTask(idx, self.grid.window(idx), self.grid.read_window(idx, self.halo))

    def tasks(self, selection: np.ndarray | None = None) -> Iterator[TileTask]:
        sel = self.selection if selection is None else (self.selection & selection)
        for iy, ix in np.argwhere(sel):
            yield self.task((iy, ix))

    def remaining(self, finished: np.ndarray) -> np.ndarray:
        """Selection of the planned tiles not in ``finished`` (a bool tile mask)."""
        return self.selection & ~np.asarray(finished, dtype=bool)

    # -- serialisation ----------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        packed = zlib.compress(np.packbits(self.selection, axis=None).tobytes(), 9)
        return {"grid": self.grid.to_json(), "halo": self.halo, "count": self.count,
                "selection": base64.b64encode(packed).decode("ascii")}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Plan":
        grid = TileGrid.from_json(d["grid"])
        n = grid.count
        bits = np.frombuffer(zlib.decompress(base64.b64decode(d["selection"])), np.uint8)
        sel = np.unpackbits(bits, count=n).astype(bool).reshape(tuple(grid.shape))
        return cls(grid, int(d["halo"]), sel)

    @cached_property
    def token(self) -> str:
        """Content hash of the plan (computed once: a plan, selection included, is never modified)."""
        d = self.to_json()
        return hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:24]

    def __dask_tokenize__(self):
        return ("Plan", self.token)

    def __repr__(self) -> str:
        return (f"<Plan {self.count} of {self.grid.count} tiles of {self.grid.tile} px, halo {self.halo}, "
                f"grid {tuple(self.grid.geobox.shape)} {self.grid.geobox.crs}>")


def plan_tiles(geobox: GeoBox, tile: int = 1024, halo: int = 32, *, bbox: BBox | str | None = None,
               bbox_crs: Any = "EPSG:4326", size_multiple: int = 1, mask: np.ndarray | None = None) -> Plan:
    """Plan the tiles of ``geobox`` (optionally only those touching ``bbox``, and/or a tile mask).

    ``tile`` and ``halo`` must be multiples of ``size_multiple`` (the model's pooling factor), so that every
    read window starts on the model's pooling lattice and the result does not depend on the tiling.
    """
    for name, v in (("tile", tile), ("halo", halo)):
        if int(v) != v or v < 0 or (name == "tile" and v == 0):
            raise InvalidParameter(f"{name} {v!r} must be a positive whole number of pixels")
        if size_multiple > 1 and v % size_multiple:
            up = -(-int(v) // size_multiple) * size_multiple
            raise InvalidParameter(
                f"{name} {v} is not a multiple of {size_multiple} (the model pools {size_multiple}x); "
                f"use {name} {up}"
            )
    grid = TileGrid(geobox, int(tile))
    sel = np.ones(tuple(grid.shape), bool) if bbox is None else grid.tiles_touching(bbox, bbox_crs, what="the mosaic")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != sel.shape:
            raise InvalidParameter(f"tile mask of shape {mask.shape} does not match the tile grid {tuple(sel.shape)}")
        sel &= mask
    return Plan(grid, int(halo), sel)


def cache_order(tiles: np.ndarray, *, band: int = 0, parts: int = 1) -> list[np.ndarray]:
    """``tiles`` (``(n, 2)`` of ``(iy, ix)``) in ``parts`` lists (one per worker), ordered so that a per-worker
    cache of source chunks decodes each chunk about once.

    A tile's halo'd window also reads its neighbours' chunks. Each part is a strip of whole tile rows (about equal
    tile counts; a worker's neighbours are its own tiles), walked in column bands of ``band`` tiles (0: the whole
    width) and, within a band, row after row: the chunks of the row above are still cached when the next row reads
    them if the cache holds about three rows of the band. Each chunk is then decoded once, except the rows at a
    strip's edges and the columns at a band's edges (read by both sides)."""
    tiles = np.asarray(tiles).reshape(-1, 2)
    if not len(tiles):
        return [tiles]
    rows = np.unique(tiles[:, 0])
    per_row = np.array([np.count_nonzero(tiles[:, 0] == r) for r in rows])
    parts = max(1, min(int(parts), len(rows)))
    strip_of_row = np.minimum((np.cumsum(per_row) - per_row) * parts // len(tiles), parts - 1)
    strip = strip_of_row[np.searchsorted(rows, tiles[:, 0])]
    col_band = tiles[:, 1] // band if band > 0 else np.zeros(len(tiles), int)
    order = np.lexsort((tiles[:, 1], tiles[:, 0], col_band, strip))
    return [tiles[order][strip[order] == p] for p in range(parts)]
