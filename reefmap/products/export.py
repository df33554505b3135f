"""Write a query result (the ``xarray.Dataset`` of ``reefmap.query``) to a file, by extension: ``.tif``
Cloud-Optimized GeoTIFF, ``.nc`` NetCDF (CF), ``.zarr`` Zarr v3, ``.png`` a quick-look picture.

Encodings (the codes of ``reefmap.store.format``; probability p is stored as the map stores it:
``round(p · PROB_SCALE)``):

- **COG** (one layer per file; GDAL's COG driver, DEFLATE, 256-px tiles, internal overviews):
  ``reef_probability``: band 1 uint8 0..PROB_SCALE with band scale 1/PROB_SCALE, nodata PROB_NODATA for
  nodata, **unfinished tiles** and outside the polygon (every reader — GDAL, rasterio ``masked=True``,
  rioxarray ``mask_and_scale=True`` — decodes a probability in [0, 1] or masks it); band 2 ``unfinished``
  says which masked pixels are unfinished: PROB_SCALE (decodes to 1 with the same scale) where the pixel's tile
  is not finished, 0 elsewhere. ``classification`` uint8 class codes with a colour table, **UNFINISHED =
  unfinished tile** (a flag value), nodata CLASS_NODATA. The tags ``NODATA_VALUE``, ``COMPLETE_FRACTION``,
  ``LAYER``, ``ENCODING`` (and ``UNFINISHED_VALUE`` for classification) give the values. Overviews:
  classification by MODE; probability by AVERAGE (nodata excluded: an overview pixel's probability averages
  its finished pixels, its ``unfinished`` value is the share of unfinished ones).
- **NetCDF** (netCDF4/HDF5, zlib) and **Zarr**: the layers asked for plus ``tile_state`` (always), each with CF
  attributes and ``grid_mapping = "spatial_ref"`` (a CF grid-mapping variable with ``crs_wkt``);
  ``reef_probability`` packed as uint8 (``scale_factor`` 1/PROB_SCALE, ``_FillValue`` PROB_NODATA: it decodes
  to float with NaN for nodata *and* unfinished), ``classification`` with the flag UNFINISHED, ``tile_state``
  with the tile states (OUTSIDE = outside the polygon).
- **PNG**: class colours and/or reef probability (unfinished grey, nodata hatched), drawn by
  ``reefmap.viz.quicklook`` with legend, colour bar, lon/lat ticks, scale bar and CRS.

An existing output is refused (``OutputExists``, nothing is touched) unless ``overwrite=True``, and even then
unless it is an earlier export of the same kind; the queried map, anything inside it and any folder holding it are
never written (``check_output``). Outputs are written to a temporary sibling first and moved into place only when
complete.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid

import numpy as np

from reefmap.classes import ClassScheme
from reefmap.errors import InvalidParameter, OutputExists, UnknownLayer, UnsupportedFormat
from reefmap.products.mapview import LAYERS
from reefmap.sources import urls
from reefmap.store.format import (CLASS_NODATA, OUTSIDE, PROB_NODATA, PROB_SCALE, UNFINISHED, is_finished,
                                  scheme_of_attrs)
from reefmap.viz.render import geobox_of

FORMATS = {".tif": "cog", ".tiff": "cog", ".nc": "netcdf", ".zarr": "zarr", ".png": "png"}
LAYER_CHOICES = (*LAYERS, "both")


def output_format(path) -> str:
    p = os.fspath(path).rstrip("/")
    ext = os.path.splitext(p)[1].lower()
    fmt = FORMATS.get(ext)
    if fmt is None:
        raise UnsupportedFormat(f"output {p!r}: unknown extension {ext or '(none)'!r}; use one of "
                                f"{', '.join(sorted(FORMATS))} (COG, NetCDF, Zarr, PNG quick-look)")
    return fmt


def resolve_layer(fmt: str, layer: str | None) -> tuple[str, ...]:
    """The layers a format writes for ``--layer`` (None → both, except a COG: reef_probability)."""
    if layer is None:
        layer = "reef_probability" if fmt == "cog" else "both"
    if layer not in LAYER_CHOICES:
        raise UnknownLayer(f"unknown layer {layer!r}; choose one of {', '.join(LAYER_CHOICES)}")
    if layer == "both":
        if fmt == "cog":
            raise InvalidParameter("a GeoTIFF export holds one layer: choose --layer reef_probability or "
                                   "--layer classification (or export both to .nc or .zarr)")
        return LAYERS
    return (layer,)


# ------------------------------------------------------------------------------------------------------------
# encodings
# ------------------------------------------------------------------------------------------------------------
def probability_codes(ds):
    """reef_probability as uint8 (lazy): round(p·PROB_SCALE), PROB_NODATA where there is no probability (nodata,
    an unfinished tile, outside the polygon)."""
    import xarray as xr

    p = ds["reef_probability"]
    return xr.where(p.isnull(), np.uint8(PROB_NODATA), np.floor(p * PROB_SCALE + 0.5)).astype(np.uint8)


def unfinished_codes(ds):
    """The probability COG's ``unfinished`` band (lazy uint8): PROB_SCALE where the pixel's tile is unfinished
    (decoding to 1 with the probability's scale), else 0."""
    import xarray as xr

    if "tile_state" not in ds:
        return xr.zeros_like(ds["reef_probability"], dtype=np.uint8)
    st = ds["tile_state"]
    return xr.where(~is_finished(st) & (st != OUTSIDE), np.uint8(PROB_SCALE), np.uint8(0)).astype(np.uint8)


#: the root attributes that mark a Zarr store as an export of this module (``_cf_dataset``)
EXPORT_MARK = {"source": "reefmap", "title": "reefmap query result"}


def check_output(path, fmt: str, overwrite: bool, store=None) -> str:
    """The absolute local path to write a ``fmt`` export to, or an error naming the path; nothing is touched.

    Never onto the queried ``store`` (a local map path), inside it or onto a folder holding it (paths resolved,
    symlinks followed). An existing output is replaced only with ``overwrite`` and only when it is what this
    export writes: a regular file for ``.tif``/``.nc``/``.png``, a Zarr store written by ``export`` for ``.zarr``.
    """
    s = os.fspath(path)
    if not urls.is_local(s):
        raise InvalidParameter(f"output {s!r}: exports are written to local paths only")
    p = urls.normalize(s.rstrip("/"))
    if store is not None and urls.is_local(store):
        out, src = os.path.realpath(p), os.path.realpath(urls.local_path(store))
        if os.path.commonpath([out, src]) in (out, src):
            where = "is" if out == src else "is inside" if os.path.commonpath([out, src]) == src else "holds"
            raise InvalidParameter(f"output {p!r} {where} the queried map {urls.local_path(store)!r}: writing there "
                                   "would destroy the map (nothing was written); choose an output outside it")
    if os.path.lexists(p):
        if not overwrite:
            raise OutputExists(f"output {p!r} already exists; pass --overwrite (overwrite=True) to replace it "
                               "(nothing was written)")
        why = _not_replaceable(p, fmt)
        if why:
            raise OutputExists(f"output {p!r} exists and is {why}, which --overwrite does not replace (it replaces "
                               f"only an earlier {fmt} export); nothing was written: choose another output, or "
                               "remove it yourself")
    parent = os.path.dirname(p) or "."
    if not os.path.isdir(parent):
        raise InvalidParameter(f"output folder {parent!r} does not exist; create it first")
    return p


def _not_replaceable(path: str, fmt: str) -> str | None:
    """Why the existing ``path`` is not an earlier ``fmt`` export (None when it is one)."""
    if os.path.islink(path):
        return "a symbolic link"
    if fmt != "zarr":
        return None if os.path.isfile(path) else "a folder" if os.path.isdir(path) else "not a regular file"
    if not os.path.isdir(path):
        return "not a folder"
    try:
        with open(os.path.join(path, "zarr.json")) as f:
            attrs = json.load(f).get("attributes", {})
    except (OSError, ValueError, AttributeError):
        attrs = {}
    if any(attrs.get(k) != v for k, v in EXPORT_MARK.items()):
        return "a folder that is not a Zarr export of reefmap query" + (" (it is a reefmap map)" if "reefmap" in attrs else "")
    return None


def _replace(tmp: str, final: str) -> None:
    if os.path.lexists(final):
        if os.path.isdir(final) and not os.path.islink(final):
            shutil.rmtree(final)
        else:
            os.remove(final)
    os.replace(tmp, final)


def _discard(tmp: str) -> None:
    if os.path.isdir(tmp) and not os.path.islink(tmp):
        shutil.rmtree(tmp, ignore_errors=True)
    elif os.path.lexists(tmp):
        os.remove(tmp)


def export(ds, path, *, layer: str | None = None, overwrite: bool = False) -> str:
    """Write ``ds`` (a ``reefmap.query`` result, or any Dataset of its layers with a ``.rio`` CRS) to ``path`` in
    the format its extension names; returns the path written."""
    fmt = output_format(path)
    layers = resolve_layer(fmt, layer)
    missing = [v for v in layers if v not in ds]
    if missing:
        raise UnknownLayer(f"layer(s) {missing} were not queried (the result has "
                           f"{[v for v in ds.data_vars if v in LAYERS]}); query them too")
    if geobox_of(ds) is None:
        raise InvalidParameter("the dataset has no CRS (ds.rio.crs is None); write one with ds.rio.write_crs(...)")
    final = check_output(path, fmt, overwrite, ds.attrs.get("store"))
    d, name = os.path.split(final)
    tmp = os.path.join(d, f".{name}.tmp-{uuid.uuid4().hex[:8]}" + (os.path.splitext(name)[1] if fmt != "zarr" else ".zarr"))
    try:
        {"cog": _write_cog, "netcdf": _write_netcdf, "zarr": _write_zarr, "png": _write_png}[fmt](ds, tmp, layers)
        _replace(tmp, final)
    except BaseException:
        _discard(tmp)
        raise
    return final


# ------------------------------------------------------------------------------------------------------------
# COG
# ------------------------------------------------------------------------------------------------------------
class _BandWriter:
    """A ``da.store`` target writing (band, y, x) blocks (all the bands) into an open rasterio dataset."""

    def __init__(self, dst):
        self.dst = dst

    def __setitem__(self, key, value):
        from rasterio.windows import Window as RWindow

        _, rows, cols = key
        self.dst.write(np.asarray(value), window=RWindow(cols.start, rows.start, cols.stop - cols.start,
                                                         rows.stop - rows.start))


def _colormap(scheme: ClassScheme) -> dict:
    from reefmap.viz.quicklook import PENDING_RGB, palette

    cmap = {code: (*rgb, 255) for code, rgb in palette(scheme).items()}
    cmap[UNFINISHED] = (*PENDING_RGB, 255)
    return cmap


def _complete_fraction(ds) -> float:
    return float(ds.attrs.get("complete_fraction", 1.0))


def _write_cog(ds, out: str, layers) -> None:
    import dask.array as da
    import rasterio
    from rasterio.shutil import copy as rio_copy

    (layer,) = layers
    gb = geobox_of(ds)
    if layer == "reef_probability":
        bands, nodata, resampling = [probability_codes(ds), unfinished_codes(ds)], PROB_NODATA, "AVERAGE"
    else:
        bands, nodata, resampling = [ds["classification"]], CLASS_NODATA, "MODE"
    data = da.stack([b.data if hasattr(b.data, "rechunk") else da.from_array(b.data) for b in bands])
    stage = out + ".stage.tif"
    profile = {"driver": "GTiff", "width": gb.shape.x, "height": gb.shape.y, "count": len(bands), "dtype": "uint8",
               "crs": gb.crs, "transform": gb.transform, "nodata": nodata, "tiled": True, "blockxsize": 256,
               "blockysize": 256, "compress": "deflate", "BIGTIFF": "IF_SAFER"}
    try:
        with rasterio.open(stage, "w", **profile) as dst:
            da.store(data.rechunk({0: -1, 1: 1024, 2: 1024}), _BandWriter(dst), lock=True)
            dst.set_band_description(1, layer)
            tags = {"LAYER": layer, "NODATA_VALUE": str(nodata),
                    "COMPLETE_FRACTION": f"{_complete_fraction(ds):.6f}", "REEFMAP_STORE": str(ds.attrs.get("store", "")),
                    "REEFMAP_LEVEL": str(ds.attrs.get("level", 0))}
            if layer == "reef_probability":
                dst.set_band_description(2, "unfinished")
                dst.scales, dst.offsets = (1.0 / PROB_SCALE,) * 2, (0.0,) * 2
                tags["ENCODING"] = (f"band 1: probability = value / {PROB_SCALE}, {nodata} = no probability (nodata, "
                                    f"unfinished tile or outside the polygon); band 2 unfinished: value / {PROB_SCALE} "
                                    "= 1 where the pixel's tile is not finished yet, 0 elsewhere")
            else:
                scheme = scheme_of_attrs(ds["classification"].attrs)
                dst.write_colormap(1, _colormap(scheme))
                tags["UNFINISHED_VALUE"] = str(UNFINISHED)
                tags["ENCODING"] = "; ".join(f"{c}={n}" for c, n in [(CLASS_NODATA, "nodata"),
                                                                     *zip(scheme.codes, scheme.names),
                                                                     (UNFINISHED, "unfinished")])
                tags["REEF_CLASSES"] = "; ".join(scheme.reef)
            dst.update_tags(**tags)
        rio_copy(stage, out, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=256, OVERVIEWS="AUTO",
                 OVERVIEW_RESAMPLING=resampling, BIGTIFF="IF_SAFER")
    finally:
        if os.path.exists(stage):
            os.remove(stage)


def _expected_first_ifd(path) -> tuple[int, bytes | None]:
    """Where the main IFD must start: right after the TIFF header (8 bytes, BigTIFF 16) and, when present,
    GDAL's structural-metadata block (``GDAL_STRUCTURAL_METADATA_SIZE=nnnnnn bytes\\n`` + nnnnnn bytes)."""
    with open(path, "rb") as f:
        head = f.read(16 + 64)
    big = head[2:4] in (b"+\x00", b"\x00+")
    hsize = 16 if big else 8
    rest = head[hsize:]
    key = b"GDAL_STRUCTURAL_METADATA_SIZE="
    if not rest.startswith(key):
        return hsize, None
    line_end = rest.index(b"\n") + 1
    n = int(rest[len(key):len(key) + 6])
    with open(path, "rb") as f:
        f.seek(hsize + line_end)
        ghost = f.read(n)
    end = hsize + line_end + n
    return end + (end % 2), ghost  # TIFF IFDs start on a word boundary


def validate_cog(path) -> list[str]:
    """Problems that keep ``path`` from being a valid Cloud-Optimized GeoTIFF (empty list: valid).

    The checks of GDAL's ``validate_cloud_optimized_geotiff.py`` (the COG layout rules), read through rasterio:
    a GeoTIFF; tiled; internal overviews, each tiled, sorted and with increasing IFD offsets; the main IFD
    right after the header (offset 8, or 16 for BigTIFF) and GDAL's structural-metadata block; image data after all IFDs, smallest overview's data
    first and the full resolution's last; plus GDAL's ``LAYOUT=COG`` structure tag.
    """
    import rasterio

    errors: list[str] = []
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="FALSE"):
        with rasterio.open(path) as src:
            if src.driver != "GTiff":
                return [f"not a GeoTIFF (driver {src.driver})"]
            if any(os.path.basename(f).endswith(".ovr") for f in src.files):
                errors.append("overviews are in an external .ovr file; they must be internal")
            big = src.width > 512 or src.height > 512
            tiled = src.block_shapes[0][1] != src.width or src.height == 1
            if big and not tiled:
                errors.append("image larger than 512 px but not tiled")
            ovs = src.overviews(1)
            if big and not ovs:
                errors.append("image larger than 512 px but has no internal overviews")
            if ovs != sorted(ovs) or any(f <= 1 for f in ovs):
                errors.append(f"overview factors {ovs} are not increasing decimations")
            if src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") != "COG":
                errors.append("GDAL's IMAGE_STRUCTURE LAYOUT tag is not COG")
            ifd = [int(src.get_tag_item("IFD_OFFSET", "TIFF", bidx=1))]
            want, ghost = _expected_first_ifd(path)
            if ifd[0] != want:
                errors.append(f"main IFD at byte {ifd[0]}, not right after the header"
                              f"{' and GDAL structural metadata' if ghost else ''} (byte {want})")
            if ghost is not None and (b"LAYOUT=IFDS_BEFORE_DATA" not in ghost or b"KNOWN_INCOMPATIBLE_EDITION=NO" not in ghost):
                errors.append("GDAL structural metadata does not declare LAYOUT=IFDS_BEFORE_DATA with no incompatible edits")
            for i in range(len(ovs)):
                ifd.append(int(src.get_tag_item("IFD_OFFSET", "TIFF", bidx=1, ovr=i)))
                if ifd[-1] < ifd[-2]:
                    errors.append(f"IFD of overview {i} (byte {ifd[-1]}) precedes the previous IFD (byte {ifd[-2]})")
            data = [int(src.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1) or 0)]
            data += [int(src.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1, ovr=i) or 0) for i in range(len(ovs))]
            if not data[0]:
                errors.append("no data offset for the first block")
            if data[-1] < ifd[-1]:
                errors.append("the first data block comes before the last IFD (IFDs must all come first)")
            for i in range(len(data) - 1, 0, -1):
                if data[i - 1] < data[i]:
                    errors.append(f"data of level {i - 1} comes before that of the smaller level {i} "
                                  "(smallest overview first, full resolution last)")
    for i in range(len(ovs)):
        with rasterio.open(path, OVERVIEW_LEVEL=i) as o:
            if (o.width >= 512 or o.height >= 512) and o.block_shapes[0][1] == o.width:
                errors.append(f"overview {i} is not tiled")
    return errors


# ------------------------------------------------------------------------------------------------------------
# NetCDF and Zarr
# ------------------------------------------------------------------------------------------------------------
def _cf_dataset(ds, layers):
    gb = geobox_of(ds)
    a = ds.attrs
    ds = ds[[*layers, *(["tile_state"] if "tile_state" in ds else [])]]
    ds = ds.rio.write_crs(gb.crs).rio.write_coordinate_system()
    ds = ds.rio.write_transform(gb.transform)
    attrs = {"Conventions": "CF-1.8", **EXPORT_MARK,
             "reefmap_store": str(a.get("store", "")), "reefmap_level": int(a.get("level", 0)),
             "reefmap_resolution": float(a.get("resolution", max(abs(gb.transform.a), abs(gb.transform.e)))),
             "complete_fraction": float(a.get("complete_fraction", 1.0)),
             "unfinished_code": UNFINISHED, "outside_geometry_code": OUTSIDE,
             "comment": "reef_probability decodes to NaN for nodata and for unfinished tiles; classification "
                        f"{UNFINISHED} and tile_state tell unfinished tiles apart (tile_state {OUTSIDE} = outside "
                        "the query polygon)"}
    if a.get("bbox_lonlat") is not None:
        attrs["bbox_lonlat"] = [float(v) for v in a["bbox_lonlat"]]
    ds.attrs = attrs
    for v in ds.data_vars:
        ds[v].attrs = {k: val for k, val in ds[v].attrs.items() if k != "valid_range"}
        ds[v].attrs["grid_mapping"] = "spatial_ref"
        ds[v].encoding = {}
    return ds


def _encoding(ds, fmt: str, chunk: int) -> dict:
    enc = {}
    ny, nx = ds.sizes["y"], ds.sizes["x"]
    for v in ds.data_vars:
        e: dict = {}
        if v == "reef_probability":
            e.update(dtype="uint8", scale_factor=1.0 / PROB_SCALE, add_offset=0.0, _FillValue=PROB_NODATA)
        else:
            e.update(dtype="uint8")
        if fmt == "netcdf":
            e.update(zlib=True, complevel=4, chunksizes=(min(chunk, ny), min(chunk, nx)))
        enc[v] = e
    return enc


def _write_netcdf(ds, out: str, layers) -> None:
    try:
        import netCDF4  # noqa: F401
    except ImportError:  # pragma: no cover - an install without the NetCDF backend
        raise InvalidParameter("writing .nc needs the netCDF4 package (pip install netCDF4); "
                               "or export to .zarr / .tif") from None
    ds = _cf_dataset(ds, layers)
    ds.to_netcdf(out, engine="netcdf4", format="NETCDF4", encoding=_encoding(ds, "netcdf", 512))


def _write_zarr(ds, out: str, layers) -> None:
    ds = _cf_dataset(ds, layers)
    c = 1024
    ds = ds.chunk({"y": c, "x": c})
    ds.to_zarr(out, mode="w-", zarr_format=3, consolidated=False, encoding=_encoding(ds, "zarr", c))


# ------------------------------------------------------------------------------------------------------------
# PNG
# ------------------------------------------------------------------------------------------------------------
def _write_png(ds, out: str, layers, max_size: int = 1024) -> None:
    from reefmap.viz.quicklook import quicklook_png

    a = ds.attrs
    b = a.get("bbox_lonlat")
    where = f"bbox {', '.join(f'{v:g}' for v in b)}" if b is not None else "whole map"
    store = os.path.basename(str(a.get("store", "")).rstrip("/")) or "map"
    title = f"{store} · {where}" + (" · polygon" if a.get("has_geometry") else "")
    sub = (f"level {a.get('level', 0)} · {100 * _complete_fraction(ds):.1f}% of the pixels in finished tiles · "
           f"{ds.sizes['y']} x {ds.sizes['x']} px")
    quicklook_png(out, ds[[*layers, *(["tile_state"] if "tile_state" in ds else [])]], title=title, subtitle=sub,
                  max_size=max_size)
