"""The synthetic world's renderer: RGB and truth of any pixel window, as numba kernels.

How: each field is value noise, a few octaves on the integer lattice of global pixel coordinates, with
lattice values drawn from a 64-bit hash of (seed, field, octave, i, j) and every octave kept at unit
variance, so fields are N(0, 1) and fractions such as ``cloud_cover`` become exact thresholds. Reefs need
the distance to land / deep water, and shadows the cloud beside them: the base layers are rendered on the
window padded by ``HALO`` px, which keeps every pixel independent of the window. The per-pixel work is
numba (``nogil`` kernels run over bands of rows on numba's number of threads).
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from statistics import NormalDist

import numpy as np
from numba import njit

from reefmap.classes import CLOUD, DEEP_WATER, LAND, NODATA, REEF, SHALLOW
from reefmap.errors import InvalidParameter
from reefmap.geometry.grid import Window
from reefmap.synthetic.world import MEASURED, SyntheticWorld, resolve_world

HALO = 8  #: widest reef band / shadow offset, in px: the padding the base classes are rendered with
ATOLL_CELL_LOG2 = 8  #: atolls sit one at most per 256 x 256 px cell, wholly inside it
SHADOW_OFFSET = (2, -6)  #: a cloud's shadow lies this many (rows, cols) away from it (sun in the east)


# -- noise fields: (ky, kx, amplitude) per octave, the lattice spacing being 2**ky rows by 2**kx columns -------
_FIELDS: tuple[tuple[str, tuple[tuple[int, int, float], ...]], ...] = (
    ("bank", ((10, 10, 1.0), (9, 9, 0.5), (8, 8, 0.3), (7, 7, 0.15))),
    ("island", ((7, 7, 1.0), (6, 6, 0.6))),  # + island_detail: the islands and the bank edges
    ("island_detail", ((5, 5, 0.4), (3, 3, 0.2))),
    ("cloud_region", ((10, 10, 1.0), (9, 9, 0.5))),
    ("cloud", ((5, 5, 0.5), (4, 4, 0.7), (3, 3, 1.0), (2, 2, 0.6))),  # cumulus: mostly small
    ("tex_a", ((3, 3, 1.0), (2, 2, 0.7))),
    ("tex_b", ((3, 3, 1.0),)),
    ("seagrass", ((8, 8, 1.0), (6, 6, 0.8), (4, 4, 0.4))),
    ("reef_patch", ((5, 5, 1.0), (4, 4, 0.6), (3, 3, 0.4))),
    ("reef_width", ((6, 6, 1.0), (4, 4, 0.5))),
    ("gap_region", ((9, 9, 1.0),)),  # gaps only in some regions
    ("gap_blob", ((6, 6, 1.0), (4, 4, 0.5))),
    ("gap_streak", ((0, 7, 1.0),)),  # thin row-wise streaks
    ("islet", ((3, 3, 1.0), (2, 2, 0.5))),
)
(_BANK, _ISLAND, _ISLAND_DETAIL, _CLOUD_REGION, _CLOUD, _TEX_A, _TEX_B, _SEAGRASS_F, _REEF_PATCH, _REEF_WIDTH,
 _GAP_REGION, _GAP_BLOB, _GAP_STREAK, _ISLET) = map(np.int64, range(len(_FIELDS)))  # not int: one compiled _row
_DETAIL = math.sqrt((0.4**2 + 0.2**2) / (1.0 + 0.6**2))  # island_detail's share of the island field


def _octave_tables():
    """Per octave: ky, kx, a stable 64-bit id (from the field's name), and interpolation weights by the pixel's
    position inside a lattice cell.

    An octave's value at (r, c) is ny[r mod] * (a[c mod] * left + b[c mod] * right): left/right are the lattice
    values interpolated down the columns (smoothstep weight sy); a/b are the smoothstep weights along the row
    times the octave's amplitude; ny and the factor in a/b keep the octave at unit variance everywhere.
    """
    import hashlib

    octs = [(f, name, i, ky, kx, amp) for f, (name, oo) in enumerate(_FIELDS) for i, (ky, kx, amp) in enumerate(oo)]
    field = np.array([o[0] for o in octs])
    amp = np.array([o[5] for o in octs])
    for f in range(len(_FIELDS)):
        amp[field == f] /= math.sqrt((amp[field == f] ** 2).sum())  # each field has unit variance
    names = [f"{o[1]}/{o[2]}" for o in octs] + ["grain", "atolls"]
    ids = np.array([int.from_bytes(hashlib.blake2b(n.encode(), digest_size=8).digest(), "little") for n in names],
                   np.uint64)  # editing one field leaves the others' values alone

    def smooth(k):  # smoothstep weight of the upper neighbour at each offset in a cell of 2**k, and 1/std
        f = np.arange(1 << k) / (1 << k)
        s = f * f * (3.0 - 2.0 * f)
        return s, 1.0 / np.sqrt((1.0 - s) ** 2 + s**2)

    width = 1 << max(max(o[3], o[4]) for o in octs)
    pa, pb, psy, pny = (np.zeros((len(octs), width), np.float32) for _ in range(4))
    for o, (_, _, _, ky, kx, _) in enumerate(octs):
        s, norm = smooth(kx)
        pa[o, : 1 << kx], pb[o, : 1 << kx] = norm * amp[o] * (1.0 - s), norm * amp[o] * s
        s, norm = smooth(ky)
        psy[o, : 1 << ky], pny[o, : 1 << ky] = s, norm
    start = np.searchsorted(field, np.arange(len(_FIELDS)), side="left").astype(np.int64)
    stop = np.searchsorted(field, np.arange(len(_FIELDS)), side="right").astype(np.int64)
    ky = np.array([o[3] for o in octs], np.int64)
    kx = np.array([o[4] for o in octs], np.int64)
    return ky, kx, start, stop, ids, (pa, pb, psy, pny)


_OCT_KY, _OCT_KX, _FIELD_START, _FIELD_STOP, _KEY_IDS, _WEIGHTS = _octave_tables()

#: lattice values: the standard normal quantile function at 16385 knots, interpolated linearly
_QUANTILES = np.array([NormalDist().inv_cdf((i + 0.5) / 16385) for i in range(16385)])

_ISLAND_WEIGHT = 0.6  # elevation = bank + 0.6 * island (renormalised)
_CLOUD_REGION_WEIGHT = 0.6  # cloud density = 0.6 * regional cover + cumulus (renormalised)
_CLOUD_SOFTNESS = 0.12  # σ over which a cloud edge goes from clear to opaque
_SMOOTH_SHARE = np.array([0.0, 0.5, 0.6, 0.8, 0.7, 0.0])  # per class: share (in σ) of smooth texture vs grain
_SEAGRASS_EDGE = 0.6  # σ over which seagrass patches fade in
_BARRIER_MAX = 4  # widest barrier reef, px (fringing reefs reach HALO)

# parameter vector indices (built by _params, read by the kernels)
(_P_T_SHALLOW, _P_T_LAND, _P_T_CLOUD, _P_CLOUD_FLOOR, _P_T_REEF, _P_T_SEAGRASS, _P_GAP_FLOOR, _P_T_GAP_BLOB,
 _P_T_GAP_STREAK, _P_T_ISLET, _P_SHADOWS, _P_T_ATOLL_BANK, _P_ATOLL_DENSITY, _P_N) = range(14)


def _upper_threshold(fraction: float) -> float:
    """t such that a standard normal exceeds t with probability ``fraction`` (±40 at the ends)."""
    if fraction <= 0:
        return 40.0
    if fraction >= 1:
        return -40.0
    return NormalDist().inv_cdf(1.0 - fraction)


def _cloud_threshold(cover: float, floor: float) -> float:
    """t such that P(region > floor and density > t) = cover, where density = (w * region + cumulus) /
    sqrt(1 + w²) and region, cumulus are independent N(0, 1)."""
    if cover <= 0:
        return 40.0
    w, norm = _CLOUD_REGION_WEIGHT, math.sqrt(1 + _CLOUD_REGION_WEIGHT**2)
    x = np.linspace(max(floor, -8.0), 8.0, 801)
    weights = np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi) * (x[1] - x[0])
    tail = np.vectorize(lambda z: 0.5 * math.erfc(z / math.sqrt(2)))
    lo, hi = -12.0, 12.0
    for _ in range(50):
        t = 0.5 * (lo + hi)
        if float((weights * tail(t * norm - w * x)).sum()) > cover:
            lo = t
        else:
            hi = t
    return 0.5 * (lo + hi)


@lru_cache(maxsize=64)
def _params(world: SyntheticWorld) -> np.ndarray:
    """The world's thresholds (in σ of the N(0, 1) fields) and switches, as the kernels read them."""
    p = np.zeros(_P_N)
    p[_P_T_SHALLOW] = _upper_threshold(world.bank_cover)
    p[_P_T_LAND] = _upper_threshold(world.island_density)
    p[_P_CLOUD_FLOOR] = _upper_threshold(min(1.0, 4.0 * world.cloud_cover + 0.25))  # cloudy regions
    p[_P_T_CLOUD] = _cloud_threshold(world.cloud_cover, p[_P_CLOUD_FLOOR])
    p[_P_T_REEF] = _upper_threshold(world.reef_cover)
    p[_P_T_SEAGRASS] = _upper_threshold(world.seagrass_cover)
    gappy = min(1.0, max(0.3, 2.0 * world.nodata_fraction))  # share of the world where gaps occur
    p[_P_GAP_FLOOR] = _upper_threshold(gappy)
    p[_P_T_GAP_BLOB] = _upper_threshold(world.nodata_fraction * 0.75 / gappy)
    p[_P_T_GAP_STREAK] = _upper_threshold(world.nodata_fraction * 0.25 / gappy)
    p[_P_T_ISLET] = _upper_threshold(0.12)
    p[_P_SHADOWS] = 1.0 if world.cloud_shadows else 0.0
    p[_P_T_ATOLL_BANK] = _upper_threshold(min(world.bank_cover + 0.1, 1.0))  # atolls only off the banks
    p[_P_ATOLL_DENSITY] = world.atoll_density
    p.flags.writeable = False
    return p


def _texture_matrix(cov) -> np.ndarray:
    """M with M @ M.T = cov; column 0 is the brightest principal axis (for the skewed land texture)."""
    w, v = np.linalg.eigh(np.asarray(cov, np.float64))
    order = np.argsort(w)[::-1]
    w, v = np.clip(w[order], 0, None), v[:, order]
    v *= np.where(v.sum(0) < 0, -1.0, 1.0)
    return v * np.sqrt(w)


# Colour tables indexed by class code. The SHALLOW mean is computed per pixel (depth, seagrass), so its row
# holds only the local texture; clouds are a white body blended over the surface by their opacity.
_MEAN = np.zeros((6, 3))
_TEX = np.zeros((6, 3, 3))
for _code, _name, _scale in ((DEEP_WATER, "deep_water", 0.8), (REEF, "reef", 1.0), (LAND, "land", 1.0),
                             (SHALLOW, "shallow", 0.3), (CLOUD, "cloud", 1.0)):
    _MEAN[_code] = MEASURED[_name][0]
    _TEX[_code] = _texture_matrix(MEASURED[_name][1]) * _scale
del _code, _name, _scale
#: shallow water: shoal at the shore → shallow_bank → bank_deep at the bank edge, blended towards seagrass in
#: its patches; a cloud's body is white (the scene's median cloud pixel is 255)
_PALETTE = np.array([MEASURED[k][0] for k in ("shoal", "shallow_bank", "bank_deep", "seagrass", "shadow")]
                    + [(250.0, 252.0, 255.0)])
_SHOAL_I, _BANK_I, _BANK_DEEP_I, _SEAGRASS_I, _SHADOW_I, _CLOUD_BODY_I = range(6)


# -- numba kernels --------------------------------------------------------------------------------------------
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_KI = np.uint64(0x9E3779B97F4A7C15)
_KJ = np.uint64(0xC2B2AE3D27D4EB4F)


@njit(cache=True, inline="always")
def _mix(z):
    """splitmix64's finaliser: a bijective 64-bit mix."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@njit(cache=True, inline="always")
def _hash(key, i, j):
    return _mix(key ^ (np.uint64(i) * _KI) ^ _mix(np.uint64(j) * _KJ))


@njit(cache=True, inline="always")
def _gauss(h, q):
    """A standard normal value from a 64-bit hash (piecewise-linear quantile function)."""
    u = np.float64(np.int64(h >> np.uint64(11))) * (16384.0 / 9007199254740992.0)  # via int64: faster
    k = min(np.int64(u), 16383)
    return q[k] + (u - k) * (q[k + 1] - q[k])


@njit(cache=True, inline="always")
def _unit(h):
    return np.float64(np.int64(h >> np.uint64(11))) * (1.0 / 9007199254740992.0)


@njit(cache=True)
def _keys(seed, ids):
    """The world's hash keys: one per octave, then the grain's and the atolls' (``ids``: ``_KEY_IDS``)."""
    keys = np.empty(ids.size, np.uint64)
    base = _mix(np.uint64(seed) ^ np.uint64(0x5851F42D4C957F2D))
    for o in range(ids.size):
        keys[o] = _mix(base ^ ids[o])
    return keys


def _lattices(keys, r0, c0, nr, nc):
    """Every octave's lattice values around rows [r0, r0+nr) x cols [c0, c0+nc), packed in one buffer:
    ``(buffer, offset of each octave, lattice columns, first lattice row, first lattice column)``."""
    i0, j0 = r0 >> _OCT_KY, c0 >> _OCT_KX
    nj = ((c0 + nc - 1) >> _OCT_KX) - j0 + 2
    ni = ((r0 + nr - 1) >> _OCT_KY) - i0 + 2
    off = np.concatenate([[0], np.cumsum(ni * nj)])
    first_row = np.concatenate([[0], np.cumsum(ni)])  # the buffer's lattice rows, counted over all octaves
    buf = np.empty(off[-1], np.float32)
    _in_bands(_lattice_rows, int(first_row[-1]), first_row, keys, _QUANTILES, off, nj, i0, j0, buf)
    return buf, off, nj, i0, j0


@njit(cache=True, nogil=True)
def _lattice_rows(a0, a1, first_row, keys, q, off, nj, i0, j0, buf):
    """Lattice rows [a0, a1) of ``_lattices`` (counted over all octaves)."""
    o = 0
    for a in range(a0, a1):
        while first_row[o + 1] <= a:
            o += 1
        i = a - first_row[o]
        base = off[o] + i * nj[o]
        for b in range(nj[o]):
            buf[base + b] = _gauss(_hash(keys[o], i0[o] + i, j0[o] + b), q)


@njit(cache=True)
def _px(f, r, c, lat, wts):
    """Field ``f`` (N(0, 1)) at global pixel (r, c), from the window's lattices."""
    buf, off, nj, i0, j0 = lat
    pa, pb, psy, pny = wts
    v = 0.0
    for o in range(_FIELD_START[f], _FIELD_STOP[f]):
        ky, kx = _OCT_KY[o], _OCT_KX[o]
        my, mx = r & ((1 << ky) - 1), c & ((1 << kx) - 1)
        p = off[o] + ((r >> ky) - i0[o]) * nj[o] + (c >> kx) - j0[o]
        q = p + nj[o]
        t = psy[o, my]
        left = buf[p] + t * (buf[q] - buf[p])
        right = buf[p + 1] + t * (buf[q + 1] - buf[p + 1])
        v += pny[o, my] * (pa[o, mx] * left + pb[o, mx] * right)
    return v


@njit(cache=True)
def _row(f, r, c0, out, lat, wts):
    """Field ``f`` along global row ``r`` from column ``c0``, into ``out`` (float32): ``_px`` for whole rows."""
    buf, off, nj, i0, j0 = lat
    pa, pb, psy, pny = wts
    n = out.size
    out[:] = 0.0
    for o in range(_FIELD_START[f], _FIELD_STOP[f]):
        ky, kx = _OCT_KY[o], _OCT_KX[o]
        my = r & ((1 << ky) - 1)
        t, w = psy[o, my], pny[o, my]
        p = off[o] + ((r >> ky) - i0[o]) * nj[o]
        q = p + nj[o]
        jb = (c0 >> kx) - j0[o]
        col = np.empty(((c0 + n - 1) >> kx) - j0[o] - jb + 2, np.float32)
        for j in range(col.size):  # the lattice values interpolated down to row r
            col[j] = buf[p + jb + j] + t * (buf[q + jb + j] - buf[p + jb + j])
        a_o, b_o = pa[o], pb[o]
        k = 0
        while k < n:  # one lattice cell at a time: its two values are constant along the run
            c = c0 + k
            mx = c & ((1 << kx) - 1)
            run = min((1 << kx) - mx, n - k)
            j = (c >> kx) - j0[o] - jb
            left, right = col[j], col[j + 1]
            # unsigned indices: no negative-index wraparound, so the loop vectorises (3x faster)
            ku, mu = np.uint64(k), np.uint64(mx)
            for u in range(np.uint64(run)):
                out[ku + u] += w * (a_o[mu + u] * left + b_o[mu + u] * right)
            k += run


@njit(cache=True)
def _row_where(f, r, c0, out, gate, floor, lat, wts):
    """``_row`` over the columns from the first to the last where ``gate > floor`` (the rest is left as is);
    returns whether there were any."""
    lo, hi = 0, out.size - 1
    while lo <= hi and gate[lo] <= floor:
        lo += 1
    while hi >= lo and gate[hi] <= floor:
        hi -= 1
    if lo > hi:
        return False
    _row(f, r, c0 + lo, out[lo:hi + 1], lat, wts)
    return True


@njit(cache=True)
def _field_at(f, r, c, keys, q, wts):
    """Field ``f`` at one global pixel straight from the hashes (no window needed); the formula of ``_px``."""
    pa, pb, psy, pny = wts
    v = 0.0
    for o in range(_FIELD_START[f], _FIELD_STOP[f]):
        ky, kx = _OCT_KY[o], _OCT_KX[o]
        my, mx = r & ((1 << ky) - 1), c & ((1 << kx) - 1)
        i, j = r >> ky, c >> kx
        v00, v01 = _gauss(_hash(keys[o], i, j), q), _gauss(_hash(keys[o], i, j + 1), q)
        v10, v11 = _gauss(_hash(keys[o], i + 1, j), q), _gauss(_hash(keys[o], i + 1, j + 1), q)
        t = psy[o, my]
        left = v00 + t * (v10 - v00)
        right = v01 + t * (v11 - v01)
        v += pny[o, my] * (pa[o, mx] * left + pb[o, mx] * right)
    return v


@njit(cache=True, inline="always")
def _clamp01(x):
    return min(max(x, 0.0), 1.0)


_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}  # (process id, threads) → pool
_POOLS_LOCK = threading.Lock()


def _in_bands(kernel, nrows: int, *args) -> None:
    """``kernel(a0, a1, *args)`` over bands of rows covering [0, nrows), on numba's number of threads.

    The kernels release the GIL (``nogil``), so plain threads run them in parallel; they compile much faster
    than ``parallel=True`` kernels. Each band's pixels do not depend on the banding.
    """
    import numba

    workers = numba.get_num_threads()
    step = max(64, -(-nrows // (8 * workers)))  # several bands per thread: they balance
    bands = [(a, min(nrows, a + step)) for a in range(0, nrows, step)]
    if workers == 1 or len(bands) == 1:
        for a0, a1 in bands:
            kernel(a0, a1, *args)
        return
    with _POOLS_LOCK:  # per process: a forked child must not use its parent's (absent) threads
        pool = _POOLS.get((os.getpid(), workers))
        if pool is None:
            pool = _POOLS[os.getpid(), workers] = ThreadPoolExecutor(workers, thread_name_prefix="reefmap-synthetic")
    for f in [pool.submit(kernel, a0, a1, *args) for a0, a1 in bands]:
        f.result()


def _base(r0, c0, nr, nc, lat, wts, prm):
    """Over the (padded) window: elevation; water depth (0 at the shore .. 1 at the bank edge); cloud thickness
    (opacity = thickness clamped to 0..1); per row, the squared horizontal distances (capped) to land and to
    deep water (``_distances2`` finishes them) and whether the row has any."""
    elev = np.empty((nr, nc), np.float32)
    depth = np.empty((nr, nc), np.float32)
    cloud = np.full((nr, nc), -1.0, np.float32)
    land2 = np.empty((nr, nc), np.uint8)
    deep2 = np.empty((nr, nc), np.uint8)
    has_land = np.zeros(nr, np.bool_)
    has_deep = np.zeros(nr, np.bool_)
    _in_bands(_base_rows, nr, r0, c0, nc, lat, wts, prm, elev, depth, cloud, land2, deep2, has_land, has_deep)
    return elev, depth, cloud, (land2, has_land), (deep2, has_deep)


@njit(cache=True, nogil=True)
def _base_rows(a0, a1, r0, c0, nc, lat, wts, prm, elev, depth, cloud, land2, deep2, has_land, has_deep):
    """Rows [a0, a1) of ``_base``."""
    t_s, t_l, t_c, floor = prm[_P_T_SHALLOW], prm[_P_T_LAND], prm[_P_T_CLOUD], prm[_P_CLOUD_FLOOR]
    wi, wr = _ISLAND_WEIGHT, _CLOUD_REGION_WEIGHT
    inv_e, inv_c, inv_band = 1.0 / math.sqrt(1.0 + wi * wi), 1.0 / math.sqrt(1.0 + wr * wr), 1.0 / (t_l - t_s)
    # elevation = (bank + wi * island') / sqrt(1 + wi²), island' = (island + D * detail) / sqrt(1 + D²): all N(0, 1)
    w_isl = wi / math.sqrt(1.0 + _DETAIL * _DETAIL)
    w_det = w_isl * _DETAIL * inv_e
    for a in range(a0, a1):
        r = r0 + a
        rows = np.empty((5, nc), np.float32)
        bank, isl, det, reg, cum = rows[0], rows[1], rows[2], rows[3], rows[4]
        _row(_BANK, r, c0, bank, lat, wts)
        _row(_ISLAND, r, c0, isl, lat, wts)
        _row(_ISLAND_DETAIL, r, c0, det, lat, wts)
        _row(_CLOUD_REGION, r, c0, reg, lat, wts)
        e_row, d_row, a_row = elev[a], depth[a], cloud[a]
        for b in range(np.uint64(nc)):
            smooth = (bank[b] + w_isl * isl[b]) * inv_e  # without the detail: water depth varies smoothly
            e_row[b] = smooth + w_det * det[b]
            d_row[b] = min(max((t_l - smooth) * inv_band, 0.0), 1.0)
        if _row_where(_CLOUD, r, c0, cum, reg, floor, lat, wts):  # cumulus only in cloudy regions
            for b in range(np.uint64(nc)):
                if reg[b] > floor:
                    a_row[b] = ((wr * reg[b] + cum[b]) * inv_c - t_c) * (1.0 / _CLOUD_SOFTNESS) + 0.5
        # squared horizontal distances to land (e > t_l) and to deep water (e < t_s)
        away_l, away_d = np.empty(nc, np.uint8), np.empty(nc, np.uint8)  # 0 on the class, 255 off it
        for b in range(np.uint64(nc)):
            away_l[b] = 0 if e_row[b] > t_l else 255
            away_d[b] = 0 if e_row[b] < t_s else 255
        has_land[a] = _hdist2(away_l, HALO, land2[a])
        has_deep[a] = _hdist2(away_d, _BARRIER_MAX, deep2[a])


@njit(cache=True)
def _hdist2(away, radius, out):
    """Squared distance along the row to the nearest pixel where ``away`` is 0 (it is 255 elsewhere), capped at
    (radius + 1)²; returns whether the row has any such pixel. Near the row's ends, only what it holds counts."""
    n = away.size
    out[:] = (radius + 1) * (radius + 1)
    for dx in range(-radius, radius + 1):
        dx2 = np.uint8(dx * dx)
        lo, hi = max(0, -dx), min(n, n - dx)  # b and b + dx both in the row
        src, dst = away[lo + dx:hi + dx], out[lo:hi]
        for u in range(np.uint64(hi - lo)):
            dst[u] = min(dst[u], np.uint8(src[u] | dx2))  # uint8 throughout: vectorises
    return out.min() == 0


@njit(cache=True)
def _distances2(h2, has, a, radius, b0, out):
    """Squared Euclidean distances (capped; at most (radius + 1)² + radius²) from row ``a``, columns
    [b0, b0 + len(out)), to the class of ``h2``/``has`` (from ``_base``), looking ``radius`` rows up and down."""
    out[:] = 255
    for dy in range(-radius, radius + 1):
        if not has[a + dy]:
            continue
        row = h2[a + dy, b0:b0 + out.size]
        dy2 = np.uint8(dy * dy)
        for k in range(np.uint64(out.size)):
            out[k] = min(out[k], np.uint8(row[k] + dy2))  # all uint8 (sum <= 145): vectorises, 13x faster


@njit(cache=True)
def _atolls(keys, q, wts, ci0, cj0, nci, ncj, prm):
    """Per 256-px cell: exists, centre row, centre col, radius, ring width, 3 harmonic amplitudes, 3 phases."""
    tab = np.zeros((nci, ncj, 11))
    size = 1 << ATOLL_CELL_LOG2
    key = keys[keys.size - 1]
    for a in range(nci):
        for b in range(ncj):
            h = _hash(key, ci0 + a, cj0 + b)
            if _unit(h) >= prm[_P_ATOLL_DENSITY]:
                continue
            u = np.empty(10)
            for k in range(10):
                h = _mix(h + _KI)
                u[k] = _unit(h)
            radius = 10.0 + 30.0 * u[0]
            margin = 1.4 * radius + 4.0
            cr = (ci0 + a) * size + margin + u[1] * (size - 2 * margin)
            cc = (cj0 + b) * size + margin + u[2] * (size - 2 * margin)
            if _field_at(_BANK, np.int64(cr), np.int64(cc), keys, q, wts) > prm[_P_T_ATOLL_BANK]:
                continue  # on or near a bank: no atoll
            tab[a, b, 0] = 1.0
            tab[a, b, 1], tab[a, b, 2], tab[a, b, 3] = cr, cc, radius
            tab[a, b, 4] = 2.0 + 3.0 * u[3]
            for m in range(3):
                tab[a, b, 5 + m] = 0.12 * u[4 + m] / (m + 1)
                tab[a, b, 8 + m] = 2.0 * math.pi * u[7 + m]
    return tab


@njit(cache=True)
def _atoll_at(tab, ci0, cj0, r, c):
    """(0 outside any atoll, 1 in its lagoon, 2 on its reef ring; lagoon depth 0..1) at global pixel (r, c)."""
    a, b = (r >> ATOLL_CELL_LOG2) - ci0, (c >> ATOLL_CELL_LOG2) - cj0
    if tab[a, b, 0] == 0.0:
        return 0, 0.0
    dy, dx = r + 0.5 - tab[a, b, 1], c + 0.5 - tab[a, b, 2]
    reach = 1.4 * tab[a, b, 3]
    if abs(dy) > reach or abs(dx) > reach:
        return 0, 0.0
    rho = math.sqrt(dy * dy + dx * dx)
    theta = math.atan2(dy, dx)
    ring = tab[a, b, 3]
    for m in range(3):
        ring *= 1.0 + tab[a, b, 5 + m] * math.cos((m + 2) * theta + tab[a, b, 8 + m])
    if abs(rho - ring) <= 0.5 * tab[a, b, 4]:
        return 2, 0.0
    if rho < ring:
        return 1, 0.1 + 0.8 * (1.0 - rho / ring)  # sand flats inside the rim, deeper in the middle
    return 0, 0.0


@njit(cache=True, inline="always")
def _skewed(z):
    """A right-skewed (log-normal) variable with zero mean and unit variance, from z ~ N(0, 1)."""
    k = 0.8
    return (math.exp(k * z - 0.5 * k * k) - 1.0) / math.sqrt(math.exp(k * k) - 1.0)


@njit(cache=True, inline="always")
def _grain(h):
    """A triangular, unit-variance value from the low 20 bits of a hash."""
    m = np.uint64(0x3FF)
    return (np.float64(np.int64((h & m) + ((h >> np.uint64(10)) & m))) * (1.0 / 1023.0) - 1.0) * 2.449489742783178


@njit(cache=True, inline="always")
def _byte(v):
    return np.uint8(min(max(v + 0.5, 0.0), 255.0))


def _render(r0, c0, nr, nc, elev, depth_, cloud, land2, deep2, atolls, lat, wts, keys, prm, want_rgb, mean, tex,
            palette):
    """Final classes (reefs, atolls, clouds, shadows, gaps) and colours of the window inside the padding."""
    rgb = np.zeros((3, nr, nc), np.uint8)
    truth = np.empty((nr, nc), np.uint8)
    _in_bands(_render_rows, nr, r0, c0, nc, elev, depth_, cloud, land2, deep2, atolls, lat, wts, keys, prm, want_rgb,
              mean, tex, palette, rgb, truth)
    return rgb, truth


@njit(cache=True, nogil=True)
def _render_rows(a0, a1, r0, c0, nc, elev, depth_, cloud, land2, deep2, atolls, lat, wts, keys, prm, want_rgb, mean,
                 tex, palette, rgb, truth):
    """Rows [a0, a1) of ``_render``."""
    halo = np.int64(HALO)
    t_s, t_l = prm[_P_T_SHALLOW], prm[_P_T_LAND]
    sdy, sdx = SHADOW_OFFSET
    grain_key = keys[keys.size - 2]
    smooth_share = _SMOOTH_SHARE
    grain_share = np.sqrt(1.0 - _SMOOTH_SHARE**2)
    ci0, cj0 = r0 >> ATOLL_CELL_LOG2, c0 >> ATOLL_CELL_LOG2
    gap_floor, t_blob, t_streak, t_reef = prm[_P_GAP_FLOOR], prm[_P_T_GAP_BLOB], prm[_P_T_GAP_STREAK], prm[_P_T_REEF]
    t_islet, t_seagrass, shadows = prm[_P_T_ISLET], prm[_P_T_SEAGRASS], prm[_P_SHADOWS] > 0.0
    for a in range(a0, a1):
        r = r0 + a
        pa = a + halo
        e_row, d_row, cl_row = elev[pa, halo:], depth_[pa, halo:], cloud[pa, halo:]
        sh_row = cloud[pa - sdy, halo - sdx:]  # the cloud that casts this row's shadows
        t_row, red, green, blue = truth[a], rgb[0, a], rgb[1, a], rgb[2, a]
        rows = np.empty((8, nc), np.float32)
        gap_r, gap_b, gap_s, rw, rp, ta, tb, sg = rows[0], rows[1], rows[2], rows[3], rows[4], rows[5], rows[6], rows[7]
        _row(_GAP_REGION, r, c0, gap_r, lat, wts)
        gappy = _row_where(_GAP_BLOB, r, c0, gap_b, gap_r, gap_floor, lat, wts)
        if gappy:
            _row_where(_GAP_STREAK, r, c0, gap_s, gap_r, gap_floor, lat, wts)
        dl2, dd2 = np.empty(nc, np.uint8), np.empty(nc, np.uint8)
        _distances2(land2[0], land2[1], pa, halo, halo, dl2)
        _distances2(deep2[0], deep2[1], pa, np.int64(_BARRIER_MAX), halo, dd2)
        _row(_REEF_WIDTH, r, c0, rw, lat, wts)
        _row(_REEF_PATCH, r, c0, rp, lat, wts)
        if want_rgb:
            _row(_TEX_A, r, c0, ta, lat, wts)
            _row(_TEX_B, r, c0, tb, lat, wts)
            _row(_SEAGRASS_F, r, c0, sg, lat, wts)
        for b in range(nc):
            c = c0 + b
            if gappy and gap_r[b] > gap_floor and (gap_b[b] > t_blob or gap_s[b] > t_streak):
                t_row[b] = NODATA
                continue
            # -- surface class: reefs along shores and bank edges, atolls in deep water
            e = e_row[b]
            k = DEEP_WATER if e < t_s else (LAND if e > t_l else SHALLOW)
            depth = 0.0
            if k == SHALLOW:
                depth = d_row[b]
                dl, dd = dl2[b], dd2[b]
                if dl <= halo * halo or dd <= _BARRIER_MAX * _BARRIER_MAX:
                    w = _clamp01(0.5 + 0.3 * rw[b])  # band width: 0..1 of its range
                    wf, wb = 2.0 + (halo - 2.0) * w, 1.0 + (_BARRIER_MAX - 1.0) * w
                    if (dl <= wf * wf or dd <= wb * wb) and rp[b] > t_reef:
                        k = REEF
            elif k == DEEP_WATER:
                kind, lagoon_depth = _atoll_at(atolls, ci0, cj0, r, c)
                if kind == 2:
                    k = LAND if _px(_ISLET, r, c, lat, wts) > t_islet else REEF
                elif kind == 1:
                    k = SHALLOW
                    depth = lagoon_depth
            # -- clouds, and their shadows (cloud-obscured too)
            thick = cl_row[b]
            al = _clamp01(thick)
            shade = _clamp01(sh_row[b]) if shadows else 0.0
            t_row[b] = CLOUD if (al >= 0.5 or shade >= 0.5) else k
            if not want_rgb:
                continue
            # -- colour: class mean (shallow: by depth and seagrass) + textured spread, then shadow and cloud
            h = _mix(grain_key ^ (np.uint64(r) * _KI) ^ (np.uint64(c) * _KJ))
            sm, gr = smooth_share[k], grain_share[k]
            za = sm * ta[b] + gr * _grain(h)
            zb = sm * tb[b] + gr * _grain(h >> np.uint64(20))
            zc = _grain(h >> np.uint64(40))  # the third principal axis holds 0.5-3 % of the variance: grain only
            if k == LAND:
                za = _skewed(za)
            if k == SHALLOW:
                g = 0.8 * _clamp01((sg[b] - t_seagrass) * (1.0 / _SEAGRASS_EDGE) + 0.5)
                wd = 2.0 * depth
                lo, hi = (_SHOAL_I, _BANK_I) if wd < 1.0 else (_BANK_I, _BANK_DEEP_I)
                wd = wd if wd < 1.0 else wd - 1.0
                vr = palette[lo, 0] + wd * (palette[hi, 0] - palette[lo, 0])
                vg = palette[lo, 1] + wd * (palette[hi, 1] - palette[lo, 1])
                vb = palette[lo, 2] + wd * (palette[hi, 2] - palette[lo, 2])
                cr = vr + g * (palette[_SEAGRASS_I, 0] - vr)
                cg = vg + g * (palette[_SEAGRASS_I, 1] - vg)
                cb = vb + g * (palette[_SEAGRASS_I, 2] - vb)
            else:
                cr, cg, cb = mean[k, 0], mean[k, 1], mean[k, 2]
            cr += tex[k, 0, 0] * za + tex[k, 0, 1] * zb + tex[k, 0, 2] * zc
            cg += tex[k, 1, 0] * za + tex[k, 1, 1] * zb + tex[k, 1, 2] * zc
            cb += tex[k, 2, 0] * za + tex[k, 2, 1] * zb + tex[k, 2, 2] * zc
            if shade > 0.0 and al < 0.5:
                f = 0.95 * shade
                cr += f * (palette[_SHADOW_I, 0] - cr)
                cg += f * (palette[_SHADOW_I, 1] - cg)
                cb += f * (palette[_SHADOW_I, 2] - cb)
            if al > 0.0:  # white where thick, grey towards the edges
                grey = 70.0 * _clamp01(1.5 - thick) - 10.0 * ta[b]
                cr += al * (palette[_CLOUD_BODY_I, 0] - grey - cr)
                cg += al * (palette[_CLOUD_BODY_I, 1] - grey - cg)
                cb += al * (palette[_CLOUD_BODY_I, 2] - grey - cb)
            vr, vg, vb = _byte(cr), _byte(cg), _byte(cb)
            red[b], green[b] = vr, vg
            blue[b] = vb if (vr | vg | vb) else np.uint8(1)  # a valid pixel is never all-zero (nodata)


def render(world: SyntheticWorld, window: Window, want_rgb: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
    """RGB ``(3, y, x)`` uint8 (None unless ``want_rgb``) and truth ``(y, x)`` uint8 of any window of the world.

    The world is unbounded: the window may lie anywhere, negative coordinates included.
    """
    nr, nc = window.shape
    if nr == 0 or nc == 0:
        return (np.zeros((3, nr, nc), np.uint8) if want_rgb else None), np.zeros((nr, nc), np.uint8)
    r0, c0 = window.row_start, window.col_start
    keys = _keys(np.uint64(world.seed), _KEY_IDS)
    prm = _params(world)
    lat = _lattices(keys, r0 - HALO, c0 - HALO, nr + 2 * HALO, nc + 2 * HALO)
    elev, depth, cloud, land2, deep2 = _base(r0 - HALO, c0 - HALO, nr + 2 * HALO, nc + 2 * HALO, lat, _WEIGHTS, prm)
    ci0, cj0 = r0 >> ATOLL_CELL_LOG2, c0 >> ATOLL_CELL_LOG2
    nci = ((r0 + nr - 1) >> ATOLL_CELL_LOG2) - ci0 + 1
    ncj = ((c0 + nc - 1) >> ATOLL_CELL_LOG2) - cj0 + 1
    atolls = _atolls(keys, _QUANTILES, _WEIGHTS, ci0, cj0, nci, ncj, prm)
    rgb, truth = _render(r0, c0, nr, nc, elev, depth, cloud, land2, deep2, atolls, lat, _WEIGHTS, keys, prm,
                         want_rgb, _MEAN, _TEX, _PALETTE)
    return (rgb if want_rgb else None), truth


def training_pairs(n: int, size: int, seed: int = 0, *, world: SyntheticWorld | None = None,
                   extent: int = 1 << 20) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random ``size``² windows of the world: RGB ``(n, 3, size, size)`` and truth ``(n, size, size)``, uint8.

    The windows' positions (within ``extent`` px of the origin) come from ``seed``, and so does the world
    unless ``world`` is given. Same arguments, same arrays.
    """
    for name, v, lo in (("n", n, 0), ("size", size, 1), ("extent", extent, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise InvalidParameter(f"{name} {v!r} must be a whole number >= {lo}")
    if size > extent:
        raise InvalidParameter(f"size {size} is larger than extent {extent}; raise extent or lower size")
    world = resolve_world(seed, world)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x7EEF]))
    origins = rng.integers(0, extent - size + 1, size=(n, 2))
    rgb = np.empty((n, 3, size, size), np.uint8)
    truth = np.empty((n, size, size), np.uint8)
    for i, (r, c) in enumerate(origins):
        rgb[i], truth[i] = render(world, Window(int(r), int(r) + size, int(c), int(c) + size))
    return rgb, truth
