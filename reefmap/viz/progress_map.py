"""A world map of a store's tile states: ``reefmap status STORE --map progress.png``.

One pixel (or a few) per tile of the store's tile grid, coloured by state — done, skipped, failed, pending
(planned, not finished), not planned — with a legend, and optionally Natural Earth land and coastlines
(the package's ``viz/data/ne_land_110km.json``, Natural Earth land simplified to 0.1° by
``pipelines/make_coastline.py``; or ``$REEFMAP_COASTLINE``). Reads only ``tile_status`` and the recorded plans: no pixels, no torch. Drawn by
``reefmap.viz.render`` (lon/lat graticule, scale bar, CRS, legend).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from reefmap.geometry.grid import GeoBox, Shape
from reefmap.options import get_option
from reefmap.sources import urls
from reefmap.store.format import TileState, is_skipped
from reefmap.store.mapstore import MapStore
from reefmap.viz.render import LegendItem, MapPanel, render_map

COASTLINE_ENV = "REEFMAP_COASTLINE"
#: Natural Earth land (public domain), simplified to 0.1 degrees, shipped with the package
DEFAULT_COASTLINE = Path(__file__).resolve().parent / "data" / "ne_land_110km.json"

# category → (RGB, legend label); drawn in this order in the legend
COLOURS: dict[str, tuple[tuple[int, int, int], str]] = {
    "done": ((31, 158, 68), "done"),
    "skipped": ((92, 132, 204), "skipped (nodata / land / deep water)"),
    "failed": ((220, 30, 30), "failed"),
    "pending": ((245, 176, 40), "pending (planned, not finished)"),
    "sea": ((236, 240, 244), "not planned"),
    "land": ((214, 206, 186), "land (not planned)"),
}
COAST = (120, 120, 120)


@dataclass(frozen=True)
class ProgressMap:
    """What ``progress_png`` drew. ``str()``/``os.fspath()`` give the PNG's path."""

    path: str
    width: int
    height: int
    pixels_per_tile: int
    counts: dict
    planned: int
    percent_finished: float
    coastline: str | None
    map_box: tuple[int, int, int, int] = (0, 0, 0, 0)  # the map area in the PNG: left, top, width, height (px)

    def __str__(self) -> str:
        return self.path

    def __fspath__(self) -> str:
        return self.path

    def to_json(self) -> dict:
        return asdict(self)


def tile_categories(states: np.ndarray, planned: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean arrays per category over the tile grid (each tile in exactly one of done/skipped/failed/pending/other)."""
    done = states == TileState.DONE
    skipped = is_skipped(states)
    failed = states == TileState.FAILED
    pending = planned & ~(done | skipped | failed)
    other = ~(done | skipped | failed | pending)
    return {"done": done, "skipped": skipped, "failed": failed, "pending": pending, "not_planned": other}


def progress_png(store: MapStore | str, path: str | os.PathLike, *, scale: int | None = None,
                 coastline: str | os.PathLike | bool | None = True, title: str | None = None) -> ProgressMap:
    """Draw ``store``'s tile states as a PNG at ``path``; returns the counts, the image size and what was drawn
    (``str()`` of the result is the PNG's path).

    ``scale``: pixels per tile (default: 1 for grids 2048+ tiles wide, more for smaller ones, up to 16).
    ``coastline``: True = the shipped Natural Earth land layer (or ``$REEFMAP_COASTLINE``); a path; or
    False/None for none.
    """
    store = store if isinstance(store, MapStore) else MapStore.open_readonly(store)
    grid = store.grid
    states = store.states()
    planned = store.planned()
    cats = tile_categories(states, planned)
    ny, nx = states.shape
    s = int(scale) if scale else max(1, min(16, 2048 // max(nx, 1)))
    img = np.empty((ny, nx, 3), np.uint8)
    img[:] = COLOURS["sea"][0]
    land_note = None
    land = None
    coast_path = _coastline_path(coastline)
    if coast_path is not None:
        try:
            land, coast = _land(grid, coast_path, s)
            land_note = str(coast_path)
        except Exception as e:  # an overlay problem must never break status
            land_note = f"skipped ({type(e).__name__}: {e})"
    if land is not None:
        land_t = land.reshape(ny, s, nx, s).any(axis=(1, 3)) if s > 1 else land
        img[land_t & cats["not_planned"]] = COLOURS["land"][0]
    for name in ("pending", "skipped", "failed", "done"):
        img[cats[name]] = COLOURS[name][0]
    if s > 1:
        img = np.repeat(np.repeat(img, s, axis=0), s, axis=1)
    counts = {k: int(v.sum()) for k, v in cats.items()}
    n_planned = int(planned.sum())
    finished = int((planned & (cats["done"] | cats["skipped"])).sum())
    pct = 100.0 * finished / n_planned if n_planned else 100.0
    head = title or urls.redact(store.url)
    sub = f"{n_planned} of {grid.count} tiles planned · {pct:.1f}% finished · grid {nx} x {ny} tiles of {grid.tile} px"
    legend = [LegendItem(f"done {counts['done']}", COLOURS["done"][0]),
              LegendItem(f"skipped {counts['skipped']}", COLOURS["skipped"][0]),
              LegendItem(f"failed {counts['failed']}", COLOURS["failed"][0]),
              LegendItem(f"pending {counts['pending']}", COLOURS["pending"][0]),
              LegendItem(f"not planned {counts['not_planned']}", COLOURS["sea"][0])]
    if land is not None:
        legend += [LegendItem("land (Natural Earth)", COLOURS["land"][0]), LegendItem("coastline", COAST)]
    rgba = np.concatenate([img, np.full(img.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    panel = MapPanel(rgba, outlines=tuple(coast) if land is not None else (), outline_rgb=COAST)
    pic = render_map(path, _image_geobox(grid, s), [panel], title=head, subtitle=sub, legend=legend)
    return ProgressMap(str(path), pic.width, pic.height, s, counts, n_planned, round(pct, 2), land_note, pic.map_boxes[0])


def _image_geobox(grid, s: int) -> GeoBox:
    """The grid of the tile image (``s`` pixels per tile; the last tiles drawn whole, as the image has them)."""
    from affine import Affine

    ny, nx = grid.shape
    return GeoBox(Shape(ny * s, nx * s), grid.geobox.transform @ Affine.scale(grid.tile / s), grid.geobox.crs)


def _coastline_path(coastline) -> Path | None:
    if coastline is None or coastline is False:
        return None
    if coastline is True:
        env = get_option("coastline")
        p = Path(env) if env else DEFAULT_COASTLINE
        return p if p.is_file() else None
    p = Path(coastline)
    return p if p.is_file() else None


def _land(grid, path: Path, s: int) -> tuple[np.ndarray, np.ndarray]:
    """Land on the tile image raster (``s`` px per tile) and the land polygons, both in the grid's CRS."""
    import shapely
    from pyproj import Transformer
    from rasterio.features import rasterize

    from reefmap.geometry.webmercator import WEB_MERCATOR_MAX_LAT
    from reefmap.geometry.vector import read_geojson

    geoms, crs = read_geojson(str(path))
    g = grid.geobox
    lon0, lat0, lon1, lat1 = g.geographic_bounds()
    parts = shapely.get_parts(np.asarray(geoms, dtype=object))
    if crs == "EPSG:4326":
        lim = WEB_MERCATOR_MAX_LAT if g.crs == "EPSG:3857" else 90.0
        parts = shapely.clip_by_rect(parts, max(lon0 - 1, -180), max(lat0 - 1, -lim), min(lon1 + 1, 180),
                                     min(lat1 + 1, lim))
        parts = parts[~shapely.is_empty(parts)]
    if crs != g.crs:
        tr = Transformer.from_crs(crs, g.crs, always_xy=True)
        parts = shapely.transform(parts, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
        parts = parts[np.all(np.isfinite(shapely.bounds(parts)), axis=1)]
    ny, nx = grid.shape
    shape = (ny * s, nx * s)
    if not len(parts):
        return np.zeros(shape, bool), parts
    land = rasterize(((p, 1) for p in parts), out_shape=shape, transform=_image_geobox(grid, s).transform, fill=0,
                     dtype="uint8").astype(bool)
    return land, parts
