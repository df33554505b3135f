"""Model bundles and the segmenter protocol.

A bundle is a directory holding ``bundle.json`` (architecture, input bands and their normalisation, class
names and codes, the receptive radius and the halo it needs, the empty-tile screen, a content hash) and
``weights.pt`` (a torch ``state_dict``). ``read_bundle`` reads the metadata without importing torch (planning
and status never need it); ``load_model`` builds the network, once per process, on the GPU when present.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from reefmap.classes import CLASS_NAMES, CLASSES
from reefmap.errors import ModelError
from reefmap.options import get_option

BUNDLE_FORMAT = "reefmap-bundle/1"
DEMO_BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "demo"


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


_META_CACHE: dict[str, tuple[tuple, BundleMeta]] = {}  # path → ((mtime, size) of both files, metadata)


def read_bundle(bundle: str | os.PathLike | None = None) -> BundleMeta:
    """The bundle's metadata and content hash (no torch import). ``None`` → the shipped demo bundle."""
    p = _bundle_dir(bundle).resolve()
    key = str(p)
    stamp = tuple((f.stat().st_mtime_ns, f.stat().st_size) if f.exists() else None
                  for f in (p / "bundle.json", p / "weights.pt"))
    cached = _META_CACHE.get(key)
    if cached is not None and cached[0] == stamp:
        return cached[1]
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
    _META_CACHE[key] = (stamp, meta)
    return meta


@runtime_checkable
class Segmenter(Protocol):
    """Anything that turns normalised pixels into class probabilities."""

    meta: BundleMeta

    def predict(self, x: np.ndarray) -> np.ndarray:
        """float32 ``(batch, band, y, x)`` → float32 class probabilities ``(batch, class, y, x)``."""


# --- the torch side ------------------------------------------------------------------------------------------

def receptive_radius(levels: int, convs_per_block: int = 2, kernel: int = 3) -> int:
    """Receptive radius (pixels) of ``TinyUNet``: each 3x3 conv at depth d adds 2**d, pooling adds 2**d - ... ."""
    r = 0
    k = kernel // 2
    for d in range(levels):  # encoder blocks at depth d, then a 2x2 pool
        r += convs_per_block * k * 2**d
        r += 2**d  # the 2x2 max-pool's extent at this depth
    r += convs_per_block * k * 2**levels  # bottleneck
    for d in reversed(range(levels)):  # upsample (nearest, no extent) + decoder block at depth d
        r += 2**d  # the 2x upsample aligns within one coarse pixel
        r += convs_per_block * k * 2**d
    return r


def build_network(architecture: dict):
    """The torch module for an architecture dict (``{"name": "tiny_unet", "in_channels", "classes", "base", "levels"}``)."""
    import torch
    from torch import nn

    if architecture.get("name") != "tiny_unet":
        raise ModelError(f"unknown architecture {architecture.get('name')!r}; this reefmap knows 'tiny_unet'")

    def block(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(o, o, 3, padding=1), nn.ReLU(inplace=True))

    class TinyUNet(nn.Module):
        def __init__(self, in_channels: int, classes: int, base: int, levels: int):
            super().__init__()
            chans = [base * 2**i for i in range(levels + 1)]
            self.down = nn.ModuleList()
            c = in_channels
            for ch in chans[:-1]:
                self.down.append(block(c, ch))
                c = ch
            self.mid = block(c, chans[-1])
            self.up = nn.ModuleList()
            self.dec = nn.ModuleList()
            for ch in reversed(chans[:-1]):
                self.up.append(nn.Conv2d(ch * 2, ch, 1))
                self.dec.append(block(ch * 2, ch))
            self.head = nn.Conv2d(chans[0], classes, 1)

        def forward(self, x):
            skips = []
            for blk in self.down:
                x = blk(x)
                skips.append(x)
                x = torch.nn.functional.max_pool2d(x, 2)
            x = self.mid(x)
            for up, dec, s in zip(self.up, self.dec, reversed(skips)):
                x = up(torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest"))
                x = dec(torch.cat([x, s], 1))
            return self.head(x)

    a = architecture
    return TinyUNet(int(a["in_channels"]), int(a["classes"]), int(a["base"]), int(a["levels"]))


class TorchSegmenter:
    """A bundle's network on a device, predicting whole batches in ``inference_mode``.

    Inputs are zero-padded at the bottom/right to a multiple of ``2**levels`` and cropped back, so any
    block shape works and a block's result depends only on its own pixels.
    """

    def __init__(self, meta: BundleMeta, device: str | None = None, threads: int | None = None):
        import torch

        self.meta = meta
        self._device_arg = device
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if threads:
            torch.set_num_threads(int(threads))
        net = build_network(meta.architecture)
        state = torch.load(Path(meta.path) / "weights.pt", map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        self.net = net.eval().to(self.device, memory_format=torch.channels_last)
        self._torch = torch

    def __reduce__(self):  # travels to workers as its bundle path; loaded once there
        return (load_model, (self.meta.path, self._device_arg))

    def predict(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        m = self.meta.size_multiple
        b, c, h, w = x.shape
        ph, pw = (-h) % m, (-w) % m
        with torch.inference_mode():
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
            if ph or pw:
                t = torch.nn.functional.pad(t, (0, pw, 0, ph))
            t = t.contiguous(memory_format=torch.channels_last)
            p = torch.softmax(self.net(t), dim=1)[:, :, :h, :w]
            return p.float().cpu().numpy()


_MODELS: dict[tuple[str, str], TorchSegmenter] = {}
_MODELS_LOCK = threading.Lock()


def load_model(bundle: str | os.PathLike | BundleMeta | None = None, device: str | None = None,
               threads: int | None = None) -> TorchSegmenter:
    """The bundle's segmenter, loaded once per process (and device) and reused for every tile."""
    try:
        import torch  # noqa: F401
    except ImportError:  # pragma: no cover - torch is a core dependency
        raise ImportError("reefmap inference needs PyTorch: pip install torch==2.13.0") from None
    meta = bundle if isinstance(bundle, BundleMeta) else read_bundle(bundle)
    key = (meta.sha256, device or "auto")
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            model = _MODELS[key] = TorchSegmenter(meta, device=device, threads=threads or _default_threads())
    return model


def _default_threads() -> int | None:
    """Inference threads: ``REEFMAP_INFERENCE_THREADS``, else the dask worker's thread count, else torch's default."""
    env = get_option("inference_threads")
    if env:
        return int(env)
    try:
        from distributed import get_worker

        return get_worker().state.nthreads
    except (ImportError, ValueError):
        return None


def save_bundle(path: str | os.PathLike, net, meta: dict[str, Any]) -> BundleMeta:
    """Write ``net``'s weights and ``meta`` as a bundle directory; returns the metadata as read back."""
    import io

    import torch

    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, buf)
    weights = buf.getvalue()
    meta = json.loads(json.dumps(meta))
    (p / "weights.pt").write_bytes(weights)
    doc = {"format": BUNDLE_FORMAT, "meta": meta, "sha256": _content_hash(meta, weights)}
    (p / "bundle.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    _META_CACHE.pop(str(p.resolve()), None)
    return read_bundle(p)
