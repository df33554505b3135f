"""The one map renderer: every reefmap PNG (demo quick-look, query export, progress map, notebook) is drawn here.

One style: a title (and subtitle), one or more map panels side by side, each with a lon/lat graticule labelled in
degrees (whatever the map's CRS), a scale bar in km and, for probability, a colour bar; a legend naming every
colour underneath, and the CRS written at the bottom. Nodata is transparent over a hatched background (never the
colour of any value); small maps are enlarged (nearest neighbour, whole pixels) so the map area is at least
``MIN_SIZE`` pixels on its long side. Built on matplotlib's object API (``Figure`` + the Agg canvas): no pyplot,
no global state.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np

from reefmap.errors import InvalidParameter
from reefmap.geometry.grid import GeoBox, Shape

DPI = 100
#: the map area of a picture is enlarged to at least this many pixels on its long side
MIN_SIZE = 600
#: the nodata background: white with grey hatching
NODATA_FACE = (255, 255, 255)
NODATA_HATCH = (150, 150, 150)
#: the probability colour map (matplotlib name) and the colour of unfinished tiles in every picture
PROBABILITY_CMAP = "viridis"
UNFINISHED_RGB = (90, 90, 90)
TEXT_RGB = (30, 30, 30)

_PAD = 12                     # px around everything
_Y_LABELS = 84                # px left of a panel for the latitude labels
_X_LABELS = 26                # px under a panel for the longitude labels
_COLORBAR = 16                # px width of a colour bar ...
_COLORBAR_SPACE = 78          # ... and the space it takes with its labels
_TITLE, _SUBTITLE, _PANEL_TITLE = 26, 20, 22
_LEGEND_ROW, _CRS_LINE = 24, 22
_MIN_WIDTH = 640


@dataclass(frozen=True)
class LegendItem:
    """One legend entry: a colour (RGB 0..255) and its label; ``hatch`` draws the nodata pattern instead."""

    label: str
    rgb: tuple[int, int, int]
    hatch: bool = False


@dataclass(frozen=True)
class MapPanel:
    """One map of a picture: an RGBA image (alpha 0 = nodata), its title, whether a probability colour bar goes
    beside it, and outlines to draw over it (shapely geometries in the map's CRS, e.g. coastlines)."""

    rgba: np.ndarray
    title: str = ""
    colorbar: bool = False
    outlines: tuple = ()
    outline_rgb: tuple[int, int, int] = (120, 120, 120)


@dataclass(frozen=True)
class Picture:
    """What ``render_map`` wrote: the PNG's path and size, and each panel's map area (left, top, width, height) in
    image pixels; ``zoom`` image pixels per map pixel."""

    path: str
    width: int
    height: int
    zoom: int
    map_boxes: tuple[tuple[int, int, int, int], ...] = field(default_factory=tuple)

    def __str__(self) -> str:
        return self.path

    def __fspath__(self) -> str:
        return self.path


def nodata_legend() -> LegendItem:
    return LegendItem("nodata", NODATA_FACE, hatch=True)


def unfinished_legend() -> LegendItem:
    return LegendItem("unfinished (tile not mapped yet)", UNFINISHED_RGB)


def geobox_of(ds) -> GeoBox | None:
    """The grid of an xarray object with x/y coordinates and a ``.rio`` CRS (None without a CRS). The transform
    written on the object is used when its coordinates agree with it (exact), else it is recomputed from them
    (e.g. after a strided ``isel``)."""
    # TODO(merge): this belongs in reefmap.geometry (e.g. GeoBox.from_xarray) once that layer offers it
    import rioxarray  # noqa: F401  (registers .rio)

    crs = ds.rio.crs
    if crs is None:
        return None
    ny, nx = int(ds.sizes["y"]), int(ds.sizes["x"])
    t = ds.rio.transform()
    if nx > 1 and ny > 1:
        dx, dy = float(ds.x[1] - ds.x[0]), float(ds.y[1] - ds.y[0])
        if not (math.isclose(dx, t.a, rel_tol=1e-6) and math.isclose(dy, t.e, rel_tol=1e-6)):
            t = ds.rio.transform(recalc=True)
    return GeoBox(Shape(ny, nx), t, crs.to_wkt())


def probability_rgba(p: np.ndarray, unfinished: np.ndarray | None = None) -> np.ndarray:
    """RGBA of reef probabilities in [0, 1] (NaN: nodata, transparent; ``unfinished``: the unfinished grey)."""
    from matplotlib import colormaps

    p = np.asarray(p, np.float64)
    rgba = (colormaps[PROBABILITY_CMAP](np.clip(np.nan_to_num(p), 0.0, 1.0)) * 255).round().astype(np.uint8)
    rgba[..., 3] = np.where(np.isnan(p), 0, 255)
    if unfinished is not None:
        rgba[unfinished] = (*UNFINISHED_RGB, 255)
    return rgba


def categorical_rgba(codes: np.ndarray, colours: dict[int, tuple[int, int, int]]) -> np.ndarray:
    """RGBA of integer codes by a code → RGB table; codes not in it are transparent (nodata)."""
    lut = np.zeros((256, 4), np.uint8)
    for code, rgb in colours.items():
        lut[int(code)] = (*rgb, 255)
    return lut[np.asarray(codes, np.uint8)]


# ------------------------------------------------------------------------------------------------------------
# the renderer
# ------------------------------------------------------------------------------------------------------------
def render_map(path, geobox: GeoBox | None, panels: list[MapPanel], *, title: str = "", subtitle: str = "",
               legend: list[LegendItem] = (), min_size: int = MIN_SIZE, note: str = "") -> Picture:
    """Draw ``panels`` (all on ``geobox``'s grid; None: an ungeoreferenced pixel grid) into the PNG ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not panels:
        raise InvalidParameter("render_map needs at least one panel")
    h0, w0 = panels[0].rgba.shape[:2]
    zoom = max(1, math.ceil(min_size / max(h0, w0))) if max(h0, w0) < min_size else 1
    mw, mh = w0 * zoom, h0 * zoom
    has_titles = any(p.title for p in panels)
    top = _PAD + (_TITLE if title else 0) + (_SUBTITLE if subtitle else 0) + (_PANEL_TITLE if has_titles else 4)
    lefts, x = [], _PAD
    for p in panels:
        x += _Y_LABELS
        lefts.append(x)
        x += mw + (_COLORBAR_SPACE if p.colorbar else 0)
    width = max(x + _PAD + 8, _MIN_WIDTH)
    ncol, rows = _legend_grid(legend, width - 2 * _PAD)
    bottom = _X_LABELS + 8 + rows * _LEGEND_ROW + _CRS_LINE + _PAD
    height = top + mh + bottom

    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    boxes = []
    for p, left in zip(panels, lefts):
        ax = fig.add_axes((left / width, (height - top - mh) / height, mw / width, mh / height))
        _draw_panel(fig, ax, p, geobox, (w0, h0))
        boxes.append((left, top, mw, mh))
        if p.colorbar:
            cax = fig.add_axes(((left + mw + 10) / width, (height - top - mh) / height, _COLORBAR / width, mh / height))
            _colorbar(fig, cax)
    y = height - _PAD
    if title:
        fig.text(_PAD / width, y / height, title, fontsize=13, weight="bold", va="top", color=_c(TEXT_RGB))
        y -= _TITLE
    if subtitle:
        fig.text(_PAD / width, y / height, subtitle, fontsize=10, va="top", color=_c((70, 70, 70)))
    if legend:
        _legend(fig, legend, ncol, (_PAD / width, (_CRS_LINE + _PAD + rows * _LEGEND_ROW) / height))
    crs_text = "CRS: " + (_crs_label(geobox.crs) if geobox is not None else "none (pixel grid)")
    fig.text(_PAD / width, _PAD / height, crs_text + (f"   ·   {note}" if note else ""), fontsize=9, va="bottom",
             color=_c((70, 70, 70)))
    path = os.fspath(path)
    fig.savefig(path, format="png", dpi=DPI, facecolor="white")
    return Picture(path, width, height, zoom, tuple(boxes))


def _c(rgb) -> tuple[float, ...]:
    return tuple(v / 255 for v in rgb)


def _draw_panel(fig, ax, panel: MapPanel, geobox: GeoBox | None, size: tuple[int, int]) -> None:
    from matplotlib.patches import Rectangle

    w0, h0 = size
    if geobox is not None:
        b = geobox.bounds
        extent = (b.left, b.right, b.bottom, b.top)
    else:
        extent = (0, w0, h0, 0)
    x0, x1, y0, y1 = extent
    ax.add_patch(Rectangle((min(x0, x1), min(y0, y1)), abs(x1 - x0), abs(y1 - y0), facecolor=_c(NODATA_FACE),
                           edgecolor=_c(NODATA_HATCH), hatch="////", linewidth=0, zorder=0))
    ax.imshow(panel.rgba, extent=extent, origin="upper", interpolation="nearest", aspect="auto", zorder=1,
              resample=False)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.tick_params(labelsize=9, length=3, colors=_c(TEXT_RGB))
    for s in ax.spines.values():
        s.set_color(_c((60, 60, 60)))
    if len(panel.outlines):
        _draw_outlines(ax, panel.outlines, panel.outline_rgb)
    if panel.title:
        ax.set_title(panel.title, fontsize=11, loc="left", pad=5, color=_c(TEXT_RGB))
    if geobox is None:
        ax.set_xlabel("column", fontsize=9)
        ax.set_ylabel("row", fontsize=9)
        return
    _graticule(ax, geobox)
    _scale_bar(ax, geobox)


def _draw_outlines(ax, geoms, rgb) -> None:
    """The boundaries of polygons (or lines) as crisp 1-px lines in one colour."""
    import shapely
    from matplotlib.collections import LineCollection

    lines = shapely.get_parts(shapely.boundary(np.asarray(geoms, dtype=object)))
    lines = shapely.get_parts(lines[~shapely.is_empty(lines)])
    segs = [shapely.get_coordinates(g) for g in lines]
    ax.add_collection(LineCollection([s for s in segs if len(s) > 1], colors=[_c(rgb)], linewidths=72 / DPI,
                                     antialiaseds=False, zorder=3))


def _colorbar(fig, cax) -> None:
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    cb = fig.colorbar(ScalarMappable(norm=Normalize(0.0, 1.0), cmap=colormaps[PROBABILITY_CMAP]), cax=cax)
    cb.set_label("reef probability", fontsize=10)
    cb.ax.tick_params(labelsize=9)


def _legend_grid(items, avail: int) -> tuple[int, int]:
    """(columns, rows) of the legend: as many columns as fit in ``avail`` px (matplotlib fills column by column)."""
    if not items:
        return 1, 0
    widths = [48 + 7.5 * len(i.label) for i in items]  # px at fontsize 10: handle, pads and spacing + text
    for ncol in range(len(items), 0, -1):
        # matplotlib splits the entries into ``ncol`` columns whose lengths differ by one at most, longer ones first
        sizes = [len(items) // ncol + (k < len(items) % ncol) for k in range(ncol)]
        starts = [sum(sizes[:k]) for k in range(ncol)]
        if sum(max(widths[a:a + n]) for a, n in zip(starts, sizes)) <= avail:
            return ncol, sizes[0]
    return 1, len(items)


def _legend(fig, items: list[LegendItem], ncol: int, anchor) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=_c(i.rgb), edgecolor=_c(NODATA_HATCH) if i.hatch else _c((60, 60, 60)),
                     hatch="////" if i.hatch else None, linewidth=0.8, label=i.label) for i in items]
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=anchor, ncol=ncol, frameon=False, fontsize=10,
               handlelength=1.6, handleheight=1.1, columnspacing=1.4, borderaxespad=0.0, borderpad=0.0,
               labelspacing=0.45)


def _crs_label(crs: str) -> str:
    from pyproj import CRS

    try:
        c = CRS.from_user_input(crs)
        epsg = c.to_epsg()
        return f"EPSG:{epsg} ({c.name})" if epsg else c.name
    except Exception:  # pragma: no cover - an unparsable CRS is written as given
        return str(crs)[:80]


# ------------------------------------------------------------------------------------------------------------
# lon/lat graticule and scale bar (any CRS: lines of constant lon/lat are contours of the inverse projection)
# ------------------------------------------------------------------------------------------------------------
_STEPS = (90, 60, 30, 20, 10, 5, 2, 1, 0.5, 0.25, 0.2, 0.1, 0.05, 0.025, 0.02, 0.01, 0.005, 0.0025, 0.002, 0.001,
          0.0005, 0.00025, 0.0002, 0.0001)


def _lonlat_grid(geobox: GeoBox, n: int = 65):
    """x, y vectors over the map and lon, lat on their grid (lon unwrapped west to east; NaN where undefined)."""
    from pyproj import CRS, Transformer

    b = geobox.bounds
    xs, ys = np.linspace(b.left, b.right, n), np.linspace(b.bottom, b.top, n)
    xx, yy = np.meshgrid(xs, ys)
    c = CRS.from_user_input(geobox.crs)
    if c.is_geographic:
        lon, lat = xx.copy(), yy.copy()
    else:
        tr = Transformer.from_crs(c, c.geodetic_crs, always_xy=True)
        lon, lat = (np.asarray(v, np.float64) for v in tr.transform(xx, yy))
    bad = ~(np.isfinite(lon) & np.isfinite(lat)) | (np.abs(lon) > 1e9)
    lon[bad], lat[bad] = np.nan, np.nan
    if not c.is_geographic:  # a map crossing the antimeridian: continue east past 180°
        filled = np.where(np.isnan(lon), 0.0, lon)
        lon = np.where(bad, np.nan, np.degrees(np.unwrap(np.radians(filled), axis=1)))
    return xs, ys, xx, yy, lon, lat


def _ticks(lo: float, hi: float, most: int) -> tuple[list[float], float]:
    """Round tick values in [lo, hi]: the largest step giving 3..``most`` ticks (else 2, else 1)."""
    options = []
    for s in _STEPS:
        first = math.ceil(lo / s - 1e-9) * s
        n = int((hi - first) / s + 1e-9) + 1 if hi >= first else 0
        if n > most:
            break
        options.append((s, first, n))
    for need in (3, 2, 1):
        for s, first, n in options:
            if n >= need:
                return [round(first + i * s, 10) for i in range(n)], s
    return [], _STEPS[0]


def _decimals(step: float) -> int:
    text = f"{step:.6f}".rstrip("0")
    return len(text.split(".")[1]) if "." in text else 0


def lon_label(v: float, decimals: int = 0) -> str:
    v = (v + 180.0) % 360.0 - 180.0
    if abs(v) < 1e-9 or abs(abs(v) - 180.0) < 1e-9:
        return f"{abs(v):.{decimals}f}°"
    return f"{abs(v):.{decimals}f}°{'E' if v > 0 else 'W'}"


def lat_label(v: float, decimals: int = 0) -> str:
    if abs(v) < 1e-9:
        return f"{0:.{decimals}f}°"
    return f"{abs(v):.{decimals}f}°{'N' if v > 0 else 'S'}"


def _edge_ticks(values: np.ndarray, positions: np.ndarray, ticks: list[float]) -> list[tuple[float, float]]:
    """Where along an edge (positions) the values cross each tick: [(position, tick)]."""
    ok = np.isfinite(values)
    v, p = values[ok], positions[ok]
    if len(v) < 2:
        return []
    if v[0] > v[-1]:
        v, p = v[::-1], p[::-1]
    if np.any(np.diff(v) <= 0):
        return []
    return [(float(np.interp(t, v, p)), t) for t in ticks if v[0] <= t <= v[-1]]


def _graticule(ax, geobox: GeoBox) -> None:
    import warnings

    xs, ys, xx, yy, lon, lat = _lonlat_grid(geobox)
    if not np.isfinite(lon).any():
        return
    w_px, h_px = ax.bbox.width, ax.bbox.height
    lon_ticks, lon_step = _ticks(np.nanmin(lon), np.nanmax(lon), int(max(3, min(7, w_px // 150))))
    lat_ticks, lat_step = _ticks(np.nanmin(lat), np.nanmax(lat), int(max(3, min(7, h_px // 90))))
    style = {"colors": [(0.1, 0.1, 0.1, 0.5)], "linewidths": 0.6, "linestyles": "dashed", "zorder": 2}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no contour levels were found" on a map too small for a line
        for field_, ticks in ((lon, lon_ticks), (lat, lat_ticks)):
            if len(ticks) and np.isfinite(field_).sum() > 3:
                ax.contour(xx, yy, np.ma.masked_invalid(field_), levels=ticks, **style)
    bx = _edge_ticks(lon[0], xs, lon_ticks)
    ly = _edge_ticks(lat[:, 0], ys, lat_ticks)
    dx, dy = _decimals(lon_step), _decimals(lat_step)
    ax.set_xticks([p for p, _ in bx], [lon_label(t, dx) for _, t in bx])
    ax.set_yticks([p for p, _ in ly], [lat_label(t, dy) for _, t in ly])
    b = geobox.bounds
    ax.set_xlim(b.left, b.right)
    ax.set_ylim(b.bottom, b.top)


def _metres_per_unit(geobox: GeoBox, frac_y: float) -> tuple[float, float] | None:
    """Ground metres per CRS x unit along the row at ``frac_y`` of the height, and that row's latitude."""
    from pyproj import CRS, Geod, Transformer

    b = geobox.bounds
    y = b.bottom + frac_y * (b.top - b.bottom)
    xc, dx = (b.left + b.right) / 2, (b.right - b.left) / 1000
    c = CRS.from_user_input(geobox.crs)
    if c.is_geographic:
        (lon0, lon1), (lat0, lat1) = (xc - dx / 2, xc + dx / 2), (y, y)
    else:
        tr = Transformer.from_crs(c, c.geodetic_crs, always_xy=True)
        (lon0, lon1), (lat0, lat1) = tr.transform([xc - dx / 2, xc + dx / 2], [y, y])
    if not all(map(math.isfinite, (lon0, lon1, lat0, lat1))):
        return None
    ell = c.ellipsoid
    geod = Geod(a=ell.semi_major_metre, b=ell.semi_minor_metre) if ell is not None else Geod(ellps="WGS84")
    d = geod.inv(lon0, lat0, lon1, lat1)[2]
    return (d / dx, lat0) if d > 0 else None


def _scale_bar(ax, geobox: GeoBox) -> None:
    from matplotlib.font_manager import FontProperties
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    mid = _metres_per_unit(geobox, 0.5)
    if mid is None:
        return
    mpu, lat = mid
    b = geobox.bounds
    width_m = (b.right - b.left) * mpu
    want = width_m / 5
    k = 10 ** math.floor(math.log10(want))
    length = max(m * k for m in (1, 2, 5) if m * k <= want)
    label = f"{length / 1000:g} km" if length >= 1000 else f"{length:g} m"
    rows = [m for m in (_metres_per_unit(geobox, f) for f in (0.02, 0.98)) if m is not None] + [mid]
    if max(m[0] for m in rows) > 1.05 * min(m[0] for m in rows):
        label += f" (at {lat_label(round(lat))})"  # the scale changes across the map (e.g. Web Mercator)
    bar = AnchoredSizeBar(ax.transData, length / mpu, label, "lower left", pad=0.35, borderpad=0.6, sep=3,
                          color="black", frameon=True, size_vertical=(b.top - b.bottom) * 0.008,
                          fontproperties=FontProperties(size=9))
    bar.patch.set_facecolor((1, 1, 1, 0.85))
    bar.patch.set_edgecolor((0.4, 0.4, 0.4))
    bar.set_zorder(4)
    ax.add_artist(bar)
