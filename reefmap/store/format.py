"""The map format: every encoding, fill value and tile state of a reefmap map, in one place.

Imports neither zarr nor numba: planning, status and the numba kernels all read their constants from here.

- ``reef_probability`` uint8: p = value / PROB_SCALE, PROB_NODATA = nodata (CF ``scale_factor``/``_FillValue``);
- ``classification`` uint8: the model's class codes, CLASS_NODATA = nodata;
- in query results and exports, UNFINISHED marks a pixel whose tile is not finished (pending or failed), and
  OUTSIDE a ``tile_state`` pixel outside the query geometry;
- ``tile_status`` uint8 per tile: a ``TileState``.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

STORE_FORMAT = "reefmap-map/1"
DATA_VARS = ("reef_probability", "classification")

#: reef_probability is stored as uint8: value = round(p * PROB_SCALE); PROB_NODATA marks nodata
PROB_SCALE = 250
PROB_NODATA = 255
CLASS_NODATA = 0
#: classification (and uint8 probability exports): the pixel's tile is unfinished (pending or failed)
UNFINISHED = 254
#: tile_state of a query: the pixel lies outside the query polygon
OUTSIDE = 255


class TileState(IntEnum):
    PENDING = 0
    DONE = 1
    SKIPPED_NODATA = 2
    SKIPPED_LAND = 3
    SKIPPED_DEEP_WATER = 4
    FAILED = 9


SKIPPED_STATES = (TileState.SKIPPED_NODATA, TileState.SKIPPED_LAND, TileState.SKIPPED_DEEP_WATER)
FINISHED_STATES = (TileState.DONE, *SKIPPED_STATES)
FINISHED_CODES = np.array([int(s) for s in FINISHED_STATES], np.uint8)


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
