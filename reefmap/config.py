"""Run configurations: the CLI flags and the YAML file are two spellings of one frozen dataclass."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

from reefmap.errors import InvalidParameter
from reefmap.geometry.grid import BBox


@dataclass(frozen=True)
class RunConfig:
    mosaic: tuple[str, ...]
    out: str
    model: str | None = None
    bbox: BBox | None = None
    tile: int = 1024
    halo: int | None = None
    workers: int | None = None
    crs: str | None = None
    screen: bool = True
    batch: int = 1

    def __post_init__(self):
        if not self.mosaic:
            raise InvalidParameter("no mosaic given; pass --mosaic PATH_OR_URL (repeat it for several files)")
        if not self.out:
            raise InvalidParameter("no output store given; pass --out STORE.zarr")
        if self.bbox is not None and not isinstance(self.bbox, BBox):
            object.__setattr__(self, "bbox", BBox.parse(self.bbox))
        for name in ("tile", "halo", "workers", "batch"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
                raise InvalidParameter(f"{name} must be a positive whole number, got {v!r}")

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, **overrides) -> "RunConfig":
        """Load ``path`` (keys = the field names); relative paths in it resolve against the file's folder."""
        import yaml

        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except FileNotFoundError:
            raise InvalidParameter(f"config file {str(p)!r} not found") from None
        except yaml.YAMLError as e:
            raise InvalidParameter(f"config file {str(p)!r} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise InvalidParameter(f"config file {str(p)!r} must hold a mapping of settings, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidParameter(f"config file {str(p)!r} has unknown keys {unknown}; known keys: {sorted(known)}")
        base = p.resolve().parent

        def resolve(v):
            if v is None or "://" in str(v) or os.path.isabs(str(v)):
                return v
            return str(base / str(v))

        mosaic = data.get("mosaic", ())
        mosaic = (mosaic,) if isinstance(mosaic, str) else tuple(mosaic)
        data["mosaic"] = tuple(resolve(m) for m in mosaic)
        data["out"] = resolve(data.get("out"))
        if data.get("model"):
            data["model"] = resolve(data["model"])
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)
