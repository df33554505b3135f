"""The map format: every encoding, fill value and tile state of a reefmap map, in one place.

Imports neither zarr nor numba: planning, status and the numba kernels all read their constants from here.

- ``reef_probability`` uint8: p = value / PROB_SCALE, PROB_NODATA = nodata (CF ``scale_factor``/``_FillValue``;
  also its Zarr fill value: a pixel with no probability, nodata or unfinished, reads as NaN);
- ``classification`` uint8: the model's class codes, CLASS_NODATA = nodata, UNFINISHED = not computed yet: its
  Zarr fill value (format 2; format 1 filled with CLASS_NODATA), so a plain Zarr/xarray/GDAL reader sees a
  pending tile as "unfinished", never as nodata or "no reef";
- in query results and exports, UNFINISHED marks a pixel whose tile is not finished (pending or failed), and
  OUTSIDE a ``tile_state`` pixel outside the query geometry;
- ``tiles/status`` (format 1: root ``tile_status``) uint8 per tile: a ``TileState``;
- ``tiles/proof`` uint64 per tile, PROOF_FIELDS: what proves a finished tile's data chunks are there (their
  stored sizes and CRC32C; size 0 = no chunk expected), written after the chunks and before the state;
- root attribute ``reefmap`` (META_ATTR): provenance as a JSON string (format 1: a nested dict), so the root's
  attributes stay flat for NetCDF writers.
"""

from __future__ import annotations

import json
from enum import IntEnum

import numpy as np

from reefmap.classes import DEMO_SCHEME, ClassScheme

STORE_FORMAT = "reefmap-map/2"
#: the format versions this code reads (and resumes)
READABLE_FORMATS = (1, 2)
DATA_VARS = ("reef_probability", "classification")
META_ATTR = "reefmap"
#: per-tile members (a group beside the pixel arrays, so every root array is on the pixel grid)
TILES_GROUP = "tiles"
STATUS_PATH = {1: "tile_status", 2: "tiles/status"}
PROOF_PATH = "tiles/proof"
#: one tile's proof: recorded (1), then per data layer (DATA_VARS order) the stored chunk's size and CRC32C
PROOF_FIELDS = ("recorded", "reef_probability_size", "reef_probability_crc32c", "classification_size",
                "classification_crc32c")

#: the zstd level of the data layers' chunks in new maps: zstd's fast mode (about 3x faster to write than its default
#: level 3 for a map's tiles, 10-15% larger chunks; reading is as fast). Maps keep the level they were made with.
DATA_ZSTD_LEVEL = -1

#: reef_probability is stored as uint8: value = round(p * PROB_SCALE); PROB_NODATA marks nodata
PROB_SCALE = 250
PROB_NODATA = 255
CLASS_NODATA = 0
#: classification (and uint8 probability exports): the pixel's tile is unfinished (pending or failed)
UNFINISHED = 254
#: the Zarr fill value (what a never-written chunk reads as) of each layer, per format version
FILL_VALUES = {1: {"reef_probability": PROB_NODATA, "classification": CLASS_NODATA},
               2: {"reef_probability": PROB_NODATA, "classification": UNFINISHED}}
#: tile_state of a query: the pixel lies outside the query polygon
OUTSIDE = 255
#: the class codes the map reserves (a bundle's classes may not use them)
RESERVED_CODES = {CLASS_NODATA: "nodata", UNFINISHED: "unfinished", OUTSIDE: "outside"}
#: colours (rrggbb) of the reserved codes in colour tables: nodata black, unfinished the pictures' grey
RESERVED_COLORS = {CLASS_NODATA: "000000", UNFINISHED: "5a5a5a"}
#: the ``classification`` attribute holding the map's class scheme as JSON (names as given, reef classes)
SCHEME_ATTR = "class_scheme"
#: the provenance key (root ``reefmap`` attribute) of the map's class scheme
SCHEME_KEY = "classes"


class TileState(IntEnum):
    PENDING = 0
    DONE = 1
    SKIPPED_NODATA = 2
    SKIPPED_LAND = 3
    SKIPPED_DEEP_WATER = 4
    FAILED = 9


#: the tile state of a tile the empty-tile screen finds all of one class, by the class's name (``class_key``)
SCREEN_STATES = {"deep_water": TileState.SKIPPED_DEEP_WATER, "land": TileState.SKIPPED_LAND}
SKIPPED_STATES = (TileState.SKIPPED_NODATA, TileState.SKIPPED_LAND, TileState.SKIPPED_DEEP_WATER)
FINISHED_STATES = (TileState.DONE, *SKIPPED_STATES)
FINISHED_CODES = np.array([int(s) for s in FINISHED_STATES], np.uint8)
#: every valid state byte: anything else in a state chunk is unreadable (read as pending)
STATE_CODES = np.array([int(s) for s in TileState], np.uint8)


def format_version(meta: dict) -> int:
    """The version number of a map's ``format`` ("reefmap-map/2" → 2)."""
    name, _, ver = str(meta.get("format", "")).partition("/")
    return int(ver) if name == STORE_FORMAT.split("/")[0] and ver.isdigit() else 0


def decode_meta(value) -> dict | None:
    """The root ``reefmap`` attribute as a dict: a JSON string (format 2) or a dict (format 1); None otherwise."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return dict(value) if isinstance(value, dict) else None


def encode_meta(meta: dict) -> str:
    return json.dumps(meta, sort_keys=True)


def classification_attrs(scheme: ClassScheme) -> dict:
    """The CF attributes of a ``classification`` layer in ``scheme``: ``flag_values``/``flag_meanings`` (nodata,
    the classes, unfinished), ``flag_colors`` (``#rrggbb`` per flag value) and the scheme itself as JSON
    (``SCHEME_ATTR``: the class names as given, which flag words cannot hold, and the reef classes)."""
    colors = [RESERVED_COLORS[CLASS_NODATA], *scheme.colors, RESERVED_COLORS[UNFINISHED]]
    return {"flag_values": [CLASS_NODATA, *scheme.codes, UNFINISHED],
            "flag_meanings": " ".join(["nodata", *scheme.flag_words, "unfinished"]),
            "flag_colors": " ".join(f"#{c}" for c in colors), SCHEME_ATTR: json.dumps(scheme.to_json())}


def scheme_of_attrs(attrs) -> ClassScheme:
    """The class scheme of a ``classification`` layer's attributes; ``DEMO_SCHEME`` when none is recorded (maps and
    layers written before schemes were)."""
    value = attrs.get(SCHEME_ATTR)
    return DEMO_SCHEME if value is None else ClassScheme.from_json(json.loads(value))


def scheme_of_meta(meta: dict) -> ClassScheme:
    """The class scheme a map's provenance (root ``reefmap`` attribute) records; ``DEMO_SCHEME`` for maps written
    before schemes were recorded."""
    value = meta.get(SCHEME_KEY)
    return DEMO_SCHEME if value is None else ClassScheme.from_json(value)


def is_finished(states):
    """Elementwise: is each tile state finished (done or skipped)? Works on numpy and dask arrays and scalars."""
    if isinstance(states, (int, np.integer, TileState)):
        return int(states) in FINISHED_CODES
    if hasattr(states, "isin"):  # xarray
        return states.isin(FINISHED_CODES)
    if type(states).__module__.startswith("dask"):
        import dask.array as da

        return da.isin(states, FINISHED_CODES)
    return np.isin(states, FINISHED_CODES)


def is_skipped(states):
    """Elementwise: is each tile state one of the skipped states?"""
    return np.isin(states, np.array([int(s) for s in SKIPPED_STATES], np.uint8))


def has_tile_states(members: set) -> bool:
    """Do a map's root ``members`` hold its tile states (``tiles/status``, or a format-1 map's ``tile_status``)?"""
    return bool(members & {TILES_GROUP, STATUS_PATH[1]})
