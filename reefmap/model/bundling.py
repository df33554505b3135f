"""Making and checking bundles (with torch): ``create_bundle``, ``validate_bundle``, ``convert_bundle``.

``create_bundle(artifact, spec, out)`` loads the artifact, checks that its output has one channel per class of the
spec at the input's size, measures the size multiple (unless the architecture gives it) and the receptive
radius (``reefmap.model.receptive``), sets the halo (the radius rounded up to the size multiple, or the spec's,
never below the radius) and writes the bundle (``reefmap.model.bundle.write_item``). ``validate_bundle`` loads a
bundle, checks its checksum and its output channels, and proves it seam-free: on a random mosaic, halo'd tiles of
two different sizes give the same map.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from reefmap.errors import InvalidParameter, ModelError
from reefmap.model.architectures import size_multiple as architecture_multiple
from reefmap.model.artifacts import load_network
from reefmap.model.bundle import (ARTIFACT_FILES, MLM_FORMAT, BundleMeta, artifact_type_of, read_bundle, read_spec,
                                  spec_of, write_item)
from reefmap.model.receptive import measure_receptive_radius, measure_size_multiple, output_shape, round_up

#: largest difference of a class probability between two tilings that still counts as the same map
#: (torch's results may differ in the last bits between block shapes)
SEAM_TOLERANCE = 1e-5


def create_bundle(artifact: str | os.PathLike, spec: str | os.PathLike | dict, out: str | os.PathLike) -> BundleMeta:
    """Write a bundle directory ``out`` from a model artifact and a spec (a YAML file or its dict); returns its
    metadata. The receptive radius is measured; a spec halo below it is refused."""
    import torch

    spec = read_spec(spec)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InvalidParameter(f"bundle directory {str(out)!r} exists and is not empty; give a new --out directory")
    atype = artifact_type_of(artifact, spec["artifact_type"])
    net = load_network(artifact, atype, spec["architecture"])
    bands, classes = len(spec["bands"]), len(spec["classes"])
    if spec["size_multiple"]:
        m = spec["size_multiple"]
    elif atype == "torch.save":
        m = architecture_multiple(spec["architecture"])
    else:
        m = measure_size_multiple(net, bands)
    check_output(net, bands, classes, m, str(artifact))
    radius = measure_receptive_radius(net, bands, m)
    halo = round_up(radius, m) if spec["halo"] is None else spec["halo"]
    if halo < radius:
        raise InvalidParameter(f"halo {halo} px is below the measured receptive radius {radius} px of {str(artifact)!r}: "
                               f"tiles would show seams; give a halo of at least {radius} px, or none for "
                               f"{round_up(radius, m)} (the radius rounded up to the size multiple {m})")
    if halo % m:
        raise InvalidParameter(f"halo {halo} px is not a multiple of the network's size multiple {m}; use {round_up(halo, m)}")
    out.mkdir(parents=True, exist_ok=True)
    name = ARTIFACT_FILES[atype]
    shutil.copyfile(artifact, out / name)
    return write_item(out, spec, artifact=name, artifact_type=atype, receptive_radius=radius, halo=halo,
                      size_multiple=m, framework_version=torch.__version__,
                      total_parameters=sum(int(p.numel()) for p in net.parameters()))


def check_output(net, bands: int, classes: int, multiple: int, what: str) -> None:
    """The network maps ``(2, bands, h, w)`` to ``(2, classes, h, w)`` with finite values, or a ModelError."""
    import torch

    h, w = round_up(64, multiple), round_up(64, multiple) + multiple
    try:
        shape = output_shape(net, bands, h, w, batch=2)
    except Exception as e:  # noqa: BLE001 - whatever the network raises for this input
        raise ModelError(f"model {what} fails on a random (2, {bands}, {h}, {w}) input ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:200]}): does it take {bands} bands?") from None
    if shape[1] != classes:
        raise ModelError(f"model {what} returns {shape[1]} output channels but its bundle names {classes} classes: "
                         "give one class per output channel, in channel order")
    if shape[2:] != (h, w):
        raise ModelError(f"model {what} maps a {h}x{w} input to {shape[2]}x{shape[3]}: reefmap needs an output of the "
                         f"input's size; give the size multiple the network needs (size_multiple in the spec)")
    with torch.inference_mode():
        if not torch.isfinite(net(torch.randn(2, bands, h, w))).all():
            raise ModelError(f"model {what} returns non-finite values on a random input")


def predict_tiled(model, x: np.ndarray, tile: int, halo: int) -> np.ndarray:
    """Class probabilities ``(class, y, x)`` of a normalised ``(band, y, x)`` array, computed tile by tile, each
    tile with ``halo`` pixels of context (cut at the array's edges), as the map's tile runner does."""
    _, ny, nx = x.shape
    out = None
    for y0 in range(0, ny, tile):
        for x0 in range(0, nx, tile):
            wy, wx = max(0, y0 - halo), max(0, x0 - halo)
            window = x[:, wy:min(ny, y0 + tile + halo), wx:min(nx, x0 + tile + halo)]
            p = model.predict(window[None])[0]
            if out is None:
                out = np.empty((p.shape[0], ny, nx), np.float32)
            ty, tx = min(tile, ny - y0), min(tile, nx - x0)
            out[:, y0:y0 + ty, x0:x0 + tx] = p[:, y0 - wy:y0 - wy + ty, x0 - wx:x0 - wx + tx]
    return out


def validate_bundle(bundle: str | os.PathLike, seed: int = 0, device: str | None = None) -> dict:
    """Load a bundle and check it: the artifact's checksum, a forward pass (one output channel per class, finite
    probabilities), and seam-freeness (halo'd tiles of two sizes give the same map of a random mosaic). Runs on
    ``device`` (default: the GPU when present). Returns what was checked; raises ModelError on the first failure."""
    from reefmap.model.segmenter import TorchSegmenter

    meta = read_bundle(bundle)  # checks the checksum
    model = TorchSegmenter(meta, device=device)
    bands, classes, m, halo = len(meta.bands), len(meta.classes), meta.size_multiple, meta.halo
    rng = np.random.default_rng(seed)
    p = model.predict(rng.standard_normal((1, bands, round_up(48, m), round_up(40, m))).astype(np.float32))
    if p.shape[1] != classes:
        raise ModelError(f"model bundle {meta.path!r}: the network returns {p.shape[1]} output channels but the "
                         f"metadata names {classes} classes ({', '.join(meta.classes)}); re-create the bundle")
    if not np.isfinite(p).all():
        raise ModelError(f"model bundle {meta.path!r}: the network returns non-finite values on a random input")
    small = round_up(halo + 1, m)  # the second of these tiles has its halo cut out of the mosaic on every side
    size = 3 * small + halo + m
    tiles = (small, round_up(-(-size // 2), m))
    mosaic = rng.standard_normal((bands, size, size)).astype(np.float32)
    a, b = (predict_tiled(model, mosaic, t, halo) for t in tiles)
    differ = int((a.argmax(0) != b.argmax(0)).sum())
    diff = float(np.abs(a - b).max())
    if differ or diff > SEAM_TOLERANCE:
        raise ModelError(f"model bundle {meta.path!r} is not seam-free: on a random {size}x{size} mosaic, tiles of "
                         f"{tiles[0]} and {tiles[1]} px with halo {halo} px give maps where {differ} pixels' classes "
                         f"differ (largest probability difference {diff:.2g}): the receptive radius is larger than the "
                         f"recorded {meta.receptive_radius} px; re-create the bundle with `reefmap bundle create`")
    return {"path": meta.path, "name": meta.name, "artifact_type": meta.artifact_type, "checksum": meta.checksum,
            "output_channels": int(p.shape[1]), "classes": classes,
            "seam_free": {"mosaic": [size, size], "tiles": list(tiles), "halo": halo,
                          "max_probability_difference": diff}}


def format_validation(v: dict) -> str:
    """``validate_bundle``'s result as text."""
    s = v["seam_free"]
    return (f"{v['name']} ({v['path']}): valid\n"
            f"  checksum   {v['checksum']} matches the artifact ({v['artifact_type']})\n"
            f"  forward    {v['output_channels']} output channels = {v['classes']} classes\n"
            f"  seam-free  tiles of {s['tiles'][0]} and {s['tiles'][1]} px with halo {s['halo']} px give the same map of "
            f"a random {s['mosaic'][0]}x{s['mosaic'][1]} mosaic (largest probability difference {s['max_probability_difference']:.2g})")


def convert_bundle(old: str | os.PathLike, out: str | os.PathLike) -> BundleMeta:
    """Write a ``reefmap-bundle/1`` directory (bundle.json + weights.pt) as a STAC MLM bundle, measuring its
    receptive radius anew; its recorded halo is kept if it covers the measured radius."""
    meta = read_bundle(old)
    if meta.format == MLM_FORMAT:
        raise InvalidParameter(f"model bundle {meta.path!r} is already a STAC MLM bundle; nothing to convert")
    return create_bundle(Path(meta.path) / meta.artifact, spec_of(meta), out)
