"""numba kernels for the per-pixel work around the model: normalisation with a nodata mask, the cheap
empty-tile screen, and encoding class probabilities into the stored layers.

All take and return plain numpy arrays in (band, y, x) / (y, x) order, run in parallel over rows, and are
compiled once and cached on disk (``cache=True``).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from reefmap.store.format import CLASS_NODATA, PROB_NODATA


@njit(cache=True, inline="always")
def _valid_at(block, r, c, nodata, has_nodata, lo, hi):
    """The one validity rule: not every band == nodata, no band NaN, every other band within [lo, hi]."""
    nb = block.shape[0]
    n_nodata = 0
    for b in range(nb):
        v = np.float64(block[b, r, c])
        if v != v:  # NaN
            return False
        if has_nodata and v == nodata:
            n_nodata += 1
        elif v < lo or v > hi:
            return False
    return not (has_nodata and n_nodata == nb)


def nodata_args(nodata):
    """``nodata`` as the kernels take it: ``(value, has_nodata)``; None and NaN mean "no nodata value"."""
    has = nodata is not None and not (isinstance(nodata, float) and np.isnan(nodata))
    return (float(nodata) if has else 0.0), has


@njit(parallel=True, cache=True)
def _normalize(block, scaling, nodata, has_nodata, lo, hi, out, valid):
    nb, ny, nx = block.shape
    for r in prange(ny):
        for c in range(nx):
            if _valid_at(block, r, c, nodata, has_nodata, lo, hi):
                valid[r, c] = 1
                for b in range(nb):
                    v = (np.float64(block[b, r, c]) - scaling[b, 0]) / scaling[b, 1]
                    out[b, r, c] = np.float32(min(max(v, scaling[b, 2]), scaling[b, 3]))
            else:
                valid[r, c] = 0
                for b in range(nb):
                    out[b, r, c] = np.float32(0.0)


def normalize(block: np.ndarray, scaling, nodata=None, valid_range=(0.0, 255.0)):
    """uint8/any ``(band, y, x)`` → ``(float32 (band, y, x), uint8 valid (y, x))``.

    ``scaling``: one row ``(a, b, lo, hi)`` per band (``BundleMeta.kernel_scaling()``): the value is
    ``clip((x - a) / b, lo, hi)``. A pixel is invalid when every band equals ``nodata``, any band is NaN, or any
    band lies outside ``valid_range``; invalid pixels are 0 in the normalised output.
    """
    nb = block.shape[0]
    scaling = np.ascontiguousarray(scaling, dtype=np.float64).reshape(nb, 4)
    out = np.empty(block.shape, np.float32)
    valid = np.empty(block.shape[1:], np.uint8)
    _normalize(block, scaling, *nodata_args(nodata), float(valid_range[0]), float(valid_range[1]), out, valid)
    return out, valid


@njit(parallel=True, cache=True)
def _screen_counts(block, nodata, has_nodata, lo, hi, boxes):
    # boxes: (K, nb, 2) per-class colour boxes; counts[k] = valid pixels inside box k, counts[K] = valid pixels
    nk = boxes.shape[0]
    nb, ny, nx = block.shape
    rows = np.zeros((ny, nk + 1), np.int64)
    for r in prange(ny):
        for c in range(nx):
            if not _valid_at(block, r, c, nodata, has_nodata, lo, hi):
                continue
            rows[r, nk] += 1
            for k in range(nk):
                inside = True
                for b in range(nb):
                    v = np.float64(block[b, r, c])
                    if v < boxes[k, b, 0] or v > boxes[k, b, 1]:
                        inside = False
                        break
                if inside:
                    rows[r, k] += 1
    return rows.sum(axis=0)


def screen_counts(block: np.ndarray, boxes: np.ndarray, nodata=None, valid_range=(0.0, 255.0)) -> np.ndarray:
    """How many valid pixels of a raw ``(band, y, x)`` block fall in each class's colour box
    (``counts[k]``), and how many are valid at all (``counts[-1]``). Validity as in ``normalize``."""
    return _screen_counts(block, *nodata_args(nodata), float(valid_range[0]), float(valid_range[1]), np.ascontiguousarray(boxes, dtype=np.float64).reshape(-1, block.shape[0], 2))


@njit(parallel=True, cache=True)
def _encode(probs, valid, reef_channels, codes, prob_out, cls_out):
    nk, ny, nx = probs.shape
    for r in prange(ny):
        for c in range(nx):
            if valid[r, c] == 0:
                prob_out[r, c] = 255
                cls_out[r, c] = 0
                continue
            best = 0
            bv = probs[0, r, c]
            for k in range(1, nk):
                if probs[k, r, c] > bv:
                    bv = probs[k, r, c]
                    best = k
            cls_out[r, c] = codes[best]
            p = np.float32(0.0)
            for k in reef_channels:
                p += probs[k, r, c]
            if p < 0.0:
                p = 0.0
            elif p > 1.0:
                p = 1.0
            prob_out[r, c] = np.uint8(np.floor(p * 250.0 + 0.5))


def encode(probs: np.ndarray, valid: np.ndarray, reef_channels, codes):
    """Class probabilities ``(K, y, x)`` → ``(reef_probability uint8, classification uint8)``.

    classification = ``codes[argmax]`` (the map's class code of each output channel), 0 where invalid;
    reef_probability = round(sum of the ``reef_channels``' probabilities * 250), 255 where invalid.
    """
    ny, nx = valid.shape
    prob = np.empty((ny, nx), np.uint8)
    cls = np.empty((ny, nx), np.uint8)
    probs = probs if probs.dtype == np.float32 else probs.astype(np.float32)  # a strided core view is read in place
    _encode(probs, np.ascontiguousarray(valid), np.asarray(reef_channels, np.int64), np.asarray(codes, np.uint8),
            prob, cls)
    return prob, cls


def all_nodata(block: np.ndarray, nodata) -> bool:
    """No pixel of ``block`` is valid because every value is ``nodata`` (or NaN): one vectorised pass, the
    common empty tile. (A block can also be all invalid by range; ``screen_counts`` finds those.)"""
    value, has = nodata_args(nodata)
    if not has:
        return block.dtype.kind == "f" and bool(np.isnan(block).all())
    return not block.any() if value == 0 else bool((block == value).all())


def encode_nodata(shape):
    """The layers of an all-nodata tile (what a map store holds where nothing was written)."""
    return np.full(tuple(shape), PROB_NODATA, np.uint8), np.full(tuple(shape), CLASS_NODATA, np.uint8)


def encode_constant(valid: np.ndarray, code: int):
    """The layers of a skipped tile: class ``code`` and reef probability 0 where valid, nodata elsewhere."""
    v = valid.astype(bool)
    prob = np.where(v, np.uint8(0), np.uint8(PROB_NODATA)).astype(np.uint8)
    cls = np.where(v, np.uint8(code), np.uint8(CLASS_NODATA)).astype(np.uint8)
    return prob, cls


def compile_all() -> None:
    """Compile (or load from numba's on-disk cache) the kernels for uint8 imagery, the common case.

    Called once in the client before a LocalCluster starts, so that its worker processes load the cached
    machine code instead of each compiling it at once on the first tile (tens of seconds on a fresh checkout).
    """
    block = np.zeros((3, 8, 8), np.uint8)
    block[:, :4] = 40
    _, valid = normalize(block, np.tile([0.0, 1.0, -np.inf, np.inf], (3, 1)), 0)
    screen_counts(block, np.zeros((1, 3, 2)), 0)
    probs = np.zeros((5, 8, 8), np.float32)
    encode(probs, valid, (2,), (1, 2, 3, 4, 5))
    encode(probs[:, 1:, 1:], valid[1:, 1:], (2,), (1, 2, 3, 4, 5))  # a tile's core: a strided view
