"""A model's input bands picked from a mosaic by name, and the mosaic's values checked against what it expects.

Band names come from the readers: GeoTIFF band descriptions (else colour interpretations), STAC asset keys (with
their ``eo:bands`` ``common_name``), Zarr ``band`` coordinates; plain integers ``1..n`` when a source names none.
``select_bands`` finds the model's bands in the mosaic (by name, or by an explicit list or mapping: ``--bands
red=3,green=2,blue=1`` or ``--bands B04,B03,B02,B08``); ``check_values`` reads a few small windows and refuses a
mosaic whose type or values the model's declared scaling does not fit, before anything is written.
"""

from __future__ import annotations

import logging
import math
from typing import Mapping, Sequence

import numpy as np

from reefmap.caching import LRUCache
from reefmap.errors import BandMismatch, InputValuesMismatch, InvalidParameter, SourceError, Unreachable
from reefmap.geometry.grid import Window

log = logging.getLogger("reefmap.sources")
#: (mosaic, model) pairs already told that their unnamed bands are taken in order
_SAID: "LRUCache[bool]" = LRUCache("band-order warnings", 256)

#: ``check_values`` refuses a mosaic when more than this share of the sampled valid pixels fall outside the
#: model's valid range (a few saturated pixels, glint or cloud above 10000 in reflectance, are normal)
OUT_OF_RANGE_SHARE = 0.01
#: the side of each window ``check_values`` reads, and how many windows at most
SAMPLE_SIDE = 256
SAMPLE_WINDOWS = 4


def parse_bands(text: str | Sequence | Mapping | None):
    """``--bands`` text as ``select_bands`` takes it: ``"red=3,green=2,blue=1"`` → ``{"red": "3", ...}`` (model band
    → mosaic band), ``"B04,B03,B02,B08"`` → ``("B04", "B03", "B02", "B08")`` (mosaic bands in the model's order).
    A list or mapping (the API, YAML) is returned as is."""
    if text is None or not isinstance(text, str):
        return text
    parts = [p.strip() for p in text.split(",")]
    if not all(parts):
        raise InvalidParameter(f"--bands {text!r} has an empty entry; give e.g. --bands red=3,green=2,blue=1 or "
                               "--bands B04,B03,B02")
    pairs = [p.partition("=") for p in parts]
    if all(sep for _, sep, _ in pairs):
        out = {k.strip(): v.strip() for k, _, v in pairs}
        if len(out) != len(pairs) or not all(out.values()):
            raise InvalidParameter(f"--bands {text!r} names a model band twice or maps one to nothing; give each once")
        return out
    if any(sep for _, sep, _ in pairs):
        raise InvalidParameter(f"--bands {text!r} mixes model=mosaic pairs and plain names; use one form: "
                               "--bands red=3,green=2,blue=1 or --bands B04,B03,B02")
    return tuple(parts)


def describe_bands(reader) -> str:
    """The mosaic's bands for messages: ``1: B04 (red), 2: B03 (green), ...``."""
    common = common_names(reader)
    return ", ".join((str(i) if n == str(i) else f"{i}: {n}") + (f" ({c})" if c and c != n else "")
                     for i, (n, c) in enumerate(zip(reader.band_names, common), start=1))


def common_names(reader) -> tuple[str | None, ...]:
    """Each band's common name (STAC ``eo:bands`` ``common_name``), where the reader knows one."""
    names = getattr(reader, "band_common_names", None)
    return tuple(names) if names else (None,) * len(reader.band_names)


def band_position(reader, ref) -> int | None:
    """The 0-based position of mosaic band ``ref``: its name, else its common name (case-insensitive when that is
    unambiguous), else its 1-based number; None when none matches."""
    ref = str(ref).strip()
    names, common = list(reader.band_names), common_names(reader)
    for labels in (names, common):
        if ref in labels:
            return labels.index(ref)
    for labels in (names, common):
        low = [str(n).lower() if n else None for n in labels]
        if low.count(ref.lower()) == 1:
            return low.index(ref.lower())
    if ref.isdigit() and 1 <= int(ref) <= len(names):
        return int(ref) - 1
    return None


def select_bands(reader, wanted: Sequence[str], bands=None, model: str = "the model") -> tuple[int, ...]:
    """The 0-based positions of the mosaic bands that feed the model's input bands ``wanted``, in its order.

    ``bands``: None (the model's band names looked up in the mosaic; a mosaic whose bands have no names, ``1..n``,
    and as many bands as the model wants is taken in order), a list of mosaic bands in the model's order, or a
    mapping model band → mosaic band (each a name, a common name or a 1-based number). Raises ``BandMismatch``
    listing the mosaic's bands when one cannot be found."""
    wanted = [str(w) for w in wanted]
    bands = parse_bands(bands)
    has = f"the mosaic has {len(reader.band_names)} bands: {describe_bands(reader)}"
    example = ",".join(f"{w}={i}" for i, w in enumerate(wanted, start=1))
    if bands is None:
        found = [band_position(reader, w) for w in wanted]
        if None not in found:
            return tuple(found)
        unnamed = list(reader.band_names) == [str(i) for i in range(1, len(reader.band_names) + 1)]
        if unnamed and len(reader.band_names) == len(wanted):
            from reefmap.sources.base import source_identity

            said = (repr(source_identity(reader)), model)
            if _SAID.get(said) is None:  # once per mosaic and model in a process, not at every prepare
                _SAID.put(said, True)
                log.warning(f"reefmap: the mosaic's bands have no names: bands 1..{len(wanted)} are taken in order as "
                            f"model {model!r}'s {', '.join(wanted)}; if they are not, say which is which with --bands "
                            f"(API: bands=), e.g. --bands {example}")
            return tuple(range(len(wanted)))
        missing = [w for w, f in zip(wanted, found) if f is None]
        raise BandMismatch(f"model {model!r} needs bands {wanted} but {has}; it lacks {missing}. Name the mosaic's "
                           f"band for each with --bands (API: bands=), e.g. --bands {example}")
    if isinstance(bands, Mapping):
        keys = [str(k) for k in bands]
        if sorted(keys) != sorted(wanted):
            raise BandMismatch(f"bands {dict(bands)} must map each of model {model!r}'s bands {wanted} to a mosaic band "
                               f"(unknown: {sorted(set(keys) - set(wanted))}, missing: "
                               f"{[w for w in wanted if w not in keys]}); {has}")
        refs = [dict(zip(keys, bands.values()))[w] for w in wanted]
    elif isinstance(bands, (list, tuple)):
        refs = list(bands)
        if len(refs) != len(wanted):
            raise BandMismatch(f"bands {refs} names {len(refs)} mosaic bands but model {model!r} takes "
                               f"{len(wanted)} ({', '.join(wanted)}), in that order; {has}")
    else:
        raise InvalidParameter(f"bands must be a list of mosaic bands or a mapping model band → mosaic band, got "
                               f"{bands!r}; e.g. bands={{{', '.join(repr(w) + ': ' + str(i) for i, w in enumerate(wanted, 1))}}}")
    found = [band_position(reader, r) for r in refs]
    unknown = [str(r) for r, f in zip(refs, found) if f is None]
    if unknown:
        raise BandMismatch(f"bands {unknown} are not bands of the mosaic ({has}); name them by name or number")
    return tuple(found)


def model_input(reader, wanted: Sequence[str], bands=None, windows: Sequence[Window] = (), model: str = "the model"):
    """The reader of exactly the model's input bands ``wanted``, in its order (``select_bands``): ``reader`` itself,
    or a ``SubsetReader`` of it, so that workers read only those bands.

    The alpha rule: a band is used as a validity mask only when the file flags it as alpha (a GeoTIFF's colour
    interpretation, which GDAL reports as the other bands' alpha mask flag too; rasterio's default for a 4-band
    uint8 file) *and* the model does not ask for it *and* its values on ``windows`` are all 0 or the type's maximum.
    Otherwise the flagged band is read as data, with a warning saying why (a model that needs one band more than
    the others provide gets it: an RGBN file written with rasterio's defaults has its NIR band flagged as alpha)."""
    alt = reader.with_alpha_as_data() if hasattr(reader, "with_alpha_as_data") else None
    if alt is not None:
        flagged = f"band {alt.alpha_band + 1} of {_where(reader)} is flagged as alpha by the file"
        try:
            select_bands(reader, wanted, bands, model)
        except BandMismatch:
            found = {w: band_position(alt, w) for w in wanted}
            missing = [w for w, p in found.items() if p is None]
            if bands is None and len(missing) == 1 and alt.alpha_band not in found.values():
                bands = {**{w: str(p + 1) for w, p in found.items() if p is not None}, missing[0]: str(alt.alpha_band + 1)}
                log.warning(f"reefmap: {flagged}, but model {model!r} needs band {missing[0]!r} and the other bands "
                            f"do not provide it: reading band {alt.alpha_band + 1} as {missing[0]!r}, not as a mask "
                            f"(name the bands with --bands to say otherwise)")
            else:
                log.warning(f"reefmap: {flagged}, but it is read as data: model {model!r} needs more bands than the others")
            reader = alt
        else:
            values = _values_of(alt, alt.alpha_band, windows)
            top = np.iinfo(alt.dtype).max if np.dtype(alt.dtype).kind in "iu" else 1.0
            if values.size and not np.isin(values, [0, top]).all():
                log.warning(f"reefmap: {flagged}, but it holds values other than 0 and {top} (it looks like a data band, "
                            f"e.g. NIR): it is NOT used as a mask; pixels are nodata by the nodata value only")
                reader = alt
    idx = select_bands(reader, wanted, bands, model)
    if idx == tuple(range(len(reader.band_names))):
        return reader
    from reefmap.sources.subset import SubsetReader

    return SubsetReader(reader, idx)


def _where(reader) -> str:
    """The files or store of ``reader`` for messages (redacted)."""
    from reefmap.sources.base import source_identity

    where = source_identity(reader)["locations"]
    return ", ".join(where[:2]) + (f" (and {len(where) - 2} more)" if len(where) > 2 else "") if where else "the mosaic"


def _values_of(reader, band: int, windows: Sequence[Window]) -> np.ndarray:
    blocks = [b.ravel() for b in readable(reader, windows, (band,))]
    return np.concatenate(blocks) if blocks else np.empty(0)


def readable(reader, windows: Sequence[Window], bands: tuple[int, ...] | None = None):
    """The pixels of each of ``windows`` that can be read: a window that cannot (a corrupt block, a missing file, a
    server failing that part of a file) is left out of the sample; its tile fails on its own in the run, with the
    reason recorded."""
    for w in windows:
        try:
            yield reader.read(w) if bands is None else reader.read(w, bands)
        except (SourceError, Unreachable) as e:
            log.info(f"reefmap: a sample window of the mosaic was not readable ({type(e).__name__}); left out of the check")


def sample_windows(tiles: Sequence, window_of=lambda w: w, side: int = SAMPLE_SIDE,
                   count: int = SAMPLE_WINDOWS) -> list[Window]:
    """At most ``count`` windows of ``side`` pixels, centred in tiles spread evenly over ``tiles`` (windows, or tile
    indices with ``window_of`` giving each one's window: only the picked ones are looked up)."""
    if not len(tiles):
        return []
    picks = sorted({round(i * (len(tiles) - 1) / max(1, count - 1)) for i in range(count)})
    out = []
    for w in (window_of(tiles[i]) for i in picks):
        cy, cx = (w.row_start + w.row_stop) // 2, (w.col_start + w.col_stop) // 2
        hy, hx = min(side, w.shape.y) // 2, min(side, w.shape.x) // 2
        out.append(Window(cy - hy, cy - hy + max(1, 2 * hy), cx - hx, cx - hx + max(1, 2 * hx)))
    return out


def check_values(reader, windows: Sequence[Window], source_data_type: str, valid_range: Sequence[float],
                 model: str = "the model") -> dict | None:
    """Read ``windows`` of ``reader`` (a few small ones: ``sample_windows``) and refuse values the model cannot
    take, with one ``InputValuesMismatch`` naming the dtype, the observed range, the expected one and the fix:
    more than ``OUT_OF_RANGE_SHARE`` of the valid pixels outside ``valid_range`` (uint16 reflectance given to a
    model of 8-bit values; pixels outside the range would be read as nodata), or float values all within 0..1 given
    to a model of integer values (reflectance given to a model of scaled integers). Returns what it saw
    (``{"dtype", "min", "max", "pixels", "outside"}``; None when the sample holds no valid pixel)."""
    lo, hi = (float(v) for v in valid_range)
    dtype = np.dtype(reader.dtype)
    nodata = reader.nodata
    seen_min, seen_max, n, outside = math.inf, -math.inf, 0, 0
    for block in readable(reader, windows):
        if dtype.kind == "f":
            valid = ~np.all(np.isnan(block), axis=0)
            if nodata is not None and not math.isnan(nodata):
                valid &= ~np.all(block == nodata, axis=0)
        else:
            valid = np.ones(block.shape[1:], bool) if nodata is None else ~np.all(block == nodata, axis=0)
        vals = block[:, valid]
        if dtype.kind == "f":
            vals = vals[np.isfinite(vals)]
        if vals.size == 0:
            continue
        seen_min, seen_max = min(seen_min, float(vals.min())), max(seen_max, float(vals.max()))
        n += vals.size
        outside += int(np.count_nonzero((vals < lo) | (vals > hi)))
    if n == 0:
        log.info("reefmap: the sampled windows of the mosaic hold no valid pixel: its values were not checked")
        return None
    seen = {"dtype": str(dtype), "min": seen_min, "max": seen_max, "pixels": n, "outside": outside / n}
    expected = f"{source_data_type} values {_num(lo)}..{_num(hi)}"
    observed = f"the mosaic holds {dtype} values {_num(seen_min)}..{_num(seen_max)}"
    if outside / n > OUT_OF_RANGE_SHARE:
        fix = _fix(dtype, expected, seen_max, hi)
        raise InputValuesMismatch(
            f"{observed} (sampled {n} band values; {outside / n:.1%} outside the model's range) but model {model!r} "
            f"expects {expected}: those pixels would be read as nodata. {fix}")
    if dtype.kind == "f" and np.dtype(source_data_type).kind in "iu" and seen_max <= 1.0 < hi:
        raise InputValuesMismatch(
            f"{observed}, which looks like reflectance 0..1, but model {model!r} expects {expected}: the map would be "
            f"wrong without a word. Scale the mosaic to the model's values (e.g. x {_num(hi)}), or use a bundle "
            "whose band scaling is for 0..1 reflectance (source_data_type: float32, valid_range: [0, 1])")
    return seen


def _fix(dtype: np.dtype, expected: str, seen_max: float, hi: float) -> str:
    """The way out of values outside the model's range."""
    if seen_max > hi:
        return (f"Use a bundle made for this sensor (source_data_type: {dtype}, valid_range and a band scaling for "
                f"values up to {_num(seen_max)}; see reefmap/model/specs/allen-coral-atlas-benthic.yaml), or rescale "
                f"the mosaic to {expected} first")
    return f"Use a bundle whose valid_range covers these values, or rescale the mosaic to {expected} first"


def _num(v: float) -> str:
    return f"{v:g}"
