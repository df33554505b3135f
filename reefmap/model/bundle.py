"""The model bundle format: a model artifact plus its STAC MLM metadata; no torch here.

A bundle is a directory holding the model artifact and ``item.json``, a STAC Item with the Machine Learning
Model extension (``mlm:*``, https://stac-extensions.github.io/mlm/v1.4.0/schema.json), read and written with
pystac's ``pystac.extensions.mlm``:

- ``mlm:input``: the band names in order, one MLM value-scaling object per band (``z-score``, ``scale``,
  ``offset``, ``min-max``, ``clip``...), the tensor's ``float32`` shape ``[-1, bands, -1, -1]`` (dynamic batch,
  height and width);
- ``mlm:output``: the classes in the network's output-channel order (``classification:classes``: ``value`` = the
  code written to the map, ``name``, ``color_hint``); the network returns class logits;
- the ``model`` asset: the artifact, its ``mlm:artifact_type`` (``torch.export.save`` for an ExportedProgram
  ``.pt2``, ``torch.jit.save`` for TorchScript, ``torch.save`` for a ``state_dict`` of a built-in architecture
  named by ``mlm:architecture`` and ``mlm:hyperparameters.architecture``) and ``file:checksum`` (a sha2-256
  multihash, checked on every read);
- ``mlm:hyperparameters``: what reefmap needs: ``receptive_radius`` (measured by ``reefmap bundle create``),
  ``halo``, ``size_multiple``, ``reef_classes``, ``screen`` (the empty-tile screen), ``source_data_type`` and
  ``valid_range`` of the raw band values (pixels outside the range are nodata).

``read_spec`` reads the YAML spec ``reefmap bundle create`` takes; ``reefmap.model.bundling`` creates, validates
and converts bundles (with torch). Older ``reefmap-bundle/1`` directories (``bundle.json`` + ``weights.pt``, the
shipped demo) are read as they are, everywhere; ``reefmap bundle convert`` writes one in the new format.
``read_bundle`` and ``inspect_bundle`` read either without importing torch, so planning and status never need it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from reefmap.caching import LRUCache
from reefmap.classes import CLASS_NAMES, CLASSES, DEMO_SCHEME, ClassScheme, class_key
from reefmap.errors import InvalidParameter, ModelError
from reefmap.store.format import RESERVED_CODES, SCREEN_STATES

BUNDLE_FORMAT = "reefmap-bundle/1"  #: the older format: bundle.json + weights.pt
MLM_FORMAT = "stac-mlm"  #: this format: item.json (a STAC Item with mlm:*) + the artifact
ITEM_FILE = "item.json"
DEMO_BUNDLE = Path(__file__).resolve().parent / "bundles" / "demo"
SPECS = Path(__file__).resolve().parent / "specs"

#: mlm:artifact_type → the artifact's file name in a bundle (torch.export.load wants the .pt2 suffix)
ARTIFACT_FILES = {"torch.export.save": "model.pt2", "torch.jit.save": "model.ts", "torch.save": "model.pt"}
#: file suffixes that name one artifact type (.pt and .pth are used for both TorchScript and state_dicts)
SUFFIX_TYPES = {".pt2": "torch.export.save", ".ts": "torch.jit.save", ".torchscript": "torch.jit.save"}
#: value-scaling types reefmap applies, with the fields each needs (MLM value scaling objects)
SCALINGS = {"z-score": ("mean", "stddev"), "scale": ("value",), "offset": ("value",), "min-max": ("minimum", "maximum"),
            "clip": ("minimum", "maximum"), "clip-min": ("minimum",), "clip-max": ("maximum",)}
#: value range of the raw band values by data type, when a spec gives none
DTYPE_RANGES = {"uint8": (0.0, 255.0), "uint16": (0.0, 65535.0), "int16": (-32768.0, 32767.0)}
#: mlm:accelerator values (the hardware a model is meant for; reefmap runs every model on the CPU too)
ACCELERATORS = ("cuda", "amd64", "xla", "amd-rocm", "intel-ipex-cpu", "intel-ipex-gpu", "macos-arm")
MULTIHASH_SHA256 = "1220"  #: multihash prefix of a sha2-256 digest (code 0x12, 32 bytes)


@dataclass(frozen=True)
class BundleMeta:
    """What a bundle says about its model. Everything the pipeline needs short of the weights."""

    name: str
    bands: tuple[str, ...]
    scaling: tuple[dict, ...]  #: one MLM value-scaling object per band ({"type": "z-score", "mean", "stddev"}, ...)
    valid_range: tuple[float, float]
    classes: tuple[str, ...]  #: class names in output-channel order
    class_values: tuple[int, ...]  #: the code each class gets in the map
    class_colors: tuple[str, ...]  #: "rrggbb" per class
    reef_classes: tuple[str, ...]
    receptive_radius: int
    halo: int
    size_multiple: int
    artifact: str = "weights.pt"  #: the artifact's file name in the bundle
    artifact_type: str = "torch.save"
    architecture: dict = field(default_factory=dict)  #: {"name", ...}; the parameters too for a state_dict
    source_data_type: str = "uint8"
    accelerator: str = "cuda"
    screen: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    format: str = MLM_FORMAT
    checksum: str = ""  #: the artifact's file:checksum (multihash hex)
    sha256: str = ""  #: content hash of metadata + artifact: the model's identity in a map
    path: str = ""

    def kernel_scaling(self) -> tuple[tuple[float, float, float, float], ...]:
        """The value scaling as one row ``(a, b, lo, hi)`` per band, meaning ``clip((x - a) / b, lo, hi)``: the form
        the tile kernels (and the device path) apply to raw band values."""
        inf = float("inf")
        out = []
        for s in self.scaling:
            t = s["type"]
            if t == "z-score":
                out.append((float(s["mean"]), float(s["stddev"]), -inf, inf))
            elif t == "scale":
                out.append((0.0, float(s["value"]), -inf, inf))
            elif t == "offset":
                out.append((float(s["value"]), 1.0, -inf, inf))
            elif t == "min-max":
                out.append((float(s["minimum"]), float(s["maximum"]) - float(s["minimum"]), -inf, inf))
            else:  # clip, clip-min, clip-max: the raw value limited to the range
                out.append((0.0, 1.0, float(s.get("minimum", -inf)), float(s.get("maximum", inf))))
        return tuple(out)

    @property
    def scheme(self) -> ClassScheme:
        """The bundle's class scheme: what the map's classification layer, legends and statistics follow."""
        return ClassScheme(self.class_values, self.classes, self.class_colors, self.reef_classes)

    @property
    def reef_channels(self) -> tuple[int, ...]:
        """The output channels of the reef classes (their probabilities sum to ``reef_probability``)."""
        return self.scheme.reef_channels

    @property
    def class_codes(self) -> tuple[int, ...]:
        return self.class_values

    def provenance(self) -> dict:
        return {"name": self.name, "sha256": self.sha256, "path": self.path, "format": self.format,
                "artifact_type": self.artifact_type, "architecture": self.architecture, "bands": list(self.bands),
                "classes": list(self.classes), "halo": self.halo}


# --- the spec: what `reefmap bundle create` is told -------------------------------------------------------------

def read_spec(spec: str | os.PathLike | dict) -> dict:
    """A bundle spec (a YAML file, or the dict it holds) checked and completed: ``{"name", "bands": [names],
    "scaling": [one MLM value-scaling object per band], "source_data_type", "valid_range", "classes": [{"value",
    "name", "color"}], "reef_classes", "halo", "size_multiple", "architecture", "artifact_type", "accelerator",
    "screen", "training", "description"}`` (absent optional values are None). Errors name the field and the fix."""
    where = "the spec"
    if not isinstance(spec, dict):
        import yaml

        where = f"spec {str(spec)!r}"
        try:
            spec = yaml.safe_load(Path(spec).read_text())
        except (OSError, yaml.YAMLError) as e:
            raise InvalidParameter(f"{where} is unreadable: {e}") from None
        if not isinstance(spec, dict):
            raise InvalidParameter(f"{where} is not a mapping of fields (name, bands, classes, reef_classes, ...)")
    known = {"name", "description", "bands", "source_data_type", "valid_range", "classes", "reef_classes", "halo",
             "size_multiple", "architecture", "artifact_type", "accelerator", "screen", "training"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise InvalidParameter(f"{where} has unknown fields {unknown}; known: {sorted(known)}")

    def need(key, kind, what):
        v = spec.get(key)
        if not isinstance(v, kind) or not v:
            raise InvalidParameter(f"{where}: {key!r} must be {what}, got {v!r}")
        return v

    name = need("name", str, "the model's name (a non-empty string)")
    bands, scaling = [], []
    for b in need("bands", list, "a list of {name, scaling} in the network's input-channel order"):
        b = {"name": b} if isinstance(b, str) else b
        if not isinstance(b, dict) or not isinstance(b.get("name"), str) or set(b) - {"name", "scaling"}:
            raise InvalidParameter(f"{where}: each band must be {{name: ..., scaling: {{type: z-score, mean: .., stddev: ..}}}}, got {b!r}")
        bands.append(b["name"])
        scaling.append(_check_scaling(b.get("scaling") or {"type": "offset", "value": 0.0}, f"{where}: band {b['name']!r}"))
    if len(set(bands)) != len(bands):
        raise InvalidParameter(f"{where}: band names repeat: {bands}")
    dtype = spec.get("source_data_type", "uint8")
    valid_range = spec.get("valid_range", DTYPE_RANGES.get(dtype))
    if (not isinstance(valid_range, (list, tuple)) or len(valid_range) != 2
            or not all(isinstance(v, (int, float)) for v in valid_range) or valid_range[0] >= valid_range[1]):
        raise InvalidParameter(f"{where}: 'valid_range' must be [low, high] of the raw {dtype} band values, got {valid_range!r}")
    classes = _check_classes(need("classes", list, "a list of {value, name, color} in output-channel order"), where)
    names = [c["name"] for c in classes]
    reef = need("reef_classes", list, f"a list of the classes that count as reef (of {names})")
    if not set(reef) <= set(names) or len(set(reef)) != len(reef):
        raise InvalidParameter(f"{where}: 'reef_classes' {reef} must name classes of {names}, each once")
    out = {"name": name, "description": spec.get("description"), "bands": bands, "scaling": scaling,
           "source_data_type": dtype, "valid_range": [float(v) for v in valid_range], "classes": classes,
           "reef_classes": list(reef), "accelerator": spec.get("accelerator", "cuda"),
           "screen": spec.get("screen") or {}, "training": spec.get("training") or {}}
    for key in ("halo", "size_multiple"):
        v = spec.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < (0 if key == "halo" else 1)):
            raise InvalidParameter(f"{where}: {key!r} must be a whole number of pixels, got {v!r}")
        out[key] = v
    arch = spec.get("architecture")
    if arch is not None and not (isinstance(arch, dict) and isinstance(arch.get("name"), str)):
        raise InvalidParameter(f"{where}: 'architecture' must be {{name: tiny_unet|resnet34_unet, ...}}, got {arch!r}")
    out["architecture"] = arch
    if out["accelerator"] not in ACCELERATORS:
        raise InvalidParameter(f"{where}: 'accelerator' {out['accelerator']!r} is not one of {list(ACCELERATORS)} (MLM)")
    atype = spec.get("artifact_type")
    if atype is not None and atype not in ARTIFACT_FILES:
        raise InvalidParameter(f"{where}: 'artifact_type' {atype!r} is not one of {list(ARTIFACT_FILES)}")
    out["artifact_type"] = atype
    check_screen(out["screen"], names, len(bands), where, InvalidParameter)
    return out


def check_screen(screen: dict, names, bands: int, where: str, error=ModelError) -> None:
    """The empty-tile screen names classes of the bundle's own scheme, one [low, high] box of raw values per band;
    only a deep-water class and a land class can be screened (a tile inside one of their boxes is recorded as
    skipped deep water / land, ``SCREEN_STATES``): their names compare loosely ("Deep Water" is deep_water)."""
    for cls, boxes in screen.items():
        if cls not in names or not isinstance(boxes, list) or len(boxes) != bands:
            raise error(f"{where}: 'screen' {cls!r} must name a class of {list(names)} with one [low, high] per band")
        if class_key(cls) not in SCREEN_STATES:
            raise error(f"{where}: 'screen' {cls!r}: only a class named {' or '.join(SCREEN_STATES)} can be screened "
                        "(a tile inside its box is recorded as skipped); remove the entry or rename the class")


def _check_scaling(s, where: str) -> dict:
    if not isinstance(s, dict) or s.get("type") not in SCALINGS:
        raise InvalidParameter(f"{where}: scaling must be one of {list(SCALINGS)} with its fields, got {s!r}")
    need = SCALINGS[s["type"]]
    if set(s) != {"type", *need} or not all(isinstance(s[k], (int, float)) for k in need):
        raise InvalidParameter(f"{where}: scaling {s['type']!r} takes numbers {list(need)}, got {s!r}")
    if (s["type"] == "z-score" and s["stddev"] <= 0) or (s["type"] == "scale" and s["value"] == 0) \
            or (s["type"] in ("min-max", "clip") and s["minimum"] >= s["maximum"]):
        raise InvalidParameter(f"{where}: scaling {s!r} divides by zero or has an empty range")
    return {"type": s["type"], **{k: float(s[k]) for k in need}}


def _check_classes(classes: list, where: str) -> list[dict]:
    out = []
    for c in classes:
        if not isinstance(c, dict) or set(c) - {"value", "name", "color", "description"} \
                or not isinstance(c.get("value"), int) or not isinstance(c.get("name"), str) or not c["name"]:
            raise InvalidParameter(f"{where}: each class must be {{value: <code>, name: <name>, color: rrggbb}}, got {c!r}")
        v = c["value"]
        if v in RESERVED_CODES or not 0 < v < 256:
            raise InvalidParameter(f"{where}: class {c['name']!r} has code {v}, which the map reserves or cannot store "
                                   f"({', '.join(f'{k} = {n}' for k, n in RESERVED_CODES.items())}; codes are 1..253): pick another code")
        if c["name"] in RESERVED_CODES.values():
            raise InvalidParameter(f"{where}: class name {c['name']!r} is one the map reserves "
                                   f"({', '.join(RESERVED_CODES.values())}): pick another name")
        color = str(c.get("color", "808080")).lstrip("#").lower()
        if not re.fullmatch(r"[0-9a-f]{6}", color):
            raise InvalidParameter(f"{where}: class {c['name']!r} colour {c.get('color')!r} is not rrggbb hex")
        out.append({"value": v, "name": c["name"], "color": color, **({"description": c["description"]} if c.get("description") else {})})
    for key in ("value", "name"):
        seen = [c[key] for c in out]
        dup = sorted({x for x in seen if seen.count(x) > 1}, key=str)
        if dup:
            raise InvalidParameter(f"{where}: class {key}s {dup} appear more than once; each class needs its own {key}")
    return out


# --- artifacts: which kind a file is (without torch) ------------------------------------------------------------

def sniff_artifact_type(path: str | os.PathLike) -> str | None:
    """The artifact type a file's contents show (a torch.export archive holds ``archive_format``; TorchScript holds
    ``constants.pkl`` and ``code/``; a ``torch.save`` zip holds ``data.pkl`` only), or None if none of them."""
    try:
        with zipfile.ZipFile(path) as z:
            names = [n.split("/", 1)[-1] for n in z.namelist()]
    except (OSError, zipfile.BadZipFile):
        return None
    if "archive_format" in names:
        return "torch.export.save"
    if "constants.pkl" in names or any(n.startswith("code/") for n in names):
        return "torch.jit.save"
    return "torch.save" if "data.pkl" in names else None


def artifact_type_of(path: str | os.PathLike, declared: str | None = None) -> str:
    """The artifact type of ``path``: what its contents show, which must agree with its suffix and with ``declared``
    (the spec's ``artifact_type``) when those name one."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"model artifact {str(p)!r} not found")
    found = sniff_artifact_type(p)
    by_suffix = SUFFIX_TYPES.get(p.suffix.lower())
    kinds = "a torch.export.save .pt2, a torch.jit.save TorchScript file or a torch.save state_dict"
    if found is None:
        raise ModelError(f"model artifact {str(p)!r} is none of {kinds} (not a torch zip archive, or a truncated one); "
                         "re-export it with torch.export.save, torch.jit.save or torch.save")
    for expected, why in ((by_suffix, f"its suffix {p.suffix!r}"), (declared, "the spec's artifact_type")):
        if expected and expected != found:
            raise ModelError(f"model artifact {str(p)!r} is a {found} file but {why} says {expected}: "
                             f"{'rename it to ' + ARTIFACT_FILES[found] if expected == by_suffix else 'fix the spec'} "
                             f"or export it with {expected}")
    return found


def file_checksum(path: str | os.PathLike) -> str:
    """The ``file:checksum`` of a file: a sha2-256 multihash as hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return MULTIHASH_SHA256 + h.hexdigest()


# --- reading ---------------------------------------------------------------------------------------------------

def _bundle_dir(bundle: str | os.PathLike | None) -> Path:
    p = DEMO_BUNDLE if bundle is None else Path(bundle)
    if not ((p / ITEM_FILE).is_file() or (p / "bundle.json").is_file()):
        raise ModelError(
            f"model bundle {str(p)!r} not found: expected a directory with {ITEM_FILE} (STAC MLM metadata) and the "
            "model artifact, or bundle.json and weights.pt; omit --model to use the shipped demo bundle, or make one "
            "with `reefmap bundle create`"
        )
    return p


def _content_hash(meta_json: dict, weights: bytes) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(meta_json, sort_keys=True, separators=(",", ":")).encode())
    h.update(weights)
    return h.hexdigest()


#: (resolved bundle path, (mtime, size) of its metadata and artifact files) → metadata: re-read when either changes
_META_CACHE: "LRUCache[BundleMeta]" = LRUCache("bundle metadata", 32)


def read_bundle(bundle: str | os.PathLike | None = None) -> BundleMeta:
    """The bundle's metadata and content hash (no torch import), of either format; checks the artifact's checksum.
    ``None`` → the shipped demo bundle."""
    p = _bundle_dir(bundle).resolve()
    files = [p / ITEM_FILE] if (p / ITEM_FILE).is_file() else [p / "bundle.json", p / "weights.pt"]
    if files[0].name == ITEM_FILE:
        files.append(p / _artifact_name(files[0]))
    stamp = tuple((f.stat().st_mtime_ns, f.stat().st_size) if f.exists() else None for f in files)
    cached = _META_CACHE.get((str(p), stamp))
    if cached is not None:
        return cached
    meta = _read_item(p) if files[0].name == ITEM_FILE else _read_legacy(p)
    if meta.halo < meta.receptive_radius or meta.halo % meta.size_multiple:
        raise ModelError(f"model bundle {str(p)!r} records halo {meta.halo} px for receptive radius {meta.receptive_radius} "
                         f"px and size multiple {meta.size_multiple}: it must be at least the radius and a multiple; re-create it")
    _META_CACHE.put((str(p), stamp), meta)
    return meta


def _artifact_name(item_file: Path) -> str:
    """The model asset's file name, read cheaply (for the cache key)."""
    try:
        href = json.loads(item_file.read_text())["assets"]["model"]["href"]
    except (OSError, ValueError, KeyError, TypeError):
        return ARTIFACT_FILES["torch.export.save"]  # a broken item is reported by _read_item
    return Path(href).name


def _read_legacy(p: Path) -> BundleMeta:
    try:
        raw = json.loads((p / "bundle.json").read_text())
        weights = (p / "weights.pt").read_bytes()
    except (OSError, ValueError) as e:
        raise ModelError(f"model bundle {str(p)!r} is unreadable ({e}); re-create it with `reefmap bundle create`") from None
    if raw.get("format") != BUNDLE_FORMAT:
        raise ModelError(f"model bundle {str(p)!r} has format {raw.get('format')!r}, expected {BUNDLE_FORMAT!r}")
    try:
        m = raw["meta"]
        classes = tuple(m["classes"])
        unknown = [c for c in classes if c not in CLASSES]
        if unknown:
            raise ModelError(f"model bundle {str(p)!r} has unknown classes {unknown}; known: {list(CLASS_NAMES)}")
        meta = BundleMeta(
            name=m["name"], architecture=m["architecture"], bands=tuple(m["bands"]),
            scaling=tuple({"type": "z-score", "mean": float(a), "stddev": float(s)} for a, s in zip(m["mean"], m["std"])),
            valid_range=tuple(m["valid_range"]), classes=classes, class_values=tuple(CLASSES[c] for c in classes),
            class_colors=tuple(DEMO_SCHEME.colors[DEMO_SCHEME.names.index(c)] for c in classes), reef_classes=("reef",),
            receptive_radius=int(m["receptive_radius"]), halo=int(m["halo"]), size_multiple=int(m["size_multiple"]),
            screen=m.get("screen", {}), training=m.get("training", {}), format=BUNDLE_FORMAT,
            artifact="weights.pt", artifact_type="torch.save", checksum=MULTIHASH_SHA256 + hashlib.sha256(weights).hexdigest(),
        )
    except (KeyError, TypeError) as e:
        raise ModelError(f"model bundle {str(p)!r} lacks metadata field {e}; re-create it with `reefmap bundle create`") from None
    digest = _content_hash(raw["meta"], weights)
    if raw.get("sha256") and raw["sha256"] != digest:
        raise ModelError(f"model bundle {str(p)!r} is corrupt: content hash {digest[:12]} != recorded {raw['sha256'][:12]}")
    return replace(meta, sha256=digest, path=str(p))


def _read_item(p: Path) -> BundleMeta:
    import pystac
    from pystac.extensions.file import FileExtension
    from pystac.extensions.mlm import AssetDetailedMLMExtension, MLMExtension

    where = f"model bundle {str(p)!r}"
    try:
        item = pystac.Item.from_file(str(p / ITEM_FILE))
        mlm = MLMExtension.ext(item)
        (inp,), (out,) = mlm.input, mlm.output
        hyper = mlm.hyperparameters.to_dict() if mlm.hyperparameters else {}
        asset = item.assets["model"]
        atype = AssetDetailedMLMExtension.ext(asset).artifact_type
        recorded = FileExtension.ext(asset).checksum
        classes = [c.to_dict() for c in (out.classes or [])]
        scaling = inp.properties.get("value_scaling") or [{"type": "offset", "value": 0.0}] * len(inp.bands)
        meta = BundleMeta(
            name=mlm.mlm_name, bands=tuple(b if isinstance(b, str) else b.name for b in inp.bands),
            scaling=tuple(scaling), valid_range=tuple(hyper["valid_range"]),
            classes=tuple(c["name"] for c in classes), class_values=tuple(int(c["value"]) for c in classes),
            class_colors=tuple(c.get("color_hint", "808080") for c in classes),
            reef_classes=tuple(hyper["reef_classes"]), receptive_radius=int(hyper["receptive_radius"]),
            halo=int(hyper["halo"]), size_multiple=int(hyper["size_multiple"]),
            artifact=Path(asset.href).name, artifact_type=atype,
            architecture=hyper.get("architecture") or {"name": mlm.architecture},
            source_data_type=hyper.get("source_data_type", "uint8"), accelerator=mlm.accelerator or "cuda",
            screen=hyper.get("screen", {}), training=hyper.get("training", {}), format=MLM_FORMAT,
        )
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001 - pystac raises many kinds for a malformed item; all mean the same here
        raise ModelError(f"{where} has malformed STAC MLM metadata ({type(e).__name__}: {e}); re-create it with "
                         "`reefmap bundle create`") from None
    if atype not in ARTIFACT_FILES or len(meta.scaling) != len(meta.bands) or not meta.classes:
        raise ModelError(f"{where}: artifact type {atype!r}, {len(meta.scaling)} scalings for {len(meta.bands)} bands and "
                         f"{len(meta.classes)} classes: re-create it with `reefmap bundle create`")
    check_screen(meta.screen, meta.classes, len(meta.bands), where)
    try:
        _ = meta.scheme  # checks the classes: one code, name and colour each, codes distinct, reef among them
    except InvalidParameter as e:
        raise ModelError(f"{where}: {e}; re-create it with `reefmap bundle create`") from None
    reserved = sorted(set(meta.class_values) & set(RESERVED_CODES))
    if reserved:
        raise ModelError(f"{where}: class codes {reserved} are reserved by the map "
                         f"({', '.join(f'{k} = {n}' for k, n in RESERVED_CODES.items())}); re-create it with other codes")
    artifact = p / meta.artifact
    if not artifact.is_file():
        raise ModelError(f"{where} lacks its model artifact {meta.artifact!r}")
    actual = file_checksum(artifact)
    if actual != recorded:
        raise ModelError(f"{where}: the checksum of {meta.artifact} is {actual[4:16]}…, not the recorded "
                         f"{str(recorded)[4:16]}… (file:checksum): the artifact changed or is corrupt; restore it or "
                         "re-create the bundle")
    props = {k: v for k, v in item.properties.items() if k not in ("datetime", "created")}
    digest = hashlib.sha256((json.dumps(props, sort_keys=True, separators=(",", ":")) + actual).encode()).hexdigest()
    return replace(meta, checksum=actual, sha256=digest, path=str(p))


# --- writing ---------------------------------------------------------------------------------------------------

def write_bundle(path: str | os.PathLike, weights: bytes, meta: dict) -> BundleMeta:
    """Write serialised ``weights`` and the metadata dict ``meta`` as a ``reefmap-bundle/1`` directory (what
    ``reefmap train`` writes); returns the metadata as read back."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    meta = json.loads(json.dumps(meta))
    (p / "weights.pt").write_bytes(weights)
    doc = {"format": BUNDLE_FORMAT, "meta": meta, "sha256": _content_hash(meta, weights)}
    (p / "bundle.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return read_bundle(p)


def write_item(out: str | os.PathLike, spec: dict, *, artifact: str, artifact_type: str, receptive_radius: int,
               halo: int, size_multiple: int, framework_version: str, total_parameters: int | None = None) -> BundleMeta:
    """Write ``item.json`` for the artifact already copied into ``out`` (``spec`` as ``read_spec`` returns it, plus
    the measured numbers); returns the metadata as read back."""
    import pystac
    from pystac.extensions.classification import Classification
    from pystac.extensions.file import FileExtension
    from pystac.extensions.mlm import (AssetDetailedMLMExtension, Hyperparameters, InputStructure, MLMExtension,
                                       ModelInput, ModelOutput, ResultStructure, ValueScaling)

    p = Path(out)
    bands, classes = spec["bands"], spec["classes"]
    item = pystac.Item(id=spec["name"], geometry=None, bbox=None, datetime=dt.datetime.now(dt.timezone.utc),
                       properties={"description": spec["description"]} if spec.get("description") else {})
    inp = ModelInput.create(
        name="image", bands=list(bands),
        input=InputStructure.create(shape=[-1, len(bands), -1, -1], dim_order=["batch", "bands", "height", "width"],
                                    data_type="float32"),
        description=f"{spec['source_data_type']} band values in {spec['valid_range']} (others are nodata), each band "
                    "scaled by its value_scaling")
    # MLM's value_scaling is one object per band; pystac's helper models a single one, so the list is set directly
    inp.properties["value_scaling"] = [ValueScaling.create(**s).to_dict() for s in spec["scaling"]]
    out_ = ModelOutput.create(
        name="logits", tasks=["semantic-segmentation"],
        result=ResultStructure.create(shape=[-1, len(classes), -1, -1], dim_order=["batch", "channel", "height", "width"],
                                      data_type="float32"),
        description="class logits per pixel, channel i = classification:classes[i]; softmax gives probabilities",
        classes=[Classification.create(value=c["value"], name=c["name"], color_hint=c["color"],
                                       description=c.get("description")) for c in classes])
    arch = spec.get("architecture") if artifact_type == "torch.save" else None
    hyper = {"receptive_radius": int(receptive_radius), "halo": int(halo), "size_multiple": int(size_multiple),
             "reef_classes": list(spec["reef_classes"]), "screen": spec.get("screen") or {},
             "source_data_type": spec["source_data_type"], "valid_range": list(spec["valid_range"]),
             **({"architecture": arch} if arch else {}), **({"training": spec["training"]} if spec.get("training") else {})}
    MLMExtension.ext(item, add_if_missing=True).apply(
        name=spec["name"], architecture=(spec.get("architecture") or {}).get("name", "unknown"),
        tasks=["semantic-segmentation"], input=[inp], output=[out_], framework="pytorch",
        framework_version=framework_version, total_parameters=total_parameters, accelerator=spec["accelerator"],
        accelerator_constrained=False, hyperparameters=Hyperparameters.create(**hyper))
    asset = pystac.Asset(href=f"./{artifact}", media_type="application/octet-stream; application=pytorch",
                         roles=["mlm:model", "mlm:weights", "data"], title=f"{spec['name']} ({artifact_type})")
    item.add_asset("model", asset)
    AssetDetailedMLMExtension.ext(asset, add_if_missing=True).artifact_type = artifact_type
    f = FileExtension.ext(asset, add_if_missing=True)
    f.checksum = file_checksum(p / artifact)
    f.size = (p / artifact).stat().st_size
    (p / ITEM_FILE).write_text(json.dumps(item.to_dict(include_self_link=False, transform_hrefs=False), indent=2) + "\n")
    return read_bundle(p)


def spec_of(meta: BundleMeta) -> dict:
    """A bundle's metadata as a spec (the dict a spec YAML file holds), to convert or re-create the bundle."""
    return {
        "name": meta.name, "bands": [{"name": b, "scaling": s} for b, s in zip(meta.bands, meta.scaling)],
        "source_data_type": meta.source_data_type, "valid_range": list(meta.valid_range),
        "classes": [{"value": v, "name": n, "color": c} for v, n, c in zip(meta.class_values, meta.classes, meta.class_colors)],
        "reef_classes": list(meta.reef_classes), "halo": meta.halo, "size_multiple": meta.size_multiple,
        "architecture": meta.architecture if meta.artifact_type == "torch.save" else None,
        "accelerator": meta.accelerator, "screen": meta.screen, "training": meta.training,
    }


def inspect_bundle(bundle: str | os.PathLike | None = None) -> dict:
    """What a bundle holds, as plain JSON values (no torch): name, artifact type, bands and their scaling, classes,
    receptive radius, halo, ... ``None`` → the shipped demo bundle."""
    m = read_bundle(bundle)
    return {"name": m.name, "path": m.path, "format": m.format, "artifact": m.artifact, "artifact_type": m.artifact_type,
            "checksum": m.checksum, "architecture": m.architecture, "bands": list(m.bands),
            "value_scaling": [dict(s) for s in m.scaling], "source_data_type": m.source_data_type,
            "valid_range": list(m.valid_range),
            "classes": [{"value": v, "name": n, "color": c} for v, n, c in zip(m.class_values, m.classes, m.class_colors)],
            "reef_classes": list(m.reef_classes), "receptive_radius": m.receptive_radius, "halo": m.halo,
            "size_multiple": m.size_multiple, "accelerator": m.accelerator, "screen": sorted(m.screen),
            "sha256": m.sha256}


def format_inspect(info: dict) -> str:
    """``inspect_bundle``'s result as text."""
    scale = [f"{b} ({', '.join(f'{k} {v:g}' if k != 'type' else v for k, v in s.items())})"
             for b, s in zip(info["bands"], info["value_scaling"])]
    return "\n".join([
        f"{info['name']}  ({info['path']})",
        f"  format         {info['format']}; artifact {info['artifact']} ({info['artifact_type']}, "
        f"{info['architecture'].get('name', 'unknown')})",
        f"  checksum       {info['checksum']}",
        f"  input          {info['source_data_type']} in {info['valid_range']}: " + "; ".join(scale),
        "  classes        " + ", ".join(f"{c['value']}={c['name']}" for c in info["classes"]),
        f"  reef classes   {', '.join(info['reef_classes'])}",
        f"  receptive      radius {info['receptive_radius']} px; halo {info['halo']} px; size multiple {info['size_multiple']}",
        f"  screen         {', '.join(info['screen']) or 'none'}; accelerator {info['accelerator']}",
    ])
