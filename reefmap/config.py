"""Run configurations: the CLI flags and the YAML file are two spellings of one frozen dataclass.

``RunConfig`` is a run over one mosaic (``reefmap run``); ``GlobalRunConfig`` a global batch run
(``reefmap plan``, ``pipelines/global_run.py``; ``pipelines/configs/global-l15.yaml`` documents every key). Both
share one rule for each thing a config file does:

- loading: ``load_yaml`` (a mapping, or ``InvalidParameter`` naming the file);
- keys: ``check_keys`` refuses unknown keys, listing the known ones;
- paths: ``resolve_path``: a relative path in a file resolves against the file's folder (a path given on the
  command line or in ``$REEFMAP_MASK``, against the working directory); ``~`` expands; URLs (``scheme://``)
  and absolute paths stay as they are;
- numbers: ``reefmap.checks`` (``positive_int``, ``whole_number``, ``finite_number``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from reefmap.checks import finite_number, positive_int, whole_number
from reefmap.checks import precision as check_precision
from reefmap.errors import InvalidParameter
from reefmap.geometry.grid import BBox, GeoBox, TileGrid
from reefmap.geometry.webmercator import quad_lattice, web_mercator_quads
from reefmap.options import get_option


# -- the shared rules ------------------------------------------------------------------------------------------
def load_yaml(path: str | os.PathLike, example: str = "") -> tuple[dict, Path]:
    """The mapping in the YAML file ``path`` (empty file: ``{}``) and the file's folder (for ``resolve_path``)."""
    import yaml

    p = Path(path)
    what = f"; pass the path of {example}" if example else ""
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise InvalidParameter(f"config file {str(p)!r} not found{what}") from None
    except IsADirectoryError:
        raise InvalidParameter(f"config file {str(p)!r} is a directory, not a YAML file{what}") from None
    except UnicodeDecodeError:
        raise InvalidParameter(f"config file {str(p)!r} is not a text (YAML) file{what}; several mosaic files go "
                               "after --mosaic (--mosaic a.tif b.tif), a config file before the flags") from None
    except yaml.YAMLError as e:
        raise InvalidParameter(f"config file {str(p)!r} is not valid YAML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidParameter(f"config file {str(p)!r} must hold a mapping of settings, got {type(data).__name__}")
    return data, p.resolve().parent


def resolve_path(v: str | os.PathLike | None, base: str | os.PathLike) -> str | None:
    """The one path rule: ``None`` stays None; a URL (``scheme://...``) stays as it is; ``~`` expands; an absolute
    path stays absolute; a relative path resolves against ``base`` (a config file's folder, or the working
    directory for paths given on the command line)."""
    if v is None:
        return None
    s = os.fspath(v)
    if "://" in s:
        return s
    s = os.path.expanduser(s)
    return s if os.path.isabs(s) else os.path.normpath(os.path.join(os.fspath(base), s))


def check_keys(what: str, data: Mapping, known) -> None:
    """The one unknown-key message: ``{what} has unknown keys [...]; known keys: [...]``."""
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise InvalidParameter(f"{what} has unknown keys {unknown}; known keys: {sorted(known)}")


# -- one mosaic ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunConfig:
    mosaic: tuple[str, ...] = ()
    out: str | None = None
    model: str | None = None
    bbox: BBox | None = None
    tile: int = 1024
    halo: int | None = None
    workers: int | None = None
    crs: str | None = None
    screen: bool = True
    batch: int | None = None  #: tiles per task; None: runner.default_batch (4 on a remote store or a GPU host, else 1)
    bands: Any = None  #: mosaic bands for the model's: "red=3,green=2,blue=1", "B04,B03,B02", a list or a mapping
    precision: str = "fp32"
    compile: bool = False

    def __post_init__(self):
        if not self.mosaic:
            raise InvalidParameter("no mosaic given; pass --mosaic PATH_OR_URL (several files: --mosaic a.tif b.tif), "
                                   "or mosaic: in the YAML config")
        mosaic = (self.mosaic,) if isinstance(self.mosaic, (str, os.PathLike)) else self.mosaic
        if not isinstance(mosaic, (list, tuple)) or not all(isinstance(m, (str, os.PathLike)) for m in mosaic):
            raise InvalidParameter(f"mosaic must be a path or URL, or a list of them, got {self.mosaic!r}; "
                                   "e.g. mosaic: scene.tif or mosaic: [a.tif, b.tif]")
        object.__setattr__(self, "mosaic", tuple(os.fspath(m) for m in mosaic))
        if not self.out:
            raise InvalidParameter("no output store given; pass --out STORE.zarr, or out: in the YAML config")
        for name in ("out", "model", "crs"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, (str, os.PathLike)):
                raise InvalidParameter(f"{name} must be text (a path, URL or CRS name), got {v!r}")
        for name in ("screen", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidParameter(f"{name} must be true or false (a YAML boolean, unquoted), got {getattr(self, name)!r}")
        check_precision(self.precision)
        if self.bbox is not None and not isinstance(self.bbox, BBox):
            object.__setattr__(self, "bbox", BBox.parse_lonlat(self.bbox))
        for name in ("tile", "workers", "batch"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, positive_int(name, getattr(self, name)))
        if self.halo is not None:
            object.__setattr__(self, "halo", whole_number("halo", self.halo, 0))
        if self.bands is not None:
            object.__setattr__(self, "bands", _frozen_bands(self.bands))

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, **overrides) -> "RunConfig":
        """Load ``path`` (keys = the field names); relative paths in it resolve against the file's folder.
        ``overrides`` (field names; from the command line) win over the file when not None."""
        data, base = load_yaml(path)
        check_keys(f"config file {str(path)!r}", data, [f.name for f in fields(cls)])
        paths = [data["mosaic"]] if isinstance(data.get("mosaic"), str) else data.get("mosaic")
        if isinstance(paths, list) and all(isinstance(m, str) for m in paths):
            data["mosaic"] = tuple(resolve_path(m, base) for m in paths)  # anything else: __post_init__ refuses it
        for key in ("out", "model"):
            if isinstance(data.get(key), str):
                data[key] = resolve_path(data[key] or None, base)
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)


# -- global runs -----------------------------------------------------------------------------------------------
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
        check_keys("grid (web_mercator_quads)", spec, {"zoom", "tile", "lat_min", "lat_max"})
        return web_mercator_quads(**spec)
    if kind == "explicit":
        check_keys("grid (explicit)", spec, {"crs", "resolution", "bounds", "tile"})
        missing = [k for k in ("crs", "resolution", "bounds", "tile") if spec.get(k) is None]
        if missing:
            raise InvalidParameter(f"grid is missing {missing}; an explicit grid needs crs, resolution, bounds "
                                   "(W,S,E,N in the grid CRS) and tile")
        res = finite_number("grid resolution", spec["resolution"])
        if res <= 0:
            raise InvalidParameter(f"grid resolution {res} must be > 0 (CRS units per pixel)")
        try:
            from pyproj import CRS

            CRS.from_user_input(spec["crs"])
        except Exception as e:  # pyproj.exceptions.CRSError
            raise InvalidParameter(f"grid crs {spec['crs']!r} is not a CRS pyproj knows ({e}); use e.g. EPSG:3857") from None
        gb = GeoBox.from_bbox(BBox.parse(spec["bounds"]), spec["crs"], res)
        return TileGrid(gb, whole_number("tile", spec["tile"], 1, 1 << 20))
    raise InvalidParameter(
        f"grid kind {kind!r} is unknown; use kind: web_mercator_quads (zoom, tile, lat_min, lat_max) or an explicit "
        "grid (crs, resolution, bounds, tile)"
    )


def describe_grid(grid: TileGrid) -> dict:
    """JSON-friendly facts about a grid (no per-pixel work): the reverse of ``grid_from_config``, for summaries."""
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
    precision: str = "fp32"  #: the model's numerics (fp32, bf16, fp16), recorded in the map as by ``reefmap run``
    compile: bool = False  #: torch.compile the model on each worker
    max_in_flight: int | None = None
    block: int | None = None
    cluster_profile: str = "local"
    cluster_jobs: int | None = None
    summary: str | None = None
    log_every_s: float = 60.0
    source: str | None = None  #: the YAML file this came from (for messages)

    KEYS = ("grid", "region", "mask", "mask_crs", "buffer_km", "mosaic", "model", "out", "halo", "screen", "batch",
            "precision", "compile", "max_in_flight", "block", "cluster", "summary", "log_every_s")

    def __post_init__(self):
        where = self._where()
        if not isinstance(self.grid, TileGrid):
            object.__setattr__(self, "grid", grid_from_config(self.grid))
        if not self.out:
            raise InvalidParameter(f"{where}no output store: set out: (a path or URL ending in .zarr)")
        if self.region is not None and not isinstance(self.region, BBox):
            object.__setattr__(self, "region", BBox.parse(self.region))
        bk = finite_number("buffer_km", self.buffer_km, where=where)
        if bk < 0:
            raise InvalidParameter(f"{where}buffer_km {bk} must be >= 0 (kilometres around each mask feature)")
        object.__setattr__(self, "buffer_km", bk)
        if self.halo is not None:
            object.__setattr__(self, "halo", whole_number("halo", self.halo, 0, where=where))
        for name in ("batch", "max_in_flight", "block", "cluster_jobs"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, positive_int(name, getattr(self, name), where=where))
        for name in ("screen", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidParameter(f"{where}{name} must be true or false, got {getattr(self, name)!r}")
        check_precision(self.precision)
        if finite_number("log_every_s", self.log_every_s, where=where) <= 0:
            raise InvalidParameter(f"{where}log_every_s must be > 0 seconds, got {self.log_every_s!r}")
        m = self.mosaic
        if isinstance(m, str):
            m = {"path": m}
        if not isinstance(m, Mapping) or len(set(m) & {"path", "synthetic"}) != 1:
            raise InvalidParameter(
                f"{where}mosaic must be {{path: MOSAIC}} (a real mosaic on the grid) or {{synthetic: {{seed: 0}}}} "
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
        """Build from a parsed YAML mapping; relative paths resolve against ``base_dir`` (default: the working
        directory).

        The mask path comes from ``mask=`` (the ``--mask`` flag) if given, else ``$REEFMAP_MASK``, else the file;
        the first two resolve against the working directory. Other ``overrides`` (field names) win over the file
        when not None.
        """
        where = f"config {source}: " if source else ""
        if not isinstance(data, Mapping):
            raise InvalidParameter(f"{where}must hold a mapping of settings, got {type(data).__name__}")
        check_keys(f"config file {source!r}" if source else "the config", data, cls.KEYS)
        base = Path(base_dir or ".").resolve()
        if "grid" not in data:
            raise InvalidParameter(f"{where}no grid: set grid: {{kind: web_mercator_quads, zoom: 15, tile: 4096}}")
        kw: dict[str, Any] = {"grid": grid_from_config(data["grid"]), "source": source}
        for key in ("region", "mask_crs", "buffer_km", "halo", "screen", "batch", "precision", "compile",
                    "max_in_flight", "block", "log_every_s"):
            if data.get(key) is not None:
                kw[key] = data[key]
        for key in ("out", "model", "summary"):
            if data.get(key) is not None:
                kw[key] = resolve_path(data[key], base)
        if data.get("mosaic") is not None:
            mos = data["mosaic"]
            mos = {"path": mos} if isinstance(mos, str) else dict(mos)
            if mos.get("path") is not None:
                mos["path"] = resolve_path(mos["path"], base)
            kw["mosaic"] = mos
        cl = data.get("cluster") or {}
        if not isinstance(cl, Mapping):
            raise InvalidParameter(f"{where}cluster must be a mapping {{profile: local, jobs: 2}}, got {cl!r}")
        check_keys(f"{where}cluster", cl, {"profile", "jobs"})
        if cl.get("profile") is not None:
            prof = str(cl["profile"])
            # a profile given as a YAML path resolves like the other paths; names and addresses stay as they are
            kw["cluster_profile"] = resolve_path(prof, base) if prof.endswith((".yaml", ".yml")) else prof
        if cl.get("jobs") is not None:
            kw["cluster_jobs"] = cl["jobs"]
        # the mask: --mask > $REEFMAP_MASK (both relative to the working directory) > the file (relative to it)
        given = mask if mask is not None else get_option("mask")
        if given is not None:
            kw["mask"] = None if str(given).lower() == "none" else resolve_path(given, os.getcwd())
        else:
            m = data.get("mask")
            kw["mask"] = None if m is None or str(m).lower() == "none" else resolve_path(m, base)
        kw.update({k: v for k, v in overrides.items() if v is not None})
        kw.setdefault("out", None)  # __post_init__ says what to set
        return cls(**kw)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, *, mask: str | None = None, **overrides) -> "GlobalRunConfig":
        data, base = load_yaml(path, "a global-run YAML (e.g. pipelines/configs/global-l15.yaml)")
        return cls.from_dict(data, base, source=str(path), mask=mask, **overrides)


__all__ = ["RunConfig", "GlobalRunConfig", "grid_from_config", "describe_grid", "load_yaml", "resolve_path",
           "check_keys"]


def _frozen_bands(bands) -> str | tuple[str, ...]:
    """A ``bands`` setting in a hashable form ``reefmap.sources.bands.parse_bands`` reads: text as given, a list as a
    tuple of names, a mapping as ``"red=3,green=2"`` text."""
    if isinstance(bands, str):
        return bands
    if isinstance(bands, Mapping) and bands:
        return ",".join(f"{k}={v}" for k, v in bands.items())
    if isinstance(bands, (list, tuple)) and bands and all(isinstance(b, (str, int)) for b in bands):
        return tuple(str(b) for b in bands)
    raise InvalidParameter(f"bands must name the mosaic's bands for the model's, e.g. bands: red=3,green=2,blue=1, "
                           f"bands: [B04, B03, B02] or bands: {{red: 3, green: 2, blue: 1}}; got {bands!r}")
