"""Output grids for global runs, as value objects, and the global-run configuration.

``web_mercator_quads(zoom, tile)`` is the Planet-basemap quad lattice: Web Mercator (EPSG:3857) pixels of
``156543.03392804097 / 2**zoom`` m (4.777 m at zoom 15), cut into quads of ``tile`` px that line up with the
global quad lattice (origin at the top-left corner of the Mercator square, x = -20037508.34 m,
y = +20037508.34 m), keeping only the quad rows that touch ``[lat_min, lat_max]``. Everything is arithmetic
on the affine transform and the shape: nothing is allocated per pixel or per tile, so the 8.4-million-pixel
wide zoom-15 globe is built in microseconds.

``GlobalRunConfig`` is one frozen dataclass for a global-run YAML file (``pipelines/configs/global-l15.yaml``
documents every key); relative paths in it resolve against the file's folder.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from affine import Affine

from reefmap.errors import InvalidParameter
from reefmap.geometry.grid import BBox, GeoBox, Shape, TileGrid, TileIndex

#: Earth radius of the spherical Web Mercator (EPSG:3857), metres.
WEB_MERCATOR_RADIUS = 6378137.0
#: Half the side of the Web Mercator square, metres (pi * R).
WEB_MERCATOR_HALF = math.pi * WEB_MERCATOR_RADIUS  # 20037508.342789244
#: Size of a zoom-0 pixel (the 256-px zoom-0 tile covers the whole square), metres.
ZOOM0_PIXEL = 2 * WEB_MERCATOR_HALF / 256  # 156543.03392804097
#: Latitude of the Mercator square's edge (where y = pi * R).
WEB_MERCATOR_MAX_LAT = math.degrees(2 * math.atan(math.exp(math.pi)) - math.pi / 2)  # 85.0511...

_EPS = 1e-9


def mercator_y(lat: float) -> float:
    """Web Mercator northing (m) of latitude ``lat`` (degrees, clamped to the Mercator square)."""
    lat = max(-WEB_MERCATOR_MAX_LAT, min(WEB_MERCATOR_MAX_LAT, float(lat)))
    return WEB_MERCATOR_RADIUS * math.log(math.tan(math.pi / 4 + math.radians(lat) / 2))


@dataclass(frozen=True)
class QuadLattice:
    """Where a ``web_mercator_quads`` grid sits in the global quad lattice (for naming quads like Planet's)."""

    zoom: int
    tile: int
    row_offset: int  #: global quad row of the grid's first tile row
    quads_x: int  #: quads around the world at this zoom and quad size
    quads_y: int  #: quad rows from pole square edge to pole square edge

    def global_quad(self, idx: TileIndex) -> TileIndex:
        """The global lattice position (row from the north edge, column from -180°) of grid tile ``idx``."""
        return TileIndex(int(idx[0]) + self.row_offset, int(idx[1]))

    def quad_id(self, idx: TileIndex) -> str:
        """Planet-style quad id ``"{x}-{y}"`` (y counted from the south edge, as Planet's basemap quads)."""
        gy, gx = self.global_quad(idx)
        return f"{gx}-{self.quads_y - 1 - gy}"


def web_mercator_quads(zoom: int = 15, tile: int = 4096, lat_min: float = -30.0, lat_max: float = 30.0) -> TileGrid:
    """The Planet-basemap quad grid of ``zoom``: EPSG:3857, ``tile``-px quads on the global lattice, keeping the
    quad rows that touch ``[lat_min, lat_max]`` (every column: the grid always goes round the world).

    >>> g = web_mercator_quads(15, 4096, -30, 30)
    >>> tuple(g.shape), round(g.geobox.resolution_x, 4)
    ((359, 2048), 4.7773)
    """
    zoom, tile = _whole("zoom", zoom, 0, 30), _whole("tile", tile, 1, 1 << 20)
    lat_min, lat_max = _number("lat_min", lat_min), _number("lat_max", lat_max)
    if not -90 <= lat_min < lat_max <= 90:
        raise InvalidParameter(f"lat_min {lat_min} and lat_max {lat_max} must satisfy -90 <= lat_min < lat_max <= 90")
    world_px = 256 * (1 << zoom)  # pixels around the world at this zoom
    if world_px % tile:
        raise InvalidParameter(
            f"tile {tile} px does not divide the zoom-{zoom} world of {world_px} px, so quads would not line up with "
            f"the global lattice; use a power of two up to {world_px} (e.g. 4096 at zoom 15)"
        )
    res = ZOOM0_PIXEL / (1 << zoom)
    quad_m = res * tile
    n_quads = world_px // tile
    top = WEB_MERCATOR_HALF - mercator_y(lat_max)  # distance south of the lattice origin, metres
    bottom = WEB_MERCATOR_HALF - mercator_y(lat_min)
    row0 = max(0, math.floor(top / quad_m + _EPS))
    row1 = min(n_quads, max(row0 + 1, math.ceil(bottom / quad_m - _EPS)))
    transform = Affine(res, 0.0, -WEB_MERCATOR_HALF, 0.0, -res, WEB_MERCATOR_HALF - row0 * quad_m)
    geobox = GeoBox(Shape((row1 - row0) * tile, world_px), transform, "EPSG:3857")
    return TileGrid(geobox, tile)


def quad_lattice(grid: TileGrid) -> QuadLattice | None:
    """The quad lattice a ``web_mercator_quads`` grid lies on (None for any other grid)."""
    g = grid.geobox
    if g.crs != "EPSG:3857" or not g.is_axis_aligned:
        return None
    t = g.transform
    zoom = round(math.log2(ZOOM0_PIXEL / t.a)) if t.a > 0 else -1
    if zoom < 0 or not math.isclose(t.a, ZOOM0_PIXEL / (1 << zoom), rel_tol=1e-12) or not math.isclose(-t.e, t.a, rel_tol=1e-12):
        return None
    quad_m = t.a * grid.tile
    row_off = (WEB_MERCATOR_HALF - t.f) / quad_m
    if not math.isclose(t.c, -WEB_MERCATOR_HALF, abs_tol=1e-3) or abs(row_off - round(row_off)) > 1e-6:
        return None
    world_px = 256 * (1 << zoom)
    return QuadLattice(zoom, grid.tile, int(round(row_off)), world_px // grid.tile, world_px // grid.tile)


def tile_of_lonlat(grid: TileGrid, lon: float, lat: float) -> TileIndex | None:
    """The tile of ``grid`` holding the point (lon, lat), or None when it lies outside the grid."""
    from pyproj import Transformer

    if grid.geobox.crs == "EPSG:4326":
        x, y = lon, lat
    else:
        x, y = Transformer.from_crs("EPSG:4326", grid.geobox.crs, always_xy=True).transform(lon, lat)
    col, row = ~grid.geobox.transform @ (x, y)
    if not (math.isfinite(col) and math.isfinite(row)):
        return None
    r, c = math.floor(row), math.floor(col)
    if not (0 <= r < grid.geobox.shape.y and 0 <= c < grid.geobox.shape.x):
        return None
    return TileIndex(r // grid.tile, c // grid.tile)


def tile_geobox(grid: TileGrid) -> GeoBox:
    """A GeoBox with one pixel per *tile* of ``grid`` (edge tiles count whole): what masks rasterize onto."""
    t = grid.geobox.transform @ Affine.scale(grid.tile, grid.tile)
    return GeoBox(grid.shape, t, grid.geobox.crs)


def grid_from_config(spec: Mapping[str, Any] | TileGrid) -> TileGrid:
    """A ``TileGrid`` from a config mapping:

    * ``{kind: web_mercator_quads, zoom: 15, tile: 4096, lat_min: -30, lat_max: 30}`` (the Planet quad lattice;
      ``kind`` may be left out when ``zoom`` is given), or
    * ``{crs: "EPSG:32618", resolution: 30, bounds: [W, S, E, N], tile: 1024}`` (an explicit north-up grid;
      ``bounds`` in the grid's CRS, ``resolution`` in its units).
    """
    if isinstance(spec, TileGrid):
        return spec
    if not isinstance(spec, Mapping):
        raise InvalidParameter(f"grid must be a mapping (e.g. {{kind: web_mercator_quads, zoom: 15}}), got {spec!r}")
    spec = dict(spec)
    kind = spec.pop("kind", None)
    if kind is None:
        kind = "web_mercator_quads" if "zoom" in spec else "explicit" if "crs" in spec else None
    if kind == "web_mercator_quads":
        _no_unknown("grid (web_mercator_quads)", spec, {"zoom", "tile", "lat_min", "lat_max"})
        return web_mercator_quads(**spec)
    if kind == "explicit":
        _no_unknown("grid (explicit)", spec, {"crs", "resolution", "bounds", "tile"})
        missing = [k for k in ("crs", "resolution", "bounds", "tile") if spec.get(k) is None]
        if missing:
            raise InvalidParameter(f"grid is missing {missing}; an explicit grid needs crs, resolution, bounds "
                                   "(W,S,E,N in the grid CRS) and tile")
        res = _number("grid resolution", spec["resolution"])
        if res <= 0:
            raise InvalidParameter(f"grid resolution {res} must be > 0 (CRS units per pixel)")
        try:
            from pyproj import CRS

            CRS.from_user_input(spec["crs"])
        except Exception as e:  # pyproj.exceptions.CRSError
            raise InvalidParameter(f"grid crs {spec['crs']!r} is not a CRS pyproj knows ({e}); use e.g. EPSG:3857") from None
        gb = GeoBox.from_bbox(BBox.parse(spec["bounds"]), spec["crs"], res)
        return TileGrid(gb, _whole("tile", spec["tile"], 1, 1 << 20))
    raise InvalidParameter(
        f"grid kind {kind!r} is unknown; use kind: web_mercator_quads (zoom, tile, lat_min, lat_max) or an explicit "
        "grid (crs, resolution, bounds, tile)"
    )


def describe_grid(grid: TileGrid) -> dict:
    """JSON-friendly facts about a grid (no per-pixel work)."""
    g = grid.geobox
    geo = g.geographic_bounds()
    d = {
        "crs": g.crs,
        "pixel_size": abs(g.resolution_x),
        "tile_px": grid.tile,
        "tile_size": abs(g.resolution_x) * grid.tile,
        "tiles_wide": grid.shape.x,
        "tiles_tall": grid.shape.y,
        "pixels_wide": g.shape.x,
        "pixels_tall": g.shape.y,
        "bounds": list(g.bounds),
        "lonlat_bounds": [round(v, 6) for v in geo],
    }
    lat = quad_lattice(grid)
    if lat is not None:
        d.update(kind="web_mercator_quads", zoom=lat.zoom, first_quad_row=lat.row_offset)
    return d


# -- the global-run configuration ----------------------------------------------------------------------------
MASK_ENV = "REEFMAP_MASK"  #: environment variable overriding the config's mask path (``--mask`` wins over it)


@dataclass(frozen=True)
class GlobalRunConfig:
    """A global batch run, as read from YAML (see ``pipelines/configs/global-l15.yaml`` for every key).

    ``grid`` is a ``TileGrid``; ``mask`` a path/URL (None: no mask, every tile of the grid/region is planned);
    ``mosaic`` either ``{"path": ...}`` (a real mosaic on exactly this grid) or ``{"synthetic": {...}}`` (the lazy
    synthetic world over the grid).
    """

    grid: TileGrid
    out: str
    mosaic: Mapping[str, Any] = field(default_factory=lambda: {"synthetic": {"seed": 0}})
    mask: str | None = None
    mask_crs: str | None = None
    buffer_km: float = 0.0
    region: BBox | None = None
    model: str | None = None
    halo: int | None = None
    screen: bool = True
    batch: int = 1
    max_in_flight: int | None = None
    block: int | None = None
    cluster_profile: str = "local"
    cluster_jobs: int | None = None
    summary: str | None = None
    log_every_s: float = 60.0
    source: str | None = None  #: the YAML file this came from (for messages)

    KEYS = ("grid", "region", "mask", "mask_crs", "buffer_km", "mosaic", "model", "out", "halo", "screen", "batch",
            "max_in_flight", "block", "cluster", "summary", "log_every_s")

    def __post_init__(self):
        if not isinstance(self.grid, TileGrid):
            object.__setattr__(self, "grid", grid_from_config(self.grid))
        if not self.out:
            raise InvalidParameter(f"{self._where()}no output store: set out: (a path or URL ending in .zarr)")
        if self.region is not None and not isinstance(self.region, BBox):
            object.__setattr__(self, "region", BBox.parse(self.region))
        bk = _number("buffer_km", self.buffer_km)
        if bk < 0:
            raise InvalidParameter(f"{self._where()}buffer_km {bk} must be >= 0 (kilometres around each mask feature)")
        object.__setattr__(self, "buffer_km", bk)
        for name in ("halo",):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise InvalidParameter(f"{self._where()}{name} must be a whole number of pixels >= 0, got {v!r}")
        for name in ("batch", "max_in_flight", "block", "cluster_jobs"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
                raise InvalidParameter(f"{self._where()}{name} must be a positive whole number, got {v!r}")
        if not isinstance(self.screen, bool):
            raise InvalidParameter(f"{self._where()}screen must be true or false, got {self.screen!r}")
        if _number("log_every_s", self.log_every_s) <= 0:
            raise InvalidParameter(f"{self._where()}log_every_s must be > 0 seconds, got {self.log_every_s!r}")
        m = self.mosaic
        if isinstance(m, str):
            m = {"path": m}
        if not isinstance(m, Mapping) or len(set(m) & {"path", "synthetic"}) != 1:
            raise InvalidParameter(
                f"{self._where()}mosaic must be {{path: MOSAIC}} (a real mosaic on the grid) or {{synthetic: {{seed: 0}}}} "
                f"(the lazy synthetic world), got {self.mosaic!r}"
            )
        object.__setattr__(self, "mosaic", dict(m))

    def _where(self) -> str:
        return f"config {self.source}: " if self.source else ""

    @property
    def synthetic(self) -> dict | None:
        s = self.mosaic.get("synthetic")
        return None if s is None else dict(s or {})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base_dir: str | os.PathLike | None = None, *, source: str | None = None,
                  mask: str | None = None, **overrides) -> "GlobalRunConfig":
        """Build from a parsed YAML mapping; relative paths resolve against ``base_dir``.

        The mask path comes from ``mask=`` (the ``--mask`` flag) if given, else ``$REEFMAP_MASK``, else the file.
        Other ``overrides`` (field names) win over the file when not None.
        """
        where = f"config {source}: " if source else ""
        if not isinstance(data, Mapping):
            raise InvalidParameter(f"{where}must hold a mapping of settings, got {type(data).__name__}")
        unknown = sorted(set(data) - set(cls.KEYS))
        if unknown:
            raise InvalidParameter(f"{where}unknown keys {unknown}; known keys: {sorted(cls.KEYS)}")
        base = Path(base_dir or ".").resolve()

        def resolve(v):
            if v is None or "://" in str(v) or os.path.isabs(os.path.expanduser(str(v))):
                return None if v is None else os.path.expanduser(str(v))
            return os.path.normpath(str(base / str(v)))

        if "grid" not in data:
            raise InvalidParameter(f"{where}no grid: set grid: {{kind: web_mercator_quads, zoom: 15, tile: 4096}}")
        kw: dict[str, Any] = {"grid": grid_from_config(data["grid"]), "source": source}
        for key in ("region", "mask_crs", "buffer_km", "model", "out", "halo", "screen", "batch", "max_in_flight", "block",
                    "summary", "log_every_s"):
            if data.get(key) is not None:
                kw[key] = data[key]
        if "mosaic" in data and data["mosaic"] is not None:
            mos = data["mosaic"]
            mos = {"path": mos} if isinstance(mos, str) else dict(mos)
            if mos.get("path") is not None:
                mos["path"] = resolve(mos["path"])
            kw["mosaic"] = mos
        cl = data.get("cluster") or {}
        if not isinstance(cl, Mapping):
            raise InvalidParameter(f"{where}cluster must be a mapping {{profile: local, jobs: 2}}, got {cl!r}")
        _no_unknown("cluster", cl, {"profile", "jobs"}, where)
        if cl.get("profile") is not None:
            prof = str(cl["profile"])
            # a profile given as a YAML path resolves like the other paths; names and addresses stay as they are
            kw["cluster_profile"] = resolve(prof) if prof.endswith((".yaml", ".yml")) else prof
        if cl.get("jobs") is not None:
            kw["cluster_jobs"] = cl["jobs"]
        # the mask: --mask (relative to the working directory) > $REEFMAP_MASK (same) > the file (relative to it)
        given = mask if mask is not None else os.environ.get(MASK_ENV) or None
        if given is not None:
            kw["mask"] = None if given.lower() == "none" else (given if "://" in given else os.path.abspath(os.path.expanduser(given)))
        else:
            m = data.get("mask")
            kw["mask"] = None if m is None or str(m).lower() == "none" else resolve(m)
        for key in ("out", "model", "summary"):
            if key in kw:
                kw[key] = resolve(kw[key])
        kw.update({k: v for k, v in overrides.items() if v is not None})
        kw.setdefault("out", None)  # __post_init__ says what to set
        return cls(**kw)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, *, mask: str | None = None, **overrides) -> "GlobalRunConfig":
        import yaml

        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text())
        except FileNotFoundError:
            raise InvalidParameter(f"config file {str(p)!r} not found; pass the path of a global-run YAML "
                                   "(e.g. pipelines/configs/global-l15.yaml)") from None
        except yaml.YAMLError as e:
            raise InvalidParameter(f"config file {str(p)!r} is not valid YAML: {e}") from None
        return cls.from_dict(data or {}, p.resolve().parent, source=str(p), mask=mask, **overrides)


def _whole(name: str, v: Any, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or not lo <= v <= hi:
        raise InvalidParameter(f"{name} {v!r} must be a whole number from {lo} to {hi}")
    return int(v)


def _number(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise InvalidParameter(f"{name} {v!r} must be a finite number")
    return float(v)


def _no_unknown(what: str, d: Mapping, known: set[str], where: str = "") -> None:
    unknown = sorted(set(d) - known)
    if unknown:
        raise InvalidParameter(f"{where}{what} has unknown keys {unknown}; known keys: {sorted(known)}")
