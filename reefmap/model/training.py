"""Config-driven training (``reefmap train CONFIG.yaml``, ``reefmap.train(config)``): streams patches from lazy
mosaics, checkpoints every epoch, resumes after a kill to the same weights, trains data-parallel (DDP) with
``nproc`` processes, and writes a STAC MLM bundle, a training log and a loss/metric curve.

The steps:

1. ``prepare`` opens the scenes (readers: nothing is read but the windows asked for), splits each scene by region
   into training and validation windows, reads the labels of the candidate training patches once (their class
   counts give the class weights and their reef share the balancing bins; label codes outside the class scheme
   are refused, listed), and measures the band scaling (z-score) and screen boxes on a sample of patches;
2. every epoch draws ``patches_per_epoch`` candidates from a generator seeded by (seed, epoch) (balanced: the
   reef-share bins evenly) with their augmentation, reads each batch's windows, takes an optimiser step per
   batch, scores the validation windows (confusion matrix → per-class F1/IoU, reef F1) and writes a checkpoint
   (model, optimiser, scheduler, RNG states, sampler position, history, best weights);
3. at the end (or early stop) the best weights go into a bundle (``create_bundle``) whose spec records the
   training data, the config and the validation metrics.

Outputs in ``out``: ``checkpoint.pt``, ``train-log.json``, ``train-log.csv``, ``curves.png``, ``bundle/``.
Determinism: on the CPU, the same config and thread count give the same weights, interrupted or not.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reefmap.classes import ClassScheme
from reefmap.errors import BBoxError, InvalidParameter, ModelError
from reefmap.geometry.grid import GeoBox, Window
from reefmap.geometry.vector import VECTOR_EXTS, class_features, rasterize, to_crs
from reefmap.metrics import confusion, confusion_scores
from reefmap.model.training_config import TrainingConfig, load_config

CHECKPOINT = "checkpoint.pt"
LOG_JSON = "train-log.json"
LOG_CSV = "train-log.csv"
CURVES = "curves.png"
BUNDLE_DIR = "bundle"
STATS_PATCHES = 32  #: patches sampled to measure the band scaling and screen boxes
VECTOR_LABEL_NODATA = 255  #: label code of pixels under no label polygon (unless the scene gives label_nodata)


# --- data: scenes, labels on the image grid ---------------------------------------------------------------------

class SceneData:
    """A scene's image reader and its labels on the image grid (reprojected nearest-neighbour per window when the
    label raster is on another grid; class polygons rasterised per window by pixel centre): ``read(window)`` →
    ``(image (band, y, x), codes (y, x), valid (y, x))``. ``scheme`` reads class names in label polygons."""

    def __init__(self, scene, index: int, scheme: ClassScheme | None = None):
        from reefmap.sources import open_source

        self.scene, self.index = scene, index
        self.label, self.polygons, self.same_grid = None, None, True
        if scene.synthetic is not None:
            from reefmap.synthetic.reader import SyntheticReader, synthetic_geobox
            from reefmap.synthetic.world import resolve_world

            self.image = SyntheticReader(synthetic_geobox(scene.size, scene.resolution, scene.crs),
                                         resolve_world(scene.synthetic, None))
            self.label_nodata = 0
        elif scene.label.lower().endswith(VECTOR_EXTS):
            self.image = open_source(scene.image)
            self.label_nodata = VECTOR_LABEL_NODATA if scene.label_nodata is None else scene.label_nodata
            self.polygons = LabelPolygons(scene, scheme, self.image.geobox)
        else:
            self.image = open_source(scene.image)
            self.label = open_source(scene.label)
            if len(self.label.band_names) != 1:
                raise InvalidParameter(f"label raster {scene.label!r} has {len(self.label.band_names)} bands; give a "
                                       "one-band raster of class codes")
            self.label_nodata = scene.label_nodata if scene.label_nodata is not None else self.label.nodata
            self.same_grid = self.label.geobox.same_grid(self.image.geobox)
            if not self.same_grid:
                self.check_overlap()
        self.geobox: GeoBox = self.image.geobox

    def check_overlap(self) -> None:
        from rasterio.warp import transform_bounds

        lb, ib = self.label.geobox, self.image.geobox
        w, s, e, n = transform_bounds(lb.crs, ib.crs, *lb.bounds, densify_pts=21)
        b = ib.bounds
        if w >= b.right or e <= b.left or s >= b.top or n <= b.bottom:
            raise InvalidParameter(
                f"label raster {self.scene.label!r} ({lb.crs}, bounds {tuple(round(v, 3) for v in lb.bounds)}) does not "
                f"overlap image {self.scene.image!r} ({ib.crs}, bounds {tuple(round(v, 3) for v in b)}), so it cannot be "
                "reprojected onto the image grid: give the labels of the same area (any CRS and grid)")

    def labels(self, win: Window) -> np.ndarray:
        """Class codes of ``win`` of the image grid (label nodata where there is no label)."""
        if self.polygons is not None:
            return self.polygons.rasterize(self.geobox.window(win), self.label_nodata)
        if self.label is None:
            return self.image.truth(win)
        if self.same_grid:
            return self.label.read(win)[0]
        return self.warp_labels(win)

    def warp_labels(self, win: Window) -> np.ndarray:
        from affine import Affine
        from rasterio.warp import Resampling, reproject, transform_bounds

        from reefmap.geometry.grid import BBox

        ig, lg = self.image.geobox, self.label.geobox
        dst_transform = ig.transform @ Affine.translation(win.col_start, win.row_start)
        nodata = 0 if self.label_nodata is None else self.label_nodata
        out = np.full(win.shape, nodata, dtype=np.dtype(self.label.dtype))
        x0, y0 = dst_transform @ (0, 0)
        x1, y1 = dst_transform @ (win.shape.x, win.shape.y)
        box = BBox(*transform_bounds(ig.crs, lg.crs, min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1), densify_pts=21))
        src_win = lg.pixel_window(box)
        if src_win is None:
            return out
        src_win = src_win.pad(1)
        src = self.label.read(src_win)[0]
        reproject(src, out, src_transform=lg.transform @ Affine.translation(src_win.col_start, src_win.row_start),
                  src_crs=lg.crs, dst_transform=dst_transform, dst_crs=ig.crs, resampling=Resampling.nearest,
                  src_nodata=nodata, dst_nodata=nodata)
        return out

    def read(self, win: Window, valid_range) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.scene.synthetic is not None:
            img, codes = self.image.read_with_truth(win)
        else:
            img, codes = self.image.read(win), self.labels(win)
        valid = image_valid(img, self.image.nodata, valid_range)
        if self.label_nodata is not None:
            valid &= codes != self.label_nodata
        return img, codes, valid

    def provenance(self) -> dict:
        s = self.scene
        if s.synthetic is not None:
            return {"synthetic_world_seed": s.synthetic, "size": s.size, "grid": self.geobox.to_json(),
                    "note": "procedural world; NOT real reef labels"}
        return {"image": s.image, "label": s.label, "label_nodata": self.label_nodata, "grid": self.geobox.to_json(),
                "label_reprojected": not self.same_grid,
                **({"label_rasterised": True, "label_attribute": s.label_attribute} if self.polygons else {})}


class LabelPolygons:
    """A scene's class polygons (GeoJSON/GeoPackage, see ``reefmap.geometry.vector.class_features``) in the image
    CRS, rasterised onto any window of the image grid (pixel centres; a later polygon wins where they overlap)."""

    def __init__(self, scene, scheme: ClassScheme | None, image_gb: GeoBox):
        import shapely

        if scheme is None:
            raise InvalidParameter(f"label polygons {scene.label!r} need the class scheme to read class names")
        geoms, self.codes, crs = class_features(scene.label, scene.label_attribute, scheme, what="label",
                                                hint="name the class attribute with the scene's label_attribute")
        self.geoms = to_crs(geoms, crs, image_gb.crs)
        self.tree = shapely.STRtree(self.geoms)
        if not len(self.tree.query(shapely.box(*image_gb.bounds))):
            raise InvalidParameter(f"label polygons {scene.label!r} ({len(self.geoms)} features, {crs}) do not overlap "
                                   f"image {scene.image!r} ({image_gb.crs}, bounds "
                                   f"{tuple(round(v, 3) for v in image_gb.bounds)}): give the labels of the same area")

    def rasterize(self, gb: GeoBox, nodata: int) -> np.ndarray:
        import shapely

        hits = np.sort(self.tree.query(shapely.box(*gb.bounds)))
        return rasterize(((self.geoms[i], self.codes[i]) for i in hits), gb, nodata, "uint8")


def image_valid(img: np.ndarray, nodata, valid_range) -> np.ndarray:
    """Pixels with data: not every band equal to ``nodata``, every band inside ``valid_range``."""
    valid = np.all((img >= valid_range[0]) & (img <= valid_range[1]), axis=0)
    if nodata is not None:
        valid &= ~np.all(img == np.array(nodata).astype(img.dtype), axis=0)
    return valid


# --- the regional split -----------------------------------------------------------------------------------------

def validation_regions(cfg: TrainingConfig, scenes: list[SceneData]) -> list[list[Window]]:
    """Per scene, the windows that validate (spatial blocks drawn with the seed, or the lon/lat boxes)."""
    v = cfg.validation
    out = []
    if v.blocks is not None:
        size = v.blocks.size
        for sd in scenes:
            ny, nx = -(-sd.geobox.shape.y // size), -(-sd.geobox.shape.x // size)
            if ny * nx < 2:
                raise InvalidParameter(f"scene {sd.scene.describe()} ({tuple(sd.geobox.shape)} px) holds one validation "
                                       f"block of {size} px: give smaller blocks (validation.blocks.size)")
            rng = np.random.default_rng([cfg.optimisation.seed, sd.index, 0xB10C])
            pick = rng.choice(ny * nx, max(1, round(v.blocks.fraction * ny * nx)), replace=False)
            out.append([Window(i // nx * size, min((i // nx + 1) * size, sd.geobox.shape.y), i % nx * size,
                               min((i % nx + 1) * size, sd.geobox.shape.x)) for i in sorted(pick)])
        return out
    hit = [False] * len(v.boxes)
    for sd in scenes:
        wins = []
        for k, box in enumerate(v.boxes):
            try:
                wins.append(sd.geobox.window_of_bbox(",".join(str(c) for c in box), what=sd.scene.describe()))
                hit[k] = True
            except BBoxError:
                pass
        out.append(wins)
    missing = [list(b) for b, h in zip(v.boxes, hit) if not h]
    if missing:
        extents = "; ".join(f"{sd.scene.describe()}: W, S, E, N = "
                            + ", ".join(f"{v:.4f}" for v in sd.geobox.geographic_bounds()) for sd in scenes)
        raise InvalidParameter(f"validation boxes {missing} (lon/lat W, S, E, N) do not intersect the data ({extents}): "
                               "give boxes inside the scenes")
    return out


def tiles(region: Window, size: int) -> list[Window]:
    """The whole ``size`` px squares of a grid over ``region``."""
    return [Window(r, r + size, c, c + size) for r in range(region.row_start, region.row_stop - size + 1, size)
            for c in range(region.col_start, region.col_stop - size + 1, size)]


# --- preparation: candidates, class counts, scaling ---------------------------------------------------------------

@dataclass(frozen=True)
class Prepared:
    """What every rank trains from: the spec (scaling measured), candidate windows and their reef-share bins,
    validation windows, class weights and counts."""

    spec: dict
    train: tuple[tuple[int, Window], ...]  #: (scene index, window)
    bins: tuple[int, ...]  #: reef-share bin of each training candidate
    val: tuple[tuple[int, Window], ...]
    class_counts: tuple[int, ...]
    class_weights: tuple[float, ...]
    provenance: tuple[dict, ...]


def label_patches(sd: SceneData, patch: int, block_px: int = 512):
    """The scene's whole patches (a grid of ``patch`` px) with their label codes, read in blocks of about
    ``block_px`` px so that the labels are streamed once."""
    ny, nx = sd.geobox.shape.y // patch, sd.geobox.shape.x // patch
    k = max(1, block_px // patch)
    for i0 in range(0, ny, k):
        for j0 in range(0, nx, k):
            ki, kj = min(k, ny - i0), min(k, nx - j0)
            codes = sd.labels(Window(i0 * patch, (i0 + ki) * patch, j0 * patch, (j0 + kj) * patch))
            for i in range(ki):
                for j in range(kj):
                    r, c = (i0 + i) * patch, (j0 + j) * patch
                    yield Window(r, r + patch, c, c + patch), codes[i * patch:(i + 1) * patch, j * patch:(j + 1) * patch]


def codes_to_index(codes: np.ndarray, valid: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class codes → output-channel index (-1 where invalid), and the valid codes outside the scheme."""
    y = np.full(codes.shape, -1, np.int64)
    for i, v in enumerate(values):
        y[(codes == v) & valid] = i
    return y, np.unique(codes[valid & (y < 0)])


def prepare(cfg: TrainingConfig, log=print) -> Prepared:
    from reefmap.model.architectures import size_multiple as architecture_multiple
    from reefmap.model.bundle import read_spec

    raw_spec = cfg.model.spec
    spec = read_spec(raw_spec)
    scheme = ClassScheme.from_json(spec)
    scenes = [SceneData(s, i, scheme) for i, s in enumerate(cfg.data.scenes)]
    for sd in scenes:
        if len(sd.image.band_names) != len(spec["bands"]):
            raise InvalidParameter(f"scene {sd.scene.describe()} has {len(sd.image.band_names)} bands "
                                   f"{list(sd.image.band_names)}; the spec names {len(spec['bands'])}: {spec['bands']}")
    m = architecture_multiple(cfg.model.architecture)
    if cfg.sampling.patch % m:
        raise InvalidParameter(f"sampling patch {cfg.sampling.patch} px is not a multiple of {m}, the input size "
                               f"multiple of {cfg.model.architecture['name']}: use {-(-cfg.sampling.patch // m) * m}")
    values = np.array([c["value"] for c in spec["classes"]])
    reef = np.array([c["name"] in spec["reef_classes"] for c in spec["classes"]])
    patch, vr = cfg.sampling.patch, spec["valid_range"]
    regions = validation_regions(cfg, scenes)
    train, val, shares = [], [], []
    counts = np.zeros(len(values), np.int64)
    unknown: dict[int, int] = {}
    for sd, vwins in zip(scenes, regions):
        for vw in vwins:
            val += [(sd.index, w) for w in tiles(vw, patch)]
        for w, codes in label_patches(sd, patch):
            if any(w.intersect(vw) is not None for vw in vwins):
                continue
            valid = np.ones(codes.shape, bool) if sd.label_nodata is None else codes != sd.label_nodata
            y, bad = codes_to_index(codes, valid, values)
            for b in bad:
                unknown[int(b)] = unknown.get(int(b), 0) + int((codes[valid] == b).sum())
            if not (y >= 0).any():
                continue
            counts += np.bincount(y[y >= 0], minlength=len(values))
            train.append((sd.index, w))
            shares.append(float(reef[y[y >= 0]].mean()))
    if unknown:
        scheme = ", ".join(f"{c['value']}={c['name']}" for c in spec["classes"])
        raise InvalidParameter(f"label codes {sorted(unknown)} ({sum(unknown.values())} pixels) are not in the class "
                               f"scheme ({scheme}): add them to the spec's classes, recode the labels, or set "
                               "label_nodata for a code that means no label")
    if not train:
        raise InvalidParameter(f"no training patch of {patch} px with labels lies outside the validation regions: "
                               "give more data, smaller patches or a smaller validation share")
    if not val:
        raise InvalidParameter(f"the validation regions hold no whole patch of {patch} px: give larger regions "
                               "(validation.blocks.size or boxes) or smaller patches")
    edges = np.array(cfg.sampling.reef_share_bins)
    bins = np.digitize(np.array(shares), edges[1:], right=False) if cfg.sampling.balanced else np.zeros(len(train), int)
    freq = counts / max(int(counts.sum()), 1)
    if cfg.optimisation.class_weights == "auto":
        w = np.where(freq > 0, 1.0 / np.sqrt(np.maximum(freq, 1e-4)), 0.0)
        weights = w / w[w > 0].mean()
    else:
        weights = np.array(cfg.optimisation.class_weights, float)
        if len(weights) != len(values):
            raise InvalidParameter(f"optimisation class_weights {list(weights)} must give one weight per class "
                                   f"({len(values)}: {[c['name'] for c in spec['classes']]})")
    spec = measure_spec(cfg, raw_spec, spec, scenes, train, values)
    v = cfg.validation
    if len(val) > v.max_patches:  # evenly spaced, deterministic
        val = [val[int(i)] for i in np.linspace(0, len(val) - 1, v.max_patches).round()]
    log(f"data: {len(train)} training candidates of {patch} px in {len(scenes)} scenes, {len(val)} validation patches; "
        "class share " + ", ".join(f"{c['name']} {f:.3f}" for c, f in zip(spec["classes"], freq))
        + "; reef-share bins " + str(np.bincount(bins, minlength=len(edges)).tolist()))
    return Prepared(spec, tuple(train), tuple(int(b) for b in bins), tuple(val), tuple(int(c) for c in counts),
                    tuple(float(x) for x in weights), tuple(sd.provenance() for sd in scenes))


def measure_spec(cfg, raw_spec, spec: dict, scenes, train, values) -> dict:
    """The spec with a z-score measured for bands that give no scaling, screen boxes for ``screen_classes``."""
    import yaml

    raw = raw_spec if isinstance(raw_spec, dict) else yaml.safe_load(Path(raw_spec).read_text())
    unscaled = [i for i, b in enumerate(raw["bands"]) if isinstance(b, str) or "scaling" not in b]
    if not unscaled and not cfg.model.screen_classes:
        return spec
    rng = np.random.default_rng([cfg.optimisation.seed, 0x57A7])
    pick = rng.choice(len(train), min(STATS_PATCHES, len(train)), replace=False)
    px, lab = [], []
    for i in sorted(pick):
        s, w = train[i]
        img, codes, valid = scenes[s].read(w, spec["valid_range"])
        y, _ = codes_to_index(codes, valid, values)
        px.append(img[:, valid].astype(np.float64))
        lab.append(y[valid])
    px, lab = np.concatenate(px, axis=1), np.concatenate(lab)
    spec = dict(spec, scaling=list(spec["scaling"]))
    for i in unscaled:
        spec["scaling"][i] = {"type": "z-score", "mean": float(px[i].mean()), "stddev": float(px[i].std() + 1e-3)}
    names = [c["name"] for c in spec["classes"]]
    missing = sorted(set(cfg.model.screen_classes) - set(names))
    if missing:
        raise InvalidParameter(f"model screen_classes {missing} are not classes of the spec {names}")
    spec["screen"] = screen_boxes(px, lab, [names.index(c) for c in cfg.model.screen_classes], names)
    return spec


def screen_boxes(px: np.ndarray, labels: np.ndarray, screened: list[int], names: list[str], q=(0.5, 99.5)) -> dict:
    """Per screened class, colour boxes (per band [lo, hi] at percentiles ``q`` of its pixels ``px (band, n)``),
    shrunk until fewer than 0.05% of the other classes' pixels fall inside."""
    risky = px[:, ~np.isin(labels, screened) & (labels >= 0)]
    out = {}
    for k in screened:
        sel = px[:, labels == k]
        if sel.shape[1] == 0:
            continue
        lo_q, hi_q = q
        while True:
            lo, hi = np.percentile(sel, lo_q, axis=1), np.percentile(sel, hi_q, axis=1)
            inside = np.all((risky >= lo[:, None]) & (risky <= hi[:, None]), axis=0).mean() if risky.size else 0
            if inside < 5e-4 or hi_q - lo_q < 20:
                break
            lo_q, hi_q = lo_q + 2.5, hi_q - 2.5
        out[names[k]] = [[float(a), float(b)] for a, b in zip(lo, hi)]
    return out


# --- sampling and batches -----------------------------------------------------------------------------------------

def draw_epoch(cfg: TrainingConfig, prep: Prepared, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """The epoch's candidate indices and augmentation draws ``(n, 2 + 2 * bands)``: rot k, flip, gain, offset.
    Seeded by (seed, epoch) only, so a resumed run draws what the uninterrupted one drew."""
    n, nb = cfg.sampling.patches_per_epoch, len(prep.spec["bands"])
    rng = np.random.default_rng([cfg.optimisation.seed, epoch, 0xD8A7])
    bins = np.array(prep.bins)
    present = np.unique(bins)
    chosen = present[rng.integers(0, len(present), n)]
    idx = np.empty(n, np.int64)
    for b in present:  # uniform within each bin
        members = np.flatnonzero(bins == b)
        sel = chosen == b
        idx[sel] = members[rng.integers(0, len(members), int(sel.sum()))]
    a = cfg.augmentation
    aug = np.zeros((n, 2 + 2 * nb), np.float32)
    aug[:, 0] = rng.integers(0, 4, n) if a.rot90 else 0
    aug[:, 1] = rng.integers(0, 2, n) if a.flips else 0
    aug[:, 2:2 + nb] = 1.0 + rng.normal(0.0, 1.0, (n, nb)) * a.contrast
    aug[:, 2 + nb:] = rng.normal(0.0, 1.0, (n, nb)) * a.brightness
    return idx, aug


class Batches:
    """Reads the windows of a batch and returns normalised tensors (per-process readers, nothing kept)."""

    def __init__(self, cfg: TrainingConfig, prep: Prepared):
        from reefmap.model.bundle import BundleMeta

        scheme = ClassScheme.from_json(prep.spec)
        self.scenes = [SceneData(s, i, scheme) for i, s in enumerate(cfg.data.scenes)]
        self.spec = prep.spec
        self.values = np.array([c["value"] for c in prep.spec["classes"]])
        rows = BundleMeta(name="", bands=tuple(prep.spec["bands"]), scaling=tuple(prep.spec["scaling"]),
                          valid_range=(0, 0), classes=(), class_values=(), class_colors=(), reef_classes=(),
                          receptive_radius=0, halo=0, size_multiple=1).kernel_scaling()
        self.a, self.b, self.lo, self.hi = (np.array(c, np.float32)[:, None, None] for c in zip(*rows))

    def read(self, items, aug: np.ndarray | None = None):
        import torch

        xs, ys = [], []
        for j, (s, w) in enumerate(items):
            img, codes, valid = self.scenes[s].read(w, self.spec["valid_range"])
            y, bad = codes_to_index(codes, valid, self.values)
            if bad.size:
                raise InvalidParameter(f"label codes {bad.tolist()} in window {w.to_json()} of scene "
                                       f"{self.scenes[s].scene.describe()} are not in the class scheme")
            x = np.clip((img.astype(np.float32) - self.a) / self.b, self.lo, self.hi)
            if aug is not None:
                nb = x.shape[0]
                x = x * aug[j, 2:2 + nb, None, None] + aug[j, 2 + nb:, None, None]
                k = int(aug[j, 0])
                x, y = np.rot90(x, k, (1, 2)), np.rot90(y, k, (0, 1))
                if aug[j, 1]:
                    x, y = x[:, :, ::-1], y[:, ::-1]
            x = np.where(valid_after(y, x), x, 0.0)
            xs.append(np.ascontiguousarray(x, np.float32))
            ys.append(np.ascontiguousarray(y))
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


def valid_after(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Where the (augmented) label is valid: nodata pixels get a zero input (the loss ignores them)."""
    return np.broadcast_to(y >= 0, x.shape)


# --- loss, metrics ------------------------------------------------------------------------------------------------

def loss_fn(logits, y, weights, dice: float, focal_gamma: float):
    """Class-weighted cross-entropy over valid pixels (label -1 ignored), focal when ``focal_gamma`` > 0, plus
    ``dice`` x a soft Dice loss over the classes."""
    import torch
    import torch.nn.functional as F

    valid = y >= 0
    if not bool(valid.any()):
        return logits.sum() * 0.0
    if focal_gamma > 0:
        logp = F.log_softmax(logits, 1)
        yc = y.clamp(min=0)
        lp = logp.gather(1, yc[:, None])[:, 0]
        w = weights[yc]
        loss = (-(1 - lp.exp()) ** focal_gamma * lp * w)[valid].sum() / w[valid].sum()
    else:
        loss = F.cross_entropy(logits, y, weight=weights, ignore_index=-1)
    if dice > 0:
        p = torch.softmax(logits, 1) * valid[:, None]
        onehot = F.one_hot(y.clamp(min=0), logits.shape[1]).permute(0, 3, 1, 2) * valid[:, None]
        inter = (p * onehot).sum((0, 2, 3))
        denom = p.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
        loss = loss + dice * (1 - ((2 * inter + 1) / (denom + 1)).mean())
    return loss


def confusion_metrics(cm: np.ndarray, names: list[str], reef: list[bool]) -> dict:
    """Per-class precision/recall/F1/IoU of a confusion matrix (rows true, columns predicted) as
    ``reefmap.metrics`` defines them (undefined → None, not 0 or 1), and the reef F1/IoU, accuracy and mean IoU
    that training logs."""
    s = confusion_scores(cm, names, reef)
    return {"reef_f1": s["reef"]["f1"], "reef_iou": s["reef"]["iou"], "accuracy": s["accuracy"],
            "mean_iou": s["mean_iou"], "per_class": s["per_class"], "pixels": s["pixels"]}


# --- the training loop --------------------------------------------------------------------------------------------

def train(config, out: str | os.PathLike | None = None, *, nproc: int = 1, log=print):
    """Train from a config (a YAML path, a dict or a ``TrainingConfig``) into ``out`` (default: the config's
    ``out``); ``nproc`` > 1 trains data-parallel in that many processes (gloo on the CPU, one GPU each with CUDA).
    Resumes from ``out/checkpoint.pt`` when one of the same config is there; a finished ``out`` returns its bundle.
    Returns the bundle's ``BundleMeta``."""
    from reefmap.model.bundle import ITEM_FILE, read_bundle

    cfg = load_config(config)
    out = Path(out or cfg.out or f"{cfg.name}-train")
    if (out / BUNDLE_DIR / ITEM_FILE).is_file():
        log(f"{out / BUNDLE_DIR} exists: training is finished (give a new --out to train again)")
        return read_bundle(out / BUNDLE_DIR)
    if not isinstance(nproc, int) or nproc < 1:
        raise InvalidParameter(f"nproc {nproc!r} must be a whole number of processes >= 1")
    if cfg.sampling.batch % nproc:
        raise InvalidParameter(f"sampling batch {cfg.sampling.batch} must be a multiple of nproc {nproc} (each "
                               "process trains an equal share of every batch)")
    out.mkdir(parents=True, exist_ok=True)
    prep = prepare(cfg, log)
    if nproc == 1:
        run_rank(0, 1, None, cfg, prep, str(out), log)
    else:
        import socket

        import torch.multiprocessing as mp

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            mp.spawn(run_rank, args=(nproc, port, cfg, prep, str(out), print if log is print else None), nprocs=nproc, join=True)
        except mp.ProcessRaisedException as e:
            raise ModelError(f"a training process failed: {str(e).strip().splitlines()[-1]}") from None
        except mp.ProcessExitedException as e:
            raise ModelError(f"a training process died ({e}); re-run the same command to resume from the last "
                             "checkpoint") from None
    return read_bundle(out / BUNDLE_DIR)


def pick_device(setting: str, rank: int):
    import torch

    if setting == "cuda" and not torch.cuda.is_available():
        raise InvalidParameter("optimisation device 'cuda': torch sees no GPU here; use device: auto or cpu")
    if setting == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", rank % torch.cuda.device_count())


def state_digest(net) -> str:
    """sha256 of a state_dict's tensors (names, shapes, bytes)."""
    h = hashlib.sha256()
    for k, v in net.state_dict().items():
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def run_rank(rank: int, world: int, port: int | None, cfg: TrainingConfig, prep: Prepared, out: str, log) -> None:
    """One training process (rank ``rank`` of ``world``)."""
    import torch
    import torch.distributed as dist

    from reefmap.model.architectures import build_network

    o, out = cfg.optimisation, Path(out)
    log = log if (log is not None and rank == 0) else (lambda *_: None)
    threads = torch.get_num_threads()
    torch.set_num_threads(o.threads)
    device = pick_device(o.device, rank)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                                rank=rank, world_size=world)
    try:
        torch.manual_seed(o.seed)
        arch = {**cfg.model.architecture, "in_channels": len(prep.spec["bands"]), "classes": len(prep.spec["classes"])}
        net = build_network(arch).to(device)
        model = torch.nn.parallel.DistributedDataParallel(net) if world > 1 else net
        steps = cfg.sampling.patches_per_epoch // cfg.sampling.batch
        if o.optimizer == "adamw":
            opt = torch.optim.AdamW(net.parameters(), lr=o.lr, weight_decay=o.weight_decay)
        else:
            opt = torch.optim.SGD(net.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
        if o.schedule == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=o.epochs * steps)
        elif o.schedule == "step":
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=o.step_epochs * steps, gamma=o.gamma)
        else:
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        weights = torch.tensor(prep.class_weights, dtype=torch.float32, device=device)
        state = {"epoch": 0, "history": [], "best": None, "best_epoch": None, "best_state": None, "bad_epochs": 0}
        ckpt = out / CHECKPOINT
        if ckpt.is_file():
            c = torch.load(ckpt, map_location=device, weights_only=False)
            if c["config"] != cfg.identity():
                raise InvalidParameter(f"{ckpt} is the checkpoint of another training config: give a new --out, or "
                                       "delete it to start over")
            net.load_state_dict(c["model"])
            opt.load_state_dict(c["optimizer"])
            sched.load_state_dict(c["scheduler"])
            torch.set_rng_state(c["torch_rng"])
            state = c["state"]
            log(f"resuming from {ckpt} after epoch {state['epoch']}")
        batches = Batches(cfg, prep)
        names = [c["name"] for c in prep.spec["classes"]]
        reef = [c["name"] in prep.spec["reef_classes"] for c in prep.spec["classes"]]
        stop = state.get("stopped_early", False)
        while state["epoch"] < o.epochs and not stop:
            epoch = state["epoch"]
            idx, aug = draw_epoch(cfg, prep, epoch)
            model.train()
            t0, losses, read_s = time.perf_counter(), [], 0.0
            for step in range(steps):
                mine = np.arange(step * cfg.sampling.batch, (step + 1) * cfg.sampling.batch)[rank::world]
                t1 = time.perf_counter()
                xb, yb = batches.read([prep.train[i] for i in idx[mine]], aug[mine])
                read_s += time.perf_counter() - t1
                loss = loss_fn(model(xb.to(device)), yb.to(device), weights, o.dice, o.focal_gamma)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
            train_s = time.perf_counter() - t0
            loss_mean = float(np.mean(losses))
            if world > 1:
                t = torch.tensor([loss_mean], dtype=torch.float64)
                dist.all_reduce(t)
                loss_mean = float(t) / world
            cm = validate(model, batches, prep.val[rank::world], len(names), device, cfg.sampling.batch)
            if world > 1:
                t = torch.from_numpy(cm)
                dist.all_reduce(t)
                cm = t.numpy()
            m = confusion_metrics(cm, names, reef)
            px = cfg.sampling.patches_per_epoch * cfg.sampling.patch**2
            row = {"epoch": epoch + 1, "loss": round(loss_mean, 6), "lr": float(sched.get_last_lr()[0]),
                   "val_reef_f1": m["reef_f1"], "val_reef_iou": m["reef_iou"], "val_accuracy": m["accuracy"],
                   "val_mean_iou": m["mean_iou"], "train_seconds": round(train_s, 3),
                   "read_seconds": round(read_s, 3), "patches_per_s": round(cfg.sampling.patches_per_epoch / train_s, 2),
                   "mpx_per_s": round(px / train_s / 1e6, 4), "val_per_class": m["per_class"]}
            state["history"].append(row)
            score = -1.0 if m["reef_f1"] is None else m["reef_f1"]
            if state["best"] is None or score > state["best"]:
                state.update(best=score, best_epoch=epoch + 1, bad_epochs=0,
                             best_state={k: v.detach().cpu().clone() for k, v in net.state_dict().items()})
            else:
                state["bad_epochs"] += 1
            state["epoch"] = epoch + 1
            stop = bool(o.patience and state["bad_epochs"] >= o.patience)
            state["stopped_early"] = stop and state["epoch"] < o.epochs
            log(f"epoch {epoch + 1}/{o.epochs}  loss {loss_mean:.4f}  val reef F1 {fmt(m['reef_f1'])}  "
                f"accuracy {fmt(m['accuracy'])}  {row['patches_per_s']:.1f} patches/s ({row['mpx_per_s']:.3f} Mpx/s)"
                + ("  early stop" if stop else ""))
            if rank == 0:
                atomic_torch_save({"config": cfg.identity(), "model": net.state_dict(), "optimizer": opt.state_dict(),
                                   "scheduler": sched.state_dict(), "torch_rng": torch.get_rng_state(),
                                   "state": state, "sampler": {"epoch": state["epoch"],
                                                               "patches_drawn": state["epoch"] * cfg.sampling.patches_per_epoch}},
                                  ckpt)
            if world > 1:
                dist.barrier()
        digests = [state_digest(net)]
        if world > 1:
            digests = [None] * world
            dist.all_gather_object(digests, state_digest(net))
        if rank == 0:
            finish(cfg, prep, net, state, digests, out, world, log)
        if world > 1:
            dist.barrier()
    finally:
        torch.set_num_threads(threads)
        if world > 1:
            dist.destroy_process_group()


def fmt(v) -> str:
    return "undefined" if v is None else f"{v:.3f}"


def validate(model, batches: Batches, items, classes: int, device, batch: int) -> np.ndarray:
    """The confusion matrix (true x predicted, valid pixels) of ``items``."""
    import torch

    model.eval()
    cm = np.zeros((classes, classes), np.int64)
    with torch.inference_mode():
        for i in range(0, len(items), batch):
            xb, yb = batches.read(items[i:i + batch])
            pred = model(xb.to(device)).argmax(1).cpu().numpy()
            y = yb.numpy()
            v = y >= 0
            cm += confusion(y[v], pred[v], classes)
    return cm


def atomic_torch_save(obj, path: Path) -> None:
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def finish(cfg: TrainingConfig, prep: Prepared, net, state: dict, digests: list[str], out: Path, world: int, log) -> None:
    """Write the bundle (best weights), the logs and the curves."""
    import torch

    from reefmap.model.bundling import create_bundle
    from reefmap.viz.training_curves import curves_png

    if len(set(digests)) != 1:
        raise ModelError(f"the {world} training processes ended with different weights ({digests}): DDP lost sync")
    final_digest = digests[0]
    if state["best_state"] is not None:
        net.load_state_dict(state["best_state"])
    best = state["history"][state["best_epoch"] - 1]
    summary = {"epochs_run": state["epoch"], "best_epoch": state["best_epoch"],
               "stopped_early": state.get("stopped_early", False), "processes": world,
               "final_weights_sha256_by_rank": digests, "final_weights_sha256": final_digest}
    training = {
        "data": list(prep.provenance), "config": cfg.to_json(), "torch_version": torch.__version__,
        "class_counts": dict(zip([c["name"] for c in prep.spec["classes"]], prep.class_counts)),
        "class_weights": [round(w, 6) for w in prep.class_weights],
        "validation": {"split": "blocks" if cfg.validation.blocks else "boxes", "patches": len(prep.val),
                       "best_epoch": state["best_epoch"], "reef_f1": best["val_reef_f1"], "reef_iou": best["val_reef_iou"],
                       "accuracy": best["val_accuracy"], "mean_iou": best["val_mean_iou"],
                       "per_class": best["val_per_class"]},
        **{k: summary[k] for k in ("epochs_run", "stopped_early", "processes")},
    }
    spec = dict(prep.spec, name=cfg.name, training=training,
                architecture={**cfg.model.architecture, "in_channels": len(prep.spec["bands"]),
                              "classes": len(prep.spec["classes"])}, artifact_type="torch.save",
                bands=[{"name": b, "scaling": s} for b, s in zip(prep.spec["bands"], prep.spec["scaling"])])
    spec.pop("scaling")
    artifact = out / "model.pt"
    buf = io.BytesIO()
    torch.save({k: v.cpu() for k, v in net.state_dict().items()}, buf)
    artifact.write_bytes(buf.getvalue())
    (out / LOG_JSON).write_text(json.dumps({"name": cfg.name, "summary": summary, "epochs": state["history"]},
                                           indent=2) + "\n")
    cols = [k for k in state["history"][0] if k != "val_per_class"]
    with open(out / LOG_CSV, "w", newline="") as f:
        w = csv.DictWriter(f, cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(state["history"])
    curves_png(state["history"], out / CURVES, title=cfg.name, best_epoch=state["best_epoch"])
    tmp = out / (BUNDLE_DIR + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    meta = create_bundle(artifact, spec, tmp)
    os.replace(tmp, out / BUNDLE_DIR)
    log(f"wrote {out / BUNDLE_DIR} ({meta.name}); best epoch {state['best_epoch']}: val reef F1 "
        f"{fmt(best['val_reef_f1'])}; log {out / LOG_JSON}, curves {out / CURVES}")


def weights_of(path: str | os.PathLike) -> dict:
    """The state_dict in a training ``out`` folder's ``model.pt`` (the bundle's weights)."""
    import torch

    return torch.load(Path(path) / "model.pt", map_location="cpu", weights_only=True)

