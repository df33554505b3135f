"""Write a query result to a file, by extension: ``.tif`` Cloud-Optimized GeoTIFF, ``.nc`` NetCDF (CF),
``.zarr`` Zarr v3, ``.png`` a quick-look picture with a legend.

Encodings (probability p is stored as the map stores it: ``round(p · 250)``):

- **COG** (one layer per file; GDAL's COG driver, DEFLATE, 256-px tiles, internal overviews):
  ``reef_probability`` uint8 0..250 with band scale 1/250, **254 = unfinished tile**, nodata 255;
  ``classification`` uint8 codes 0..5 with a colour table, **254 = unfinished tile**, nodata 0. The tags
  ``UNFINISHED_VALUE=254``, ``COMPLETE_FRACTION``, ``LAYER`` say so. Overviews: classification by MODE;
  probability by AVERAGE when the export is complete, else NEAREST (so that averaging never blends the 254
  flag into probabilities).
- **NetCDF** (netCDF4/HDF5, zlib) and **Zarr**: the layers asked for plus ``tile_state`` (always), each with CF
  attributes and ``grid_mapping = "spatial_ref"`` (a CF grid-mapping variable with ``crs_wkt``);
  ``reef_probability`` packed as uint8 (``scale_factor`` 0.004, ``_FillValue`` 255: it decodes to float with NaN
  for nodata *and* unfinished), ``classification`` with flag 254 = unfinished, ``tile_state`` with the tile states
  (255 = outside the polygon).
- **PNG**: class colours (unfinished in grey) and/or reef probability (a colour ramp; unfinished grey, nodata
  black), with a legend.

An existing output is refused (``OutputExists``, nothing is touched) unless ``overwrite=True``; outputs are
written to a temporary sibling first and moved into place only when complete.
"""

from __future__ import annotations

import os
import shutil
import uuid

import numpy as np

from reefmap.classes import CLASSES
from reefmap.errors import InvalidParameter, OutputExists, UnsupportedFormat
from reefmap.store.format import CLASS_NODATA, PROB_NODATA, PROB_SCALE
from reefmap.products.query import _FINISHED, LAYERS, OUTSIDE, UNFINISHED, QueryResult, UnknownLayer

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
def probability_codes(result: QueryResult):
    """reef_probability as uint8 (lazy): round(p·250), 254 unfinished, 255 nodata / outside the polygon."""
    import xarray as xr

    ds = result.dataset
    st = ds["tile_state"]
    p = ds["reef_probability"]
    code = xr.where(p.isnull(), np.uint8(PROB_NODATA), np.floor(p * PROB_SCALE + 0.5))
    unfinished = ~st.isin(list(_FINISHED)) & (st != OUTSIDE)
    return xr.where(unfinished, np.uint8(UNFINISHED), code).astype(np.uint8)


def _check_output(path, overwrite: bool) -> str:
    from reefmap.store.mapstore import _is_url, _normalise_url

    s = os.fspath(path)
    if _is_url(s):
        raise InvalidParameter(f"output {s!r}: exports are written to local paths only")
    p = _normalise_url(s.rstrip("/"))
    if os.path.lexists(p) and not overwrite:
        raise OutputExists(f"output {p!r} already exists; pass --overwrite (overwrite=True) to replace it "
                           "(nothing was written)")
    parent = os.path.dirname(p) or "."
    if not os.path.isdir(parent):
        raise InvalidParameter(f"output folder {parent!r} does not exist; create it first")
    return p


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


def export(result: QueryResult, path, *, layer: str | None = None, overwrite: bool = False) -> str:
    """Write ``result`` to ``path`` in the format its extension names; returns the path written."""
    fmt = output_format(path)
    layers = resolve_layer(fmt, layer)
    missing = [v for v in layers if v not in result.dataset]
    if missing:
        raise UnknownLayer(f"layer(s) {missing} were not queried (the result has {list(result.layers)}); "
                           "query them too")
    final = _check_output(path, overwrite)
    d, name = os.path.split(final)
    tmp = os.path.join(d, f".{name}.tmp-{uuid.uuid4().hex[:8]}" + (os.path.splitext(name)[1] if fmt != "zarr" else ".zarr"))
    try:
        {"cog": _write_cog, "netcdf": _write_netcdf, "zarr": _write_zarr, "png": _write_png}[fmt](result, tmp, layers)
        _replace(tmp, final)
    except BaseException:
        _discard(tmp)
        raise
    return final


# ------------------------------------------------------------------------------------------------------------
# COG
# ------------------------------------------------------------------------------------------------------------
class _BandWriter:
    """A ``da.store`` target writing blocks into band 1 of an open rasterio dataset."""

    def __init__(self, dst):
        self.dst = dst

    def __setitem__(self, key, value):
        from rasterio.windows import Window as RWindow

        rows, cols = key
        self.dst.write(np.asarray(value), 1, window=RWindow(cols.start, rows.start, cols.stop - cols.start,
                                                            rows.stop - rows.start))


def _colormap() -> dict:
    from reefmap.viz.quicklook import PALETTE, PENDING_RGB

    cmap = {code: (*rgb, 255) for code, rgb in PALETTE.items()}
    cmap[UNFINISHED] = (*PENDING_RGB, 255)
    return cmap


def _write_cog(result: QueryResult, out: str, layers) -> None:
    import dask.array as da
    import rasterio
    from rasterio.shutil import copy as rio_copy

    (layer,) = layers
    gb = result.geobox
    if layer == "reef_probability":
        data, nodata = probability_codes(result).data, PROB_NODATA
        resampling = "AVERAGE" if result.complete else "NEAREST"
    else:
        data, nodata = result.dataset["classification"].data, CLASS_NODATA
        resampling = "MODE"
    stage = out + ".stage.tif"
    profile = {"driver": "GTiff", "width": gb.shape.x, "height": gb.shape.y, "count": 1, "dtype": "uint8",
               "crs": gb.crs, "transform": gb.transform, "nodata": nodata, "tiled": True, "blockxsize": 256,
               "blockysize": 256, "compress": "deflate", "BIGTIFF": "IF_SAFER"}
    try:
        with rasterio.open(stage, "w", **profile) as dst:
            da.store(data.rechunk({0: 1024, 1: 1024}), _BandWriter(dst), lock=True)
            dst.set_band_description(1, layer)
            tags = {"LAYER": layer, "UNFINISHED_VALUE": str(UNFINISHED), "NODATA_VALUE": str(nodata),
                    "COMPLETE_FRACTION": f"{result.complete_fraction:.6f}", "REEFMAP_STORE": result.store,
                    "REEFMAP_LEVEL": str(result.level)}
            if layer == "reef_probability":
                dst.scales, dst.offsets = (1.0 / PROB_SCALE,), (0.0,)
                tags["ENCODING"] = f"probability = value / {PROB_SCALE}; {UNFINISHED} = unfinished tile; {nodata} = nodata"
            else:
                dst.write_colormap(1, _colormap())
                tags["ENCODING"] = (" ".join(f"{c}={n}" for n, c in [("nodata", CLASS_NODATA), *CLASSES.items()])
                                    + f" {UNFINISHED}=unfinished")
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
def _cf_dataset(result: QueryResult, layers):
    ds = result.dataset[[*layers, "tile_state"]]
    ds = ds.rio.write_crs(result.crs).rio.write_coordinate_system()
    ds = ds.rio.write_transform(result.geobox.transform)
    attrs = {"Conventions": "CF-1.8", "title": "reefmap query result", "source": "reefmap",
             "reefmap_store": result.store, "reefmap_level": int(result.level),
             "reefmap_resolution": float(result.resolution), "complete_fraction": float(result.complete_fraction),
             "unfinished_code": UNFINISHED, "outside_geometry_code": OUTSIDE,
             "comment": "reef_probability decodes to NaN for nodata and for unfinished tiles; classification "
                        f"{UNFINISHED} and tile_state tell unfinished tiles apart (tile_state {OUTSIDE} = outside "
                        "the query polygon)"}
    if result.bbox is not None:
        attrs["bbox_lonlat"] = [float(v) for v in result.bbox]
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


def _write_netcdf(result: QueryResult, out: str, layers) -> None:
    try:
        import netCDF4  # noqa: F401
    except ImportError:  # pragma: no cover - an install without the NetCDF backend
        raise InvalidParameter("writing .nc needs the netCDF4 package (pip install netCDF4); "
                               "or export to .zarr / .tif") from None
    ds = _cf_dataset(result, layers)
    ds.to_netcdf(out, engine="netcdf4", format="NETCDF4", encoding=_encoding(ds, "netcdf", 512))


def _write_zarr(result: QueryResult, out: str, layers) -> None:
    ds = _cf_dataset(result, layers)
    c = 1024
    ds = ds.chunk({"y": c, "x": c})
    ds.to_zarr(out, mode="w-", zarr_format=3, consolidated=False, encoding=_encoding(ds, "zarr", c))


# ------------------------------------------------------------------------------------------------------------
# PNG
# ------------------------------------------------------------------------------------------------------------
_RAMP = np.array([(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)], np.float64)


def _ramp(codes: np.ndarray) -> np.ndarray:
    """uint8 probability codes → RGB (0..250 on a colour ramp, 254 unfinished grey, 255 nodata black)."""
    from reefmap.viz.quicklook import PENDING_RGB

    t = np.clip(codes.astype(np.float64) / PROB_SCALE, 0, 1) * (len(_RAMP) - 1)
    i = np.minimum(t.astype(int), len(_RAMP) - 2)
    f = (t - i)[..., None]
    rgb = (_RAMP[i] * (1 - f) + _RAMP[i + 1] * f).round().astype(np.uint8)
    rgb[codes == PROB_NODATA] = (0, 0, 0)
    rgb[codes == UNFINISHED] = PENDING_RGB
    return rgb


def render_png(path, classification: np.ndarray | None = None, probability_codes: np.ndarray | None = None, *,
               title: str = "") -> str:
    """A quick-look PNG: class colours (``reefmap.viz.quicklook`` palette, unfinished in its pending grey) and/or
    the reef probability ramp, side by side, with a legend naming every colour."""
    from PIL import Image, ImageDraw

    from reefmap.viz.quicklook import PALETTE, PENDING_RGB, colorize

    panels = []
    if classification is not None:
        rgb = colorize(classification)
        rgb[classification == UNFINISHED] = PENDING_RGB
        panels.append(rgb)
    if probability_codes is not None:
        panels.append(_ramp(probability_codes))
    if not panels:
        raise InvalidParameter("nothing to draw: give a classification and/or a probability layer")
    h = panels[0].shape[0]
    gap = np.full((h, 8, 3), 255, np.uint8)
    body = np.concatenate([x for p in panels for x in (p, gap)][:-1], axis=1)
    rows = 1 + (probability_codes is not None)
    legend_h = 24 * rows + 6
    top = 18 if title else 0
    img = Image.new("RGB", (max(body.shape[1], 620), top + h + legend_h), (255, 255, 255))
    img.paste(Image.fromarray(body), (0, top))
    d = ImageDraw.Draw(img)
    if title:
        d.text((4, 3), title, fill=(0, 0, 0))
    y = top + h + 6
    x = 4
    entries = [("nodata", PALETTE[0])]
    if classification is not None:
        entries += [(name, PALETTE[code]) for name, code in CLASSES.items()]
    entries.append(("unfinished", PENDING_RGB))
    for name, rgb in entries:
        d.rectangle([x, y, x + 14, y + 14], fill=tuple(rgb), outline=(0, 0, 0))
        d.text((x + 18, y + 1), name, fill=(0, 0, 0))
        x += 26 + 7 * len(name)
    if probability_codes is not None:
        y += 24
        d.text((4, y + 1), "reef probability 0", fill=(0, 0, 0))
        bar = _ramp(np.linspace(0, PROB_SCALE, 200).astype(np.uint8)[None, :].repeat(14, 0))
        img.paste(Image.fromarray(bar), (130, y))
        d.text((336, y + 1), "1", fill=(0, 0, 0))
    img.save(path, format="PNG")
    return str(path)


def _write_png(result: QueryResult, out: str, layers, max_size: int = 1024) -> None:
    ds = result.dataset
    step = max(1, int(np.ceil(max(result.geobox.shape) / max_size)))
    sl = {"y": slice(None, None, step), "x": slice(None, None, step)}
    cls = ds["classification"].isel(sl).values if "classification" in layers else None
    prob = probability_codes(result).isel(sl).values if "reef_probability" in layers else None
    b = result.bbox
    where = f"bbox {', '.join(f'{v:g}' for v in b)}" if b is not None else "whole map"
    title = (f"{os.path.basename(result.store.rstrip('/'))} · {where} · level {result.level} · "
             f"{100 * result.complete_fraction:.1f}% complete")
    render_png(out, cls, prob, title=title)
