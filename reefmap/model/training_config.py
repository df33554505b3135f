"""The training config (``reefmap train CONFIG.yaml``): frozen dataclasses and their YAML loader; no torch here.

A config has the sections ``data`` (scenes: image + label mosaics, or synthetic worlds with their truth),
``validation`` (a split by region: spatial blocks or lon/lat boxes), ``sampling``, ``augmentation``, ``model``
(architecture + the bundle spec's class scheme and bands) and ``optimisation``; ``name`` and ``out`` at the top.
``load_config`` reads a YAML file or a dict; an unknown key is refused with the known ones listed. Relative paths
are taken from the config file's folder. See ``pipelines/configs/train-demo.yaml`` for an example.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

from reefmap.config import load_yaml
from reefmap.errors import InvalidParameter

ARCHITECTURE_PARAMS = {"tiny_unet": ("base", "levels"), "resnet34_unet": ("width",)}
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "step", "none")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Scene:
    """One training area: ``image`` (any source ``open_mosaic`` reads) with ``label`` (a one-band class-code
    raster, ``label_nodata`` defaulting to its own nodata; or a GeoJSON/GeoPackage of class polygons whose
    ``label_attribute`` holds class codes or names, rasterised onto the image grid, pixels under no polygon
    ``label_nodata``, default 255: unlabelled), or ``synthetic`` (a world seed) of ``size`` px."""

    image: str | None = None
    label: str | None = None
    label_nodata: int | None = None
    label_attribute: str = "class"
    synthetic: int | None = None
    size: int = 1024
    resolution: float = 300.0
    crs: str = "EPSG:32618"

    def __post_init__(self):
        if (self.synthetic is None) == (self.image is None):
            raise InvalidParameter(f"data scene {self.describe()} must give either image (with label) or synthetic "
                                   "(a world seed), e.g. {image: scene.tif, label: labels.tif} or {synthetic: 3}")
        if self.image is not None and self.label is None:
            raise InvalidParameter(f"data scene {self.image!r} has no label: give label: <class-code raster>")
        if self.size <= 0 or self.resolution <= 0:
            raise InvalidParameter(f"data scene {self.describe()}: size and resolution must be > 0")

    def describe(self) -> str:
        return f"synthetic world {self.synthetic} ({self.size} px)" if self.synthetic is not None else repr(self.image)


@dataclass(frozen=True)
class Data:
    scenes: tuple[Scene, ...] = ()

    def __post_init__(self):
        if not self.scenes:
            raise InvalidParameter("data: scenes is empty; give at least one {image, label} or {synthetic: seed}")


@dataclass(frozen=True)
class Blocks:
    """Spatial blocks of ``size`` px; a ``fraction`` of each scene's blocks (drawn with the seed) validates."""

    size: int = 256
    fraction: float = 0.25

    def __post_init__(self):
        if self.size <= 0 or not 0 < self.fraction < 1:
            raise InvalidParameter(f"validation blocks: size {self.size} must be > 0 and fraction {self.fraction} "
                                   "in (0, 1)")


@dataclass(frozen=True)
class Validation:
    """Either ``blocks`` or ``boxes`` (lon/lat W, S, E, N); at most ``max_patches`` patches are scored per epoch."""

    blocks: Blocks | None = None
    boxes: tuple[tuple[float, float, float, float], ...] = ()
    max_patches: int = 64

    def __post_init__(self):
        if (self.blocks is None) == (not self.boxes):
            raise InvalidParameter("validation: give either blocks: {size, fraction} or boxes: [[W, S, E, N], ...] "
                                   "(a split by region; never random pixels)")
        for b in self.boxes:
            if len(b) != 4 or not (b[0] < b[2] and b[1] < b[3]):
                raise InvalidParameter(f"validation box {list(b)} must be [W, S, E, N] in lon/lat with W < E, S < N")
        if self.max_patches <= 0:
            raise InvalidParameter(f"validation max_patches {self.max_patches} must be > 0")


@dataclass(frozen=True)
class Sampling:
    """Patches of ``patch`` px, ``patches_per_epoch`` drawn per epoch in batches of ``batch``; ``balanced``: bin the
    candidate patches by their share of reef pixels (``reef_share_bins``: lower edges) and draw the bins evenly."""

    patch: int = 64
    patches_per_epoch: int = 256
    batch: int = 16
    balanced: bool = True
    reef_share_bins: tuple[float, ...] = (0.0, 0.02, 0.1, 0.3)

    def __post_init__(self):
        if self.patch <= 0 or self.batch <= 0 or self.patches_per_epoch < self.batch:
            raise InvalidParameter(f"sampling: patch {self.patch} and batch {self.batch} must be > 0 and "
                                   f"patches_per_epoch {self.patches_per_epoch} at least one batch")
        if list(self.reef_share_bins) != sorted(set(self.reef_share_bins)) or self.reef_share_bins[:1] != (0.0,):
            raise InvalidParameter(f"sampling: reef_share_bins {list(self.reef_share_bins)} must rise from 0.0")


@dataclass(frozen=True)
class Augmentation:
    flips: bool = True
    rot90: bool = True
    brightness: float = 0.0  #: std of an additive offset per patch and band (in normalised units)
    contrast: float = 0.0  #: std of a gain - 1 per patch and band

    def __post_init__(self):
        if self.brightness < 0 or self.contrast < 0:
            raise InvalidParameter("augmentation: brightness and contrast are standard deviations (>= 0)")


@dataclass(frozen=True)
class Model:
    """``architecture`` ({name, parameters}; in_channels and classes come from the spec); ``spec``: a bundle spec
    (YAML path or mapping, as ``reefmap bundle create`` takes) giving the bands and class scheme; bands without a
    scaling get a z-score measured on the training data. ``screen_classes``: classes whose colour boxes are
    measured for the empty-tile screen."""

    spec: str | dict = ""
    architecture: dict = field(default_factory=lambda: {"name": "tiny_unet", "base": 8, "levels": 2})
    screen_classes: tuple[str, ...] = ()

    def __post_init__(self):
        name = self.architecture.get("name")
        if name not in ARCHITECTURE_PARAMS:
            raise InvalidParameter(f"model architecture {name!r} is not one of {list(ARCHITECTURE_PARAMS)}")
        unknown = sorted(set(self.architecture) - {"name", *ARCHITECTURE_PARAMS[name]})
        if unknown:
            raise InvalidParameter(f"model architecture {name} has unknown parameters {unknown}; known: "
                                   f"{['name', *ARCHITECTURE_PARAMS[name]]}")
        if not self.spec:
            raise InvalidParameter("model: spec is missing; give a bundle spec (bands, classes, reef_classes), "
                                   "e.g. spec: reefmap/model/specs/demo.yaml")


@dataclass(frozen=True)
class Optimisation:
    optimizer: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9  #: sgd only
    schedule: str = "cosine"
    step_epochs: int = 10  #: schedule step: multiply lr by gamma every step_epochs
    gamma: float = 0.1
    epochs: int = 10
    patience: int = 0  #: early stopping: stop after this many epochs without a better validation reef F1 (0: never)
    class_weights: str | tuple[float, ...] = "auto"  #: auto: inverse square root of the class frequencies
    dice: float = 0.0  #: weight of a soft Dice loss added to the cross-entropy
    focal_gamma: float = 0.0  #: > 0: focal cross-entropy
    seed: int = 0
    threads: int = 2  #: torch CPU threads per process (results depend on it)
    device: str = "auto"

    def __post_init__(self):
        for key, allowed in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("device", DEVICES)):
            if getattr(self, key) not in allowed:
                raise InvalidParameter(f"optimisation {key} {getattr(self, key)!r} is not one of {list(allowed)}")
        if self.lr <= 0 or self.epochs <= 0 or self.threads <= 0 or self.step_epochs <= 0:
            raise InvalidParameter("optimisation: lr, epochs, threads and step_epochs must be > 0")
        if self.patience < 0 or self.dice < 0 or self.focal_gamma < 0:
            raise InvalidParameter("optimisation: patience, dice and focal_gamma must be >= 0")
        if isinstance(self.class_weights, str) and self.class_weights != "auto":
            raise InvalidParameter(f"optimisation class_weights {self.class_weights!r} must be auto or one number per class")


@dataclass(frozen=True)
class TrainingConfig:
    name: str
    data: Data
    validation: Validation
    model: Model
    sampling: Sampling = Sampling()
    augmentation: Augmentation = Augmentation()
    optimisation: Optimisation = Optimisation()
    out: str | None = None

    def to_json(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def identity(self) -> str:
        """A hash of everything that changes the trained weights (not ``out``): a checkpoint resumes only its own."""
        d = self.to_json()
        d.pop("out")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def load_config(config: str | os.PathLike | dict | TrainingConfig) -> TrainingConfig:
    """A ``TrainingConfig`` from a YAML file, a dict or itself. Relative paths (scenes, spec, out) are taken from
    the YAML file's folder (from the working directory for a dict)."""
    if isinstance(config, TrainingConfig):
        return config
    base = Path.cwd()
    if not isinstance(config, dict):
        config, base = load_yaml(config, "a training config (name, data, ...)")
    cfg = build(TrainingConfig, config, "the training config")
    return resolve_paths(cfg, base)


def resolve_paths(cfg: TrainingConfig, base: Path) -> TrainingConfig:
    def local(p):
        return p if p is None or "://" in p or Path(p).is_absolute() else str(base / p)

    scenes = tuple(dataclasses.replace(s, image=local(s.image), label=local(s.label)) for s in cfg.data.scenes)
    spec = local(cfg.model.spec) if isinstance(cfg.model.spec, str) else cfg.model.spec
    return dataclasses.replace(cfg, data=Data(scenes), model=dataclasses.replace(cfg.model, spec=spec),
                               out=local(cfg.out))


def build(cls, values, where: str):
    """``cls(**values)`` with nested dataclasses built too; unknown keys are refused with the known ones listed."""
    if not isinstance(values, dict):
        raise InvalidParameter(f"{where} must be a mapping of {[f.name for f in dataclasses.fields(cls)]}, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise InvalidParameter(f"{where} has unknown keys {unknown}; known keys: {known}")
    kwargs = {k: convert(hints[k], v, f"{where}: {k}") for k, v in values.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required key is missing
        raise InvalidParameter(f"{where}: {e}; known keys: {known}") from None


def convert(hint, value, where: str):
    """A YAML value as the type ``hint`` names: nested dataclasses, tuples from lists, numbers checked."""
    if value is None:
        return None
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    if typing.get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType")):
        for a in args:
            if dataclasses.is_dataclass(a) or (typing.get_origin(a) is tuple and isinstance(value, list)):
                return convert(a, value, where)
        for a in args:
            if isinstance(value, a if typing.get_origin(a) is None else typing.get_origin(a)):
                return value
        if float in args and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        raise InvalidParameter(f"{where} must be {' or '.join(getattr(a, '__name__', str(a)) for a in args)}, got {value!r}")
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, (list, tuple)):
            raise InvalidParameter(f"{where} must be a list, got {value!r}")
        inner = typing.get_args(hint)[0]
        return tuple(convert(inner, v, f"{where}[{i}]") for i, v in enumerate(value))
    if hint is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise InvalidParameter(f"{where} must be a number, got {value!r}")
        return float(value)
    if hint in (int, bool, str, dict) and not (isinstance(value, hint) and not (hint is int and isinstance(value, bool))):
        raise InvalidParameter(f"{where} must be {hint.__name__}, got {value!r}")
    return value
