"""Training a segmentation bundle on the synthetic reef world (the shipped demo bundle is made this way).

``train_bundle(out, TrainConfig())`` draws random windows of the synthetic world with their truth
(``reefmap.synthetic.render.training_pairs``), trains a ``tiny_unet`` with class-weighted cross-entropy (nodata
ignored), measures the input normalisation and the empty-tile screen boxes from the same data, and writes a
bundle. Deterministic for a seed and a thread count.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from reefmap.classes import CLASS_NAMES
from reefmap.errors import InvalidParameter


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    steps: int = 600
    batch: int = 16
    patch: int = 128
    patches: int = 1536
    base: int = 8
    levels: int = 2
    lr: float = 3e-3
    threads: int = 2

    def __post_init__(self):
        m = 2**self.levels
        if self.patch % m:
            raise InvalidParameter(f"patch {self.patch} must be a multiple of {m} (2**levels)")
        for k in ("steps", "batch", "patch", "patches", "base", "levels", "threads"):
            if getattr(self, k) <= 0:
                raise InvalidParameter(f"{k} must be > 0, got {getattr(self, k)}")


def screen_boxes(images: np.ndarray, truth: np.ndarray, classes=("deep_water", "land"), q=(0.5, 99.5)) -> dict:
    """Per-class colour boxes (per band [lo, hi] at percentiles ``q``) used to skip all-deep/all-land tiles,
    shrunk until fewer than 0.05% of shallow/reef pixels fall inside."""
    from reefmap.classes import CLASSES, REEF, SHALLOW

    px = images.transpose(1, 0, 2, 3).reshape(images.shape[1], -1)
    t = truth.reshape(-1)
    risky = px[:, (t == REEF) | (t == SHALLOW)]
    out = {}
    for name in classes:
        sel = px[:, t == CLASSES[name]]
        if sel.shape[1] == 0:
            continue
        lo_q, hi_q = q
        while True:
            lo = np.percentile(sel, lo_q, axis=1)
            hi = np.percentile(sel, hi_q, axis=1)
            inside = np.all((risky >= lo[:, None]) & (risky <= hi[:, None]), axis=0).mean() if risky.size else 0
            if inside < 5e-4 or hi_q - lo_q < 20:
                break
            lo_q, hi_q = lo_q + 2.5, hi_q - 2.5
        out[name] = [[float(a), float(b)] for a, b in zip(lo, hi)]
    return out


def train_bundle(out, config: TrainConfig = TrainConfig(), log=print):
    """Train on the synthetic world and write a bundle to ``out``; returns its ``BundleMeta``."""
    import torch

    from reefmap.model.segmenter import save_bundle
    from reefmap.model.architectures import analytic_receptive_radius, build_network
    from reefmap.synthetic.render import training_pairs

    cfg = config
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    images, truth = training_pairs(cfg.patches, cfg.patch, cfg.seed)
    valid = truth > 0
    px = images.transpose(1, 0, 2, 3)[:, valid]
    mean = px.mean(axis=1).astype(float)
    std = px.std(axis=1).astype(float) + 1e-3
    counts = np.bincount(truth[valid].ravel(), minlength=len(CLASS_NAMES) + 1)[1:]
    freq = counts / max(counts.sum(), 1)
    weights = np.clip((1.0 / np.maximum(freq, 1e-4)) ** 0.5, 0, None)
    weights = weights / weights.mean()
    log(f"data: {cfg.patches} patches of {cfg.patch}px in {time.perf_counter() - t0:.1f}s; class share "
        + ", ".join(f"{n} {f:.3f}" for n, f in zip(CLASS_NAMES, freq)))

    arch = {"name": "tiny_unet", "in_channels": 3, "classes": len(CLASS_NAMES), "base": cfg.base, "levels": cfg.levels}
    net = build_network(arch)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps)
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32), ignore_index=-1)
    x_all = (images.astype(np.float32) - mean[None, :, None, None].astype(np.float32)) / std[None, :, None, None].astype(np.float32)
    x_all[~np.broadcast_to(valid[:, None], x_all.shape)] = 0.0
    y_all = truth.astype(np.int64) - 1  # nodata → -1 (ignored)
    rng = np.random.default_rng(cfg.seed)
    net.train()
    t1 = time.perf_counter()
    for step in range(cfg.steps):
        idx = rng.integers(0, cfg.patches, cfg.batch)
        xb = torch.from_numpy(x_all[idx])
        yb = torch.from_numpy(y_all[idx])
        k = int(rng.integers(0, 4))
        xb, yb = torch.rot90(xb, k, (2, 3)), torch.rot90(yb, k, (1, 2))
        if rng.random() < 0.5:
            xb, yb = torch.flip(xb, (3,)), torch.flip(yb, (2,))
        # photometric jitter: gain and offset per band, so real imagery's calibration differences matter less
        gain = torch.from_numpy(rng.normal(1.0, 0.08, (cfg.batch, 3, 1, 1)).astype(np.float32))
        off = torch.from_numpy(rng.normal(0.0, 0.15, (cfg.batch, 3, 1, 1)).astype(np.float32))
        xb = xb * gain + off
        loss = loss_fn(net(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == cfg.steps - 1:
            log(f"step {step:4d}  loss {loss.item():.4f}  ({time.perf_counter() - t1:.0f}s)")
    net.eval()

    # held-out accuracy on fresh windows
    ti, tt = training_pairs(64, 256, cfg.seed + 10_000)
    with torch.inference_mode():
        xt = (ti.astype(np.float32) - mean[None, :, None, None].astype(np.float32)) / std[None, :, None, None].astype(np.float32)
        pred = net(torch.from_numpy(xt)).argmax(1).numpy() + 1
    v = tt > 0
    acc = float((pred[v] == tt[v]).mean())
    union = (((pred == 3) | (tt == 3)) & v).sum()
    reef_iou = float(((pred == 3) & (tt == 3) & v).sum() / max(union, 1))
    log(f"held-out pixel accuracy {acc:.3f}, reef IoU {reef_iou:.3f}")

    m = 2**cfg.levels
    r = analytic_receptive_radius(arch)
    meta = {
        "name": f"reefmap-demo-tiny-unet-b{cfg.base}-l{cfg.levels}",
        "architecture": arch,
        "bands": ["red", "green", "blue"],
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "valid_range": [0.0, 255.0],
        "classes": list(CLASS_NAMES),
        "receptive_radius": r,
        "halo": -(-r // 32) * 32 if r <= 32 else -(-r // m) * m,
        "size_multiple": m,
        "screen": screen_boxes(images, truth),
        "training": {"data": "reefmap.synthetic.world (procedural; NOT real reef labels)", "config": asdict(cfg),
                     "heldout_pixel_accuracy": round(acc, 4), "heldout_reef_iou": round(reef_iou, 4),
                     "class_weights": [round(float(w), 4) for w in weights]},
    }
    return save_bundle(out, net, meta)
