"""A mosaic of STAC items (one single-band asset per band), through ``stackstac.stack``.

Each window is one small ``stackstac`` computation run on the synchronous scheduler inside the calling task;
the items' time axis is flattened with a first-valid mosaic (the first item listed with a valid pixel wins,
as for GeoTIFF mosaics: items are *not* re-sorted by date).
"""

from __future__ import annotations

import copy
import math
import os
from typing import Any, Sequence

import numpy as np

from reefmap.errors import CorruptSource, CRSMismatch, InvalidParameter, SourceError, SourceNotFound
from reefmap.geometry.grid import GeoBox, Shape, Window
from reefmap.sources import urls
from reefmap.sources.base import ReaderBase
from reefmap.sources.memory import coerce_nodata


def is_stac_like(obj: Any) -> bool:
    """A pystac Item / ItemCollection, or a dict that is a STAC item or item collection."""
    if isinstance(obj, dict):
        return "stac_version" in obj or (obj.get("type") == "FeatureCollection" and "features" in obj)
    try:
        import pystac
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, (pystac.Item, pystac.ItemCollection))


class StacReader(ReaderBase):
    """STAC items as one mosaic: ``stackstac.stack(items, assets=..., rescale=False, dtype=..., fill_value=...)``.

    ``assets`` picks (and orders) the bands: one single-band asset each (stackstac rejects multi-band assets).
    ``epsg``/``resolution``/``bounds`` are passed to stackstac (default: the items' own ``proj:epsg``, and the
    native grid with ``snap_bounds=False``). Items must carry ``proj:epsg`` (a ``proj:code`` of ``EPSG:n`` is
    copied to ``proj:epsg``, which is all stackstac 0.5 reads). Asset hrefs are made absolute when the reader is
    made. Unreadable assets are *not* turned into nodata: reading a window that needs one raises
    ``CorruptSource``. The spec holds the item dicts and the stack parameters (JSON).
    """

    kind = "stac"

    def __init__(self, items: Any, assets: Sequence[str] | None = None, epsg: int | None = None,
                 resolution: Any = None, bounds: Sequence[float] | None = None, dtype: Any = "uint8",
                 fill_value: Any = 0, chunksize: int = 1024, snap_bounds: bool = False):
        self.items = _item_dicts(items)
        self.dtype = np.dtype(dtype)
        self.nodata = coerce_nodata(fill_value, self.dtype)
        self.params = {
            "assets": None if assets is None else [str(a) for a in assets],
            "epsg": None if epsg is None else int(epsg),
            "resolution": _resolution(resolution),
            "bounds": None if bounds is None else [float(b) for b in bounds],
            "dtype": self.dtype.str,
            "fill_value": self.nodata,
            "chunksize": int(chunksize),
            "snap_bounds": bool(snap_bounds),
        }
        _check_local_assets(self.items, self.params["assets"])
        self._stack = _build_stack(self.items, self.params)
        ny, nx = (int(n) for n in self._stack.shape[-2:])
        epsg_out = self._stack.attrs.get("crs") or self._stack.attrs["spec"].epsg
        self.geobox = GeoBox(Shape(ny, nx), self._stack.attrs["transform"], str(epsg_out).upper())
        self.band_names = tuple(str(b) for b in np.asarray(self._stack.coords["band"].values).tolist())
        #: each band's ``eo:bands`` ``common_name`` (red, nir, ...), where the items give one: a model's bands match
        #: these as well as the asset keys
        self.band_common_names = _common_names(self._stack, len(self.band_names))
        if self.params["assets"] is None:
            self.params["assets"] = list(self.band_names)

    def _read_inside(self, window: Window) -> np.ndarray:
        import dask

        r0, r1, c0, c1 = window.to_json()
        try:
            with dask.config.set(scheduler="sync"):
                block = np.asarray(self._stack.data[:, :, r0:r1, c0:c1].compute())
        except Exception as e:  # noqa: BLE001 - rasterio/GDAL errors of an asset
            raise CorruptSource(
                f"cannot read STAC mosaic window rows {r0}:{r1}, cols {c0}:{c1}: {type(e).__name__}: {e}. "
                "An asset there is missing, truncated or corrupt: fix or drop that item"
            ) from e
        return _first_valid(block, self.nodata).astype(self.dtype, copy=False)

    def spec(self) -> dict:
        return {"kind": self.kind, "items": self.items, **self.params}

    @classmethod
    def from_spec(cls, spec: dict) -> "StacReader":
        p = {k: spec.get(k) for k in ("assets", "epsg", "resolution", "bounds")}
        return cls(spec["items"], dtype=spec.get("dtype", "uint8"), fill_value=spec.get("fill_value", 0),
                   chunksize=spec.get("chunksize", 1024), snap_bounds=spec.get("snap_bounds", False), **p)


def _common_names(stack, n: int) -> tuple[str | None, ...]:
    """The ``common_name`` coordinate stackstac makes of ``eo:bands`` (one per band), else Nones."""
    coord = stack.coords.get("common_name")
    if coord is None or "band" not in coord.dims:
        return (None,) * n
    return tuple(str(v) if isinstance(v, str) and v else None for v in np.asarray(coord.values).ravel().tolist())


def _resolution(resolution):
    if resolution is None:
        return None
    vals = [resolution, resolution] if np.isscalar(resolution) else list(resolution)
    try:
        out = [float(v) for v in vals]
    except (TypeError, ValueError):
        raise InvalidParameter(f"resolution {resolution!r} must be a number (or an (x, y) pair) of CRS units") from None
    if len(out) != 2 or not all(v > 0 and math.isfinite(v) for v in out):
        raise InvalidParameter(f"resolution {resolution!r} must be positive and finite")
    return out


def _item_dicts(items: Any) -> list[dict]:
    import pystac

    if isinstance(items, pystac.ItemCollection):
        items = list(items)
    elif isinstance(items, dict) and "features" in items:
        items = list(items["features"])
    elif isinstance(items, (pystac.Item, dict)):
        items = [items]
    items = list(items)
    if not items:
        raise InvalidParameter("open_mosaic got no STAC items; give at least one pystac.Item (or item dict)")
    out = []
    for it in items:
        if isinstance(it, dict):
            try:
                it = pystac.Item.from_dict(copy.deepcopy(it))
            except Exception as e:  # noqa: BLE001
                raise SourceError(f"not a valid STAC item: {str(it)[:120]}...: {e}") from e
        elif not isinstance(it, pystac.Item):
            raise InvalidParameter(f"expected STAC items, got {type(it).__name__} {it!r}")
        else:
            it = it.clone()
        if it.get_self_href():
            it.make_asset_hrefs_absolute()
        d = it.to_dict(include_self_link=False, transform_hrefs=False)
        for key, asset in d.get("assets", {}).items():
            href = asset.get("href", "")
            if "://" not in href and not os.path.isabs(href):
                if not os.path.exists(href):
                    raise SourceError(
                        f"asset {key!r} of STAC item {d.get('id')!r} has the relative href {href!r} and the item has no "
                        "self link to resolve it against; make the hrefs absolute (item.make_asset_hrefs_absolute())"
                    )
                asset["href"] = os.path.abspath(href)
        _proj_epsg(d.get("properties", {}))
        for asset in d.get("assets", {}).values():
            _proj_epsg(asset)
        out.append(d)
    return out


def _proj_epsg(props: dict) -> None:
    """stackstac 0.5 reads only ``proj:epsg``: derive it from a ``proj:code`` of ``EPSG:n``."""
    code = props.get("proj:code")
    if props.get("proj:epsg") is None and isinstance(code, str) and code.upper().startswith("EPSG:"):
        try:
            props["proj:epsg"] = int(code.split(":", 1)[1])
        except ValueError:
            pass


def _check_local_assets(items: list[dict], assets: list[str] | None) -> None:
    for d in items:
        for key, asset in d.get("assets", {}).items():
            if assets is not None and key not in assets:
                continue
            href = asset.get("href", "")
            if urls.is_local(href) and href.lower().rsplit(".", 1)[-1] in ("tif", "tiff", "jp2"):
                if not os.path.exists(urls.local_path(href)):
                    raise SourceNotFound(
                        f"asset {key!r} of STAC item {d.get('id')!r} points at {href}, which does not exist; "
                        "fix the href or drop the item"
                    )


def _build_stack(items: list[dict], params: dict):
    import warnings

    import pystac
    import stackstac

    kw: dict = dict(
        rescale=False, dtype=np.dtype(params["dtype"]), fill_value=np.array(params["fill_value"]).astype(params["dtype"])[()],
        sortby_date=False, chunksize=params["chunksize"], snap_bounds=params["snap_bounds"], errors_as_nodata=(),
    )
    for k in ("assets", "epsg", "resolution", "bounds"):
        if params[k] is not None:
            kw[k] = tuple(params[k]) if k in ("resolution", "bounds") else params[k]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return stackstac.stack([pystac.Item.from_dict(copy.deepcopy(d)) for d in items], **kw)
    except ValueError as e:
        msg = str(e)
        if "multiple CRSs" in msg or "common CRS" in msg and "multiple" in msg:
            raise CRSMismatch(f"STAC items are in different CRSs: {msg}") from e
        raise SourceError(f"cannot stack these STAC items with stackstac: {msg}") from e


def _first_valid(block: np.ndarray, nodata) -> np.ndarray:
    """Flatten ``(time, band, y, x)`` to ``(band, y, x)``: per pixel, the first item with any band != nodata."""
    if block.shape[0] == 1:
        return block[0]
    nan = nodata is None or (isinstance(nodata, float) and math.isnan(nodata))

    def valid(a):
        return np.any(~np.isnan(a), axis=0) if nan else np.any(a != nodata, axis=0)

    out = block[0].copy()
    filled = valid(out)
    for k in range(1, block.shape[0]):
        if filled.all():
            break
        take = ~filled & valid(block[k])
        out[:, take] = block[k][:, take]
        filled |= take
    return out
