"""Calibration/validation of reef maps against truth: ``calval(maps, truth, out_dir, ...)`` → a report directory.

Inputs, all brought onto the *validated grid* (the first map's grid, over each region's window):

- **maps** (models): reefmap stores (``open_map``); a map on another grid is resampled nearest-neighbour onto the
  validated grid. Unfinished pixels (pending/failed tiles) and map nodata are excluded and counted.
- **truth**: a label raster (GeoTIFF or Zarr of class codes, with its nodata; reprojected nearest-neighbour when on
  another grid/CRS), vector polygons (GeoJSON or GeoPackage with a class attribute: codes or class names;
  rasterised by pixel centre; pixels under no polygon are nodata unless ``background`` gives their code), or an
  ``xarray.DataArray`` with a CRS (e.g. ``reefmap.synthetic_truth(...)``, the synthetic world's truth). Truth
  codes outside the class scheme are refused, listed.
- **regions**: the map's extent, or named lon/lat boxes / polygons; each is reported on its own, and pooled ("all").
- **baselines**: other maps scored the same way: a reefmap store, a GeoTIFF of class codes, or a vector reef
  layer (lines/polygons, e.g. Natural Earth reefs) buffered by ``buffer_m`` metres and rasterised as reef (the
  rest "not reef"; such a baseline is scored reef vs not reef, with the truth reduced to reef vs not reef).
  Only products with a ``reef_probability`` (reefmap stores) get an ECE.

Each product is scored on its own evaluated pixels: truth has a class there, and the product has a prediction there.
What the numbers mean: ``reefmap.products.calval_metrics``. Regions are read whole into memory (validation sites,
not the globe: at most ``MAX_REGION_PX`` pixels each).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from reefmap.classes import ClassScheme, NODATA
from reefmap.errors import BBoxError, InvalidParameter, TruthError
from reefmap.geometry.areas import area_model
from reefmap.geometry.crs import transform_bounds
from reefmap.geometry.grid import BBox, GeoBox, Window
from reefmap.geometry.vector import VECTOR_EXTS, class_features, rasterize, read_features, to_crs
from reefmap.products.calval_metrics import Tally, metric_value
from reefmap.products.mapview import MapInfo, inspect_map, open_map
from reefmap.products.query import geometry_bbox, geometry_from, mask_block, parse_bbox, store_shapes
from reefmap.store.format import CLASS_NODATA

#: the largest region (pixels of the validated grid) read into memory
MAX_REGION_PX = 200_000_000
#: the metric the ranked table sorts by, unless another is asked for
DEFAULT_RANK_BY = "reef.f1"
#: a reef-only product (a vector reef layer) is scored on these two codes
BINARY_CODES, BINARY_NAMES, BINARY_REEF = (0, 1), ("not_reef", "reef"), (1,)


def scheme_of(map_) -> ClassScheme:
    """The class scheme of a map (a store path/URL or ``MapInfo``): the one it recorded at creation."""
    return (map_ if isinstance(map_, MapInfo) else inspect_map(map_)).scheme


@dataclass(frozen=True)
class Region:
    """A validation region: the map's extent (``bbox`` and ``geometry`` None), a lon/lat box, or a lon/lat polygon."""

    name: str
    bbox: BBox | None = None
    geometry: Any = None

    def describe(self) -> dict:
        if self.geometry is not None:
            return {"name": self.name, "kind": "polygon", "bbox_lonlat": list(geometry_bbox(self.geometry))}
        if self.bbox is not None:
            return {"name": self.name, "kind": "box", "bbox_lonlat": list(self.bbox)}
        return {"name": self.name, "kind": "map extent", "bbox_lonlat": None}


def parse_region(spec) -> list[Region]:
    """``NAME=W,S,E,N`` (a lon/lat box), ``NAME=FILE.geojson`` (one polygon region) or ``FILE.geojson`` (one region
    per feature, named by its ``name`` property, else ``region<i>``); a ``Region`` passes through."""
    if isinstance(spec, Region):
        return [spec]
    name, sep, rest = str(spec).partition("=")
    if not sep:
        name, rest = "", str(spec)
    if not name and "," not in rest:
        return _regions_of_file(rest)
    if "," in rest:
        return [Region(name or "box", bbox=parse_bbox(rest))]
    return [Region(name, geometry=geometry_from(rest))]


def _regions_of_file(path: str) -> list[Region]:
    feats, _ = read_features(path, what="region file")
    out = []
    for i, (g, props) in enumerate(feats):
        out.append(Region(str(props.get("name", f"region{i + 1}")), geometry=geometry_from(g)))
    if not out:
        raise InvalidParameter(f"region file {path!r} has no features; give Polygon features with a 'name' property")
    return out


# ------------------------------------------------------------------------------------------------------------
# rasters onto the validated grid
# ------------------------------------------------------------------------------------------------------------
def onto_grid(da, gb: GeoBox, fill) -> np.ndarray:
    """A 2-D ``DataArray`` (with ``.rio`` CRS) on the grid ``gb``: sliced when on the same lattice, else reprojected
    nearest-neighbour; ``fill`` where it has no pixel."""
    import rioxarray  # noqa: F401  (registers .rio)
    from rasterio.enums import Resampling

    from reefmap.viz.render import geobox_of

    src = geobox_of(da)
    if src is None:
        raise TruthError(f"raster {da.name!r} has no CRS; write one (da.rio.write_crs) or give a georeferenced file")
    out = np.full(tuple(gb.shape), fill, da.dtype)
    st, t = src.transform, gb.transform
    col, row = ~st @ (t.c, t.f)
    if src.crs == gb.crs and np.isclose(st.a, t.a) and np.isclose(st.e, t.e) and abs(col - round(col)) < 1e-6 \
            and abs(row - round(row)) < 1e-6:
        r0, c0 = int(round(row)), int(round(col))
        win = Window(r0, r0 + gb.shape.y, c0, c0 + gb.shape.x)
        inside = win.intersect(Window(0, src.shape.y, 0, src.shape.x))
        if inside is not None:
            out[inside.relative_to(win).slices] = np.asarray(da.isel(y=slice(inside.row_start, inside.row_stop),
                                                                     x=slice(inside.col_start, inside.col_stop)).values)
        return out
    box = transform_bounds(gb.bounds, gb.crs, src.crs)
    if box is None:
        return out
    pad = 2 * max(abs(st.a), abs(st.e))
    try:
        sub = da.rio.clip_box(box[0] - pad, box[1] - pad, box[2] + pad, box[3] + pad)
    except Exception:  # rioxarray's NoDataInBounds / OneDimensionalRaster: nothing of it under the grid
        return out
    sub = sub.rio.write_nodata(fill, encoded=False)
    res = sub.rio.reproject(gb.crs, shape=tuple(gb.shape), transform=gb.transform, resampling=Resampling.nearest,
                            nodata=fill)
    return np.asarray(res.values)


def warp_file(path: str, gb: GeoBox, nodata, what: str) -> tuple[np.ndarray, Any]:
    """Band 1 of a raster file on ``gb`` (nearest neighbour) and its nodata (``nodata`` overrides the file's)."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    if "://" not in path and not os.path.exists(path):
        raise TruthError(f"{what} file {path!r} does not exist; give a GeoTIFF/Zarr of class codes or a GeoJSON/"
                         "GeoPackage of class polygons")
    try:
        with rasterio.open(path) as src:
            if src.crs is None:
                raise TruthError(f"{what} raster {path!r} has no CRS; assign one (gdal_edit.py -a_srs EPSG:...)")
            nod = src.nodata if nodata is None else nodata
            nod = NODATA if nod is None else nod
            out = np.full(tuple(gb.shape), nod, src.dtypes[0])
            reproject(rasterio.band(src, 1), out, src_nodata=nod, dst_transform=gb.transform, dst_crs=gb.crs,
                      dst_nodata=nod, resampling=Resampling.nearest)
    except TruthError:
        raise
    except Exception as e:  # rasterio/GDAL: not a raster, truncated, unreadable
        raise TruthError(f"{what} file {path!r} cannot be read ({type(e).__name__}: {e}); give a readable GeoTIFF "
                         "or Zarr of class codes, or a GeoJSON/GeoPackage of class polygons") from None
    return out, nod


def open_zarr_raster(path: str, what: str):
    import rioxarray  # noqa: F401
    import xarray as xr

    try:
        ds = xr.open_zarr(path, consolidated=False)
        name = next(v for v in ds.data_vars if ds[v].dims[-2:] == ("y", "x"))
        da = ds[name].squeeze(drop=True)
        if da.rio.crs is None and "spatial_ref" in ds:
            da = da.rio.write_crs(ds["spatial_ref"].attrs.get("crs_wkt"))
    except Exception as e:  # zarr/xarray: not a store, no (y, x) variable
        raise TruthError(f"{what} Zarr {path!r} cannot be read ({type(e).__name__}: {e}); give a Zarr with a (y, x) "
                         "class-code variable and a CRS") from None
    return da


# ------------------------------------------------------------------------------------------------------------
# truth
# ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Truth:
    """Where the truth is and how to read it (see ``calval``)."""

    source: Any
    attribute: str = "class"
    nodata: int | None = None
    background: int | None = None

    def describe(self) -> dict:
        src = self.source if isinstance(self.source, (str, os.PathLike)) else \
            f"<{type(self.source).__name__} {getattr(self.source, 'attrs', {}).get('long_name', '')}>".replace(" >", ">")
        return {"source": os.fspath(src) if isinstance(src, os.PathLike) else src, "attribute": self.attribute,
                "nodata": self.nodata, "background": self.background}

    def read(self, gb: GeoBox, scheme: ClassScheme) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(codes, valid, reef objects or None) on ``gb``; ``TruthError`` for codes outside the scheme."""
        src = self.source
        if isinstance(src, (str, os.PathLike)) and os.fspath(src).lower().endswith(VECTOR_EXTS):
            return self._read_vector(os.fspath(src), gb, scheme)
        if isinstance(src, (str, os.PathLike)):
            path = os.fspath(src)
            if path.rstrip("/").endswith(".zarr") or os.path.isdir(path):
                da = open_zarr_raster(path, "truth")
                nod = self.nodata if self.nodata is not None else da.rio.nodata
                nod = NODATA if nod is None else nod
                codes = onto_grid(da, gb, nod)
            else:
                codes, nod = warp_file(path, gb, self.nodata, "truth")
        else:
            import rioxarray  # noqa: F401

            nod = self.nodata if self.nodata is not None else src.attrs.get("_FillValue", src.rio.nodata)
            nod = NODATA if nod is None else nod
            codes = onto_grid(src, gb, nod)
        valid = codes != nod
        if isinstance(nod, float) and np.isnan(nod):
            valid = ~np.isnan(codes)
        check_codes(codes[valid], scheme, f"truth {self.describe()['source']!r}")
        return np.where(valid, codes, 0).astype(np.uint8), valid, None

    def _read_vector(self, path: str, gb: GeoBox, scheme: ClassScheme):
        geoms, codes, crs = class_features(path, self.attribute, scheme, what="truth",
                                           hint="name the class attribute with --truth-attribute")
        geoms = to_crs(geoms, crs, gb.crs)
        fill = 255 if self.background is None else self.background
        raster = rasterize(zip(geoms, codes), gb, fill, "uint8")
        reef = [(g, i + 1) for i, (g, c) in enumerate(zip(geoms, codes)) if c in scheme.reef_codes]
        objects = rasterize(reef, gb, 0, "int32")
        valid = raster != 255
        if self.background is not None:
            check_codes(np.array([self.background]), scheme, "truth background")
        return np.where(valid, raster, 0).astype(np.uint8), valid, objects


def check_codes(values: np.ndarray, scheme: ClassScheme, what: str) -> None:
    found, counts = np.unique(values, return_counts=True)
    bad = [(v, n) for v, n in zip(found.tolist(), counts.tolist()) if v not in scheme.codes]
    if bad:
        listed = ", ".join(f"{v} ({n} px)" for v, n in bad[:20]) + (" ..." if len(bad) > 20 else "")
        raise TruthError(f"{what} has codes not in the class scheme: {listed}; the scheme's codes are "
                         f"{dict(zip(scheme.names, scheme.codes))} (give its nodata with --truth-nodata, or recode it)")


# ------------------------------------------------------------------------------------------------------------
# products (maps and baselines) onto the validated grid
# ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Product:
    """A map or baseline to score: a reefmap store, a GeoTIFF of class codes, or a vector reef layer (buffered
    by ``buffer_m`` metres)."""

    name: str
    source: Any
    kind: str = "model"          # "model" or "baseline"
    buffer_m: float = 0.0

    @property
    def is_vector(self) -> bool:
        return isinstance(self.source, (str, os.PathLike)) and os.fspath(self.source).lower().endswith(VECTOR_EXTS)

    def read(self, gb: GeoBox, region_lonlat: BBox, scheme: ClassScheme):
        """(codes, has-prediction, unfinished, reef probability or None) on ``gb``."""
        src = os.fspath(self.source) if isinstance(self.source, os.PathLike) else self.source
        if self.is_vector:
            return self._read_vector(src, gb, region_lonlat), np.ones(tuple(gb.shape), bool), None, None
        if isinstance(src, str) and not src.lower().endswith((".tif", ".tiff", ".vrt")):
            ds = open_map(src)
            cls = onto_grid(ds["classification"], gb, CLASS_NODATA)
            prob = onto_grid(ds["reef_probability"], gb, np.float32(np.nan))
            unfinished = ~np.isin(cls, (CLASS_NODATA, *scheme.codes))
            return cls, (cls != CLASS_NODATA) & ~unfinished, unfinished, prob
        codes, nod = warp_file(src, gb, None, f"{self.kind} {self.name!r}")
        valid = codes != nod
        check_codes(codes[valid], scheme, f"{self.kind} {self.name!r}")
        return codes.astype(np.uint8), valid, None, None

    def _read_vector(self, path: str, gb: GeoBox, region: BBox) -> np.ndarray:
        """1 (reef) inside the buffered reef geometries, 0 (not reef) elsewhere."""
        import shapely

        feats, crs = read_features(path, what=f"baseline {self.name!r}")
        geoms = [g for g, _ in feats]
        pad = self.buffer_m / 90_000.0 + 0.01  # degrees (≥ metres/111 km at any latitude below ~35°) + a margin
        clip = shapely.box(region.left - pad, region.bottom - pad, region.right + pad, region.top + pad)
        geoms = [g for g in to_crs(geoms, crs, "EPSG:4326") if g.intersects(clip)]
        if self.buffer_m > 0 and geoms:
            lon, lat = (region.left + region.right) / 2, (region.bottom + region.top) / 2
            local = f"+proj=aeqd +lat_0={lat} +lon_0={lon} +datum=WGS84 +units=m"
            geoms = to_crs([g.buffer(self.buffer_m) for g in to_crs(geoms, "EPSG:4326", local)], local, "EPSG:4326")
        return rasterize(((g, 1) for g in to_crs(geoms, "EPSG:4326", gb.crs)), gb, 0, "uint8")


# ------------------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------------------
def region_window(region: Region, map_gb: GeoBox, what: str) -> tuple[Window, np.ndarray]:
    """The map window of a region and its pixel mask there (pixels whose centre is inside a polygon)."""
    if region.bbox is None and region.geometry is None:
        return Window(0, map_gb.shape.y, 0, map_gb.shape.x), None
    box = region.bbox if region.geometry is None else geometry_bbox(region.geometry)
    try:
        win = map_gb.window_of_bbox(box, what=what)
    except BBoxError as e:
        raise BBoxError(f"validation region {region.name!r}: {e}") from None
    if region.geometry is None:
        return win, None
    shapes = store_shapes(region.geometry, map_gb.crs)
    mask = mask_block(shapes, map_gb.to_json(), slice(win.row_start, win.row_stop), slice(win.col_start, win.col_stop))
    if not mask.any():
        raise BBoxError(f"validation region {region.name!r} covers no pixel centre of {what}; give a larger polygon")
    return win, mask


def score_region(region: Region, map_gb: GeoBox, map_url: str, truth: Truth, products: list[Product],
                 scheme: ClassScheme) -> tuple[dict, dict[str, Tally], dict]:
    """Read one region and tally every product there; returns (region record, tallies, arrays for pictures)."""
    win, mask = region_window(region, map_gb, f"the map {map_url!r}")
    if win.shape.y * win.shape.x > MAX_REGION_PX:
        raise InvalidParameter(f"validation region {region.name!r} is {win.shape.y}x{win.shape.x} px, more than "
                               f"{MAX_REGION_PX:,} px; give smaller regions (--region NAME=W,S,E,N)")
    gb = map_gb.window(win)
    inside = np.ones(tuple(gb.shape), bool) if mask is None else mask
    t_codes, t_valid, t_objects = truth.read(gb, scheme)
    t_valid &= inside
    if not t_valid.any():
        raise BBoxError(f"validation region {region.name!r} ({region.describe()['kind']}, map window rows "
                        f"{win.row_start}:{win.row_stop}, cols {win.col_start}:{win.col_stop}) has no truth pixel: "
                        f"the truth {truth.describe()['source']!r} has no class there; give a region the truth covers")
    area = area_model(gb).block(slice(0, gb.shape.y), slice(0, gb.shape.x))
    lonlat = gb.geographic_bounds()
    tallies, preds = {}, {}
    for prod in products:
        codes, has_pred, unfinished, prob = prod.read(gb, lonlat, scheme)
        binary = prod.is_vector
        evaluated = t_valid & has_pred
        if binary:
            tally = Tally(BINARY_CODES)
            truth_codes = np.isin(t_codes, scheme.reef_codes).astype(np.uint8)
            tally.add(truth_codes, codes, evaluated, area, BINARY_REEF, t_objects)
        else:
            tally = Tally(scheme.codes).add(t_codes, codes, evaluated, area, scheme.reef_codes, t_objects,
                                            None if prob is None else prob)
        n_unf = int((t_valid & unfinished).sum()) if unfinished is not None else 0
        tally.pixels = {"region": int(inside.sum()), "truth_nodata": int((inside & ~t_valid).sum()),
                        "unfinished": n_unf, "product_nodata": int((t_valid & ~has_pred).sum()) - n_unf,
                        "evaluated": int(evaluated.sum())}
        tallies[prod.name] = tally
        preds[prod.name] = (codes, has_pred, unfinished, binary)
    record = {**region.describe(), "window": win.to_json(), "shape": list(gb.shape), "grid": gb.to_json(),
              "area_method": area_model(gb).method}
    return record, tallies, {"geobox": gb, "truth": (t_codes, t_valid), "inside": inside, "products": preds}


@dataclass(frozen=True)
class Site:
    """One validated grid: ``maps`` {name: store} (the first one's grid is validated), the ``truth`` there and
    its ``regions`` (None: the first map's extent). A site's regions are reported as ``SITE/REGION``."""

    name: str
    maps: dict
    truth: Truth
    regions: tuple | None = None


def calval(maps, truth, out_dir, *, regions=None, baselines=None, buffer_m: float = 1000.0,
           truth_attribute: str = "class", truth_nodata: int | None = None, truth_background: int | None = None,
           rank_by: str = DEFAULT_RANK_BY, pictures: bool = True) -> dict:
    """Validate ``maps`` against ``truth`` per region, score ``baselines`` the same way, and write a report
    directory ``out_dir`` (``report.json``, ``report.md``, PNGs). Returns the report (the JSON's content).

    ``maps``: a store path/URL, a list of them, or a {name: store} dict (names default to the store's file name);
    the first map's grid is the validated grid. ``truth``: a label raster path (GeoTIFF, Zarr), a vector path
    (GeoJSON, GeoPackage; ``truth_attribute`` holds class codes or names; ``truth_background``: the code of pixels
    under no polygon, default nodata), or an ``xarray.DataArray`` with a CRS; ``truth_nodata`` overrides its nodata
    (default: the file's, else 0). ``regions``: None (the first map's extent) or a list of ``NAME=W,S,E,N``, GeoJSON
    files or ``Region``s. ``baselines``: {name: path} (reefmap store, GeoTIFF of class codes, or a vector reef layer
    buffered by ``buffer_m`` metres). ``rank_by``: a metric path of the report (default ``reef.f1``).
    """
    site = Site("", named(maps, "map"), Truth(truth, truth_attribute, truth_nodata, truth_background), regions)
    return calval_sites([site], out_dir, baselines=baselines, buffer_m=buffer_m, rank_by=rank_by, pictures=pictures)


def calval_sites(sites: list[Site], out_dir, *, baselines=None, buffer_m: float = 1000.0,
                 rank_by: str = DEFAULT_RANK_BY, pictures: bool = True) -> dict:
    """``calval`` over several validated grids (``Site``s, e.g. the scenes of a training set), each with its own
    maps and truth: every region is reported on its own, and each product's regions are pooled ("all regions")
    into the one ranked table. A product (map name) may be missing at a site (e.g. models validated on different
    held-out regions): it is scored where it has a map; the baselines are scored at every site."""
    from reefmap.products.calval_report import write_report

    t0 = time.perf_counter()
    if not sites or not all(site.maps for site in sites):
        raise InvalidParameter("give at least one map to validate (at every site)")
    names = list(dict.fromkeys(n for site in sites for n in site.maps))
    base = named(baselines or {}, "baseline")
    if len(set(names) | set(base)) != len(names) + len(base):
        raise InvalidParameter(f"product names {names + list(base)} repeat; name them NAME=PATH")
    records, pooled, shown, grids, products = [], {}, [], [], {}
    scheme = None
    for site in sites:
        site_products = [Product(n, s, "model") for n, s in site.maps.items()]
        site_products += [Product(n, s, "baseline", float(buffer_m)) for n, s in base.items()]
        first = inspect_map(site_products[0].source)
        map_gb = first.grid.geobox
        scheme = scheme or scheme_of(first)
        products |= {p.name: p for p in site_products if p.name not in products}
        grids.append({"site": site.name, "map": first.url, **map_gb.to_json(), "truth": site.truth.describe()})
        region_list = [r for spec in (site.regions or [Region("map extent")]) for r in parse_region(spec)]
        if len({r.name for r in region_list}) != len(region_list):
            raise InvalidParameter(f"region names {[r.name for r in region_list]} repeat; name each region once")
        for region in region_list:
            if site.name:
                region = dataclasses.replace(region, name=f"{site.name}/{region.name}")
            rec, tallies, arrays = score_region(region, map_gb, first.url, site.truth, site_products, scheme)
            rec["products"] = {}
            for p in site_products:
                t = tallies[p.name]
                rec["products"][p.name] = t.metrics(*product_scheme(p, scheme))
                if p.name in pooled:
                    pooled[p.name] += t
                else:
                    pooled[p.name] = t
            records.append(rec)
            shown.append(arrays)
    evaluated = sum(r["shape"][0] * r["shape"][1] for r in records)
    products = [products[n] for n in [*names, *base]]
    report = {
        "format": "reefmap-calval/1",
        "validated_grid": {k: v for k, v in grids[0].items() if k not in ("site", "truth")},
        "scheme": {"codes": list(scheme.codes), "names": list(scheme.names), "colors": list(scheme.colors),
                   "reef_codes": list(scheme.reef_codes)},
        "truth": grids[0]["truth"],
        **({"sites": grids} if len(sites) > 1 else {}),
        "products": [{"name": p.name, "kind": p.kind, "source": os.fspath(p.source) if isinstance(p.source, (str, os.PathLike)) else str(p.source),
                      "binary": p.is_vector, **({"buffer_m": p.buffer_m} if p.is_vector else {})} for p in products],
        "rank_by": rank_by,
        "regions": records,
        "all_regions": {p.name: pooled[p.name].metrics(*product_scheme(p, scheme)) for p in products},
        "definitions": definitions(),
    }
    report["ranking"] = ranking(report, rank_by)
    report["timing"] = {"seconds_metrics": time.perf_counter() - t0, "region_pixels": evaluated}
    write_report(report, shown, out_dir, pictures=pictures)
    report["timing"]["seconds_total"] = time.perf_counter() - t0
    with open(os.path.join(os.fspath(out_dir), "report.json"), "w") as f:
        json.dump(report, f, indent=1, allow_nan=False)
    return report


def product_scheme(p: Product, scheme: ClassScheme) -> tuple:
    """The class names and reef codes a product is scored with (reef vs not reef for a vector reef layer)."""
    return (BINARY_NAMES, BINARY_REEF) if p.is_vector else (scheme.names, scheme.reef_codes)


def named(items, what: str) -> dict:
    """{name: source} from a dict, one source or a list (name = file name without its extension)."""
    if isinstance(items, dict):
        return dict(items)
    if isinstance(items, (str, os.PathLike)):
        items = [items]
    out = {}
    for item in items:
        text = str(os.fspath(item))
        name, sep, path = text.partition("=")
        if not (sep and re.fullmatch(r"[\w.-]+", name)):
            name, path = os.path.splitext(os.path.basename(text.rstrip("/")))[0] or what, text
        out[name] = path
    return out


def ranking(report: dict, metric: str) -> list[dict]:
    """Products sorted by ``metric`` over all regions, best first (undefined last); lower is better for ECE."""
    lower = metric.endswith("ece")
    rows = [{"product": name, "value": metric_value(m, metric)} for name, m in report["all_regions"].items()]
    if all(r["value"] is None for r in rows) and rows:
        known = "reef.f1, reef.area_weighted_f, reef.iou, overall_accuracy, macro_f1, calibration.ece, per_class.NAME.f1"
        if not any(metric_value(m, metric) is not None or metric.split(".")[0] in m for m in report["all_regions"].values()):
            raise InvalidParameter(f"rank_by {metric!r} is not a metric of the report; use one of {known}")
    rows.sort(key=lambda r: (r["value"] is None, (r["value"] if lower else -r["value"]) if r["value"] is not None else 0))
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    return rows


def definitions() -> dict:
    from reefmap.products import calval_metrics

    return {"metrics": " ".join((calval_metrics.__doc__ or "").split()),
            "pixels": "region: pixels of the region; truth_nodata: of those, without a truth class; unfinished: with "
                      "truth but in the product's unfinished tiles; product_nodata: with truth, finished, but no "
                      "prediction (map nodata, outside a baseline's coverage); evaluated: scored pixels"}


__all__ = ["Product", "Region", "Site", "Truth", "calval", "calval_sites", "parse_region", "scheme_of"]
