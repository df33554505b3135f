"""The model bundle format: metadata, content hash and the shipped demo bundle; no torch here.

A bundle is a directory holding ``bundle.json`` (architecture, input bands and their normalisation, class
names and codes, the receptive radius and the halo it needs, the empty-tile screen, a content hash) and
``weights.pt`` (a torch ``state_dict``, written by ``reefmap.model.segmenter.save_bundle``). ``read_bundle``
reads the metadata without importing torch, so planning and status never need it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from reefmap.classes import CLASS_NAMES, CLASSES
from reefmap.caching import LRUCache
from reefmap.errors import ModelError

BUNDLE_FORMAT = "reefmap-bundle/1"
DEMO_BUNDLE = Path(__file__).resolve().parent / "bundles" / "demo"


@dataclass(frozen=True)
class BundleMeta:
    """What a bundle says about its model. Everything the pipeline needs short of the weights."""

    name: str
    architecture: dict
    bands: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    valid_range: tuple[float, float]
    classes: tuple[str, ...]
    receptive_radius: int
    halo: int
    size_multiple: int
    screen: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    sha256: str = ""
    path: str = ""

    @property
    def reef_channel(self) -> int:
        return self.classes.index("reef")

    @property
    def class_codes(self) -> tuple[int, ...]:
        return tuple(CLASSES[c] for c in self.classes)

    def to_json(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("sha256", "path")}
        return json.loads(json.dumps(d))

    def provenance(self) -> dict:
        return {"name": self.name, "sha256": self.sha256, "path": self.path, "architecture": self.architecture,
                "bands": list(self.bands), "classes": list(self.classes), "halo": self.halo}


def _bundle_dir(bundle: str | os.PathLike | None) -> Path:
    p = DEMO_BUNDLE if bundle is None else Path(bundle)
    if not (p / "bundle.json").is_file():
        raise ModelError(
            f"model bundle {str(p)!r} not found: expected a directory with bundle.json and weights.pt; "
            "omit --model to use the shipped demo bundle, or write one with reefmap.model.segmenter.save_bundle"
        )
    return p


def _content_hash(meta_json: dict, weights: bytes) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(meta_json, sort_keys=True, separators=(",", ":")).encode())
    h.update(weights)
    return h.hexdigest()


#: (resolved bundle path, (mtime, size) of bundle.json and weights.pt) → metadata: re-read when either changes
_META_CACHE: "LRUCache[BundleMeta]" = LRUCache("bundle metadata", 32)


def read_bundle(bundle: str | os.PathLike | None = None) -> BundleMeta:
    """The bundle's metadata and content hash (no torch import). ``None`` → the shipped demo bundle."""
    p = _bundle_dir(bundle).resolve()
    key = str(p)
    stamp = tuple((f.stat().st_mtime_ns, f.stat().st_size) if f.exists() else None
                  for f in (p / "bundle.json", p / "weights.pt"))
    cached = _META_CACHE.get((key, stamp))
    if cached is not None:
        return cached
    try:
        raw = json.loads((p / "bundle.json").read_text())
        weights = (p / "weights.pt").read_bytes()
    except (OSError, ValueError) as e:
        raise ModelError(f"model bundle {str(p)!r} is unreadable ({e}); re-create it with reefmap.model.segmenter.save_bundle") from None
    if raw.get("format") != BUNDLE_FORMAT:
        raise ModelError(f"model bundle {str(p)!r} has format {raw.get('format')!r}, expected {BUNDLE_FORMAT!r}")
    try:
        m = raw["meta"]
        meta = BundleMeta(
            name=m["name"], architecture=m["architecture"], bands=tuple(m["bands"]), mean=tuple(m["mean"]),
            std=tuple(m["std"]), valid_range=tuple(m["valid_range"]), classes=tuple(m["classes"]),
            receptive_radius=int(m["receptive_radius"]), halo=int(m["halo"]), size_multiple=int(m["size_multiple"]),
            screen=m.get("screen", {}), training=m.get("training", {}),
        )
    except (KeyError, TypeError) as e:
        raise ModelError(f"model bundle {str(p)!r} lacks metadata field {e}; re-create it with reefmap.model.segmenter.save_bundle") from None
    digest = _content_hash(raw["meta"], weights)
    if raw.get("sha256") and raw["sha256"] != digest:
        raise ModelError(f"model bundle {str(p)!r} is corrupt: content hash {digest[:12]} != recorded {raw['sha256'][:12]}")
    unknown = [c for c in meta.classes if c not in CLASSES]
    if unknown:
        raise ModelError(f"model bundle {str(p)!r} has unknown classes {unknown}; known: {list(CLASS_NAMES)}")
    meta = BundleMeta(**{**meta.__dict__, "sha256": digest, "path": str(p)})
    _META_CACHE.put((key, stamp), meta)
    return meta


def write_bundle(path: str | os.PathLike, weights: bytes, meta: dict) -> BundleMeta:
    """Write serialised ``weights`` and the metadata dict ``meta`` as a bundle directory; returns the metadata
    as read back. (``reefmap.model.segmenter.save_bundle`` serialises a network's weights and calls this.)"""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    meta = json.loads(json.dumps(meta))
    (p / "weights.pt").write_bytes(weights)
    doc = {"format": BUNDLE_FORMAT, "meta": meta, "sha256": _content_hash(meta, weights)}
    (p / "bundle.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return read_bundle(p)
