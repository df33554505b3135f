"""Measure per-class RGB statistics of the real Landsat Bahamas scene (the numbers in reefmap/synthetic.py).

The scene has no truth raster, so each class is sampled from hand-picked boxes (chosen by looking at the
image) combined with simple colour rules; cloud and shadow are taken scene-wide by colour alone, and reef is
the thin outer rim of the shallow shelf where it meets the deep Tongue of the Ocean on Andros' east coast
(the Andros barrier reef). Prints a table and the Python constants::

    python pipelines/measure_bahamas_colours.py [path/to/RGB.byte.tif] [--png overlay.png]

The default path is ``<repo>/../shared/data/real/RGB.byte.tif``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "RGB.byte.tif"

# Boxes as (row_start, row_stop, col_start, col_stop) in the 718 x 791 image, picked by eye.
BOXES = {
    "deep_water": [(360, 600, 470, 540), (250, 360, 440, 520), (60, 150, 560, 640)],  # Tongue of the Ocean; N of Nassau
    "land": [(140, 650, 180, 420), (165, 205, 490, 555)],  # Andros; New Providence
    "shallow_bank": [(100, 380, 100, 250), (380, 600, 40, 330)],  # Great Bahama Bank west of Andros
    "seagrass": [(200, 450, 600, 720)],  # the dark green bank east of the Tongue
    "reef": [(260, 600, 380, 470)],  # Andros' east shelf edge
}


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Square (Chebyshev) dilation by ``r`` pixels."""
    out = mask.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out |= np.roll(np.roll(mask, dy, 0), dx, 1)
    return out


def _in_boxes(shape, boxes) -> np.ndarray:
    m = np.zeros(shape, bool)
    for r0, r1, c0, c1 in boxes:
        m[r0:r1, c0:c1] = True
    return m


def class_masks(rgb: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean masks of the sampled pixels of each (sub-)class, from boxes and colour rules."""
    r, g, b = (rgb[i].astype(np.int32) for i in range(3))
    total = r + g + b
    valid = (rgb != 0).any(0)
    valid_core = ~_dilate(~valid, 3)  # away from the scene's nodata collar
    lo, hi = np.minimum(np.minimum(r, g), b), np.maximum(np.maximum(r, g), b)
    cloud = valid & (lo >= 150) & (hi - lo <= 60)
    shadow = valid & (total <= 12)
    hazy = _dilate(cloud | shadow, 3)  # cloud edges and shadows: mixed pixels, keep out of surface classes
    clear = valid_core & ~hazy
    deep = clear & (hi <= 60) & (r <= 35) & (b >= r) & (total >= 30)
    water = clear & (b >= r) & (g >= r + 8) & (hi < 150)
    bright_water = water & (total >= 60) & ~deep
    near_deep = _dilate(deep, 2) & ~deep
    masks = {
        "deep_water": deep & _in_boxes(r.shape, BOXES["deep_water"]),
        "shallow_bank": bright_water & (g >= r + 25) & _in_boxes(r.shape, BOXES["shallow_bank"]),
        "seagrass": clear & ~deep & (g >= r + 4) & (g > b) & (b >= r - 2) & (hi < 120)
        & _in_boxes(r.shape, BOXES["seagrass"]),
        "reef": water & near_deep & (total >= 60) & _in_boxes(r.shape, BOXES["reef"]),
        "land": clear & (r >= b) & (total >= 25) & (hi < 150) & _in_boxes(r.shape, BOXES["land"]),
        "cloud": cloud,
        "shadow": shadow,
    }
    # Bright turquoise shoals and sand: the shallowest bank water, anywhere on the banks.
    masks["shoal"] = bright_water & (g >= 110) & _in_boxes(r.shape, BOXES["shallow_bank"] + BOXES["reef"])
    # The deepest quarter of the bank (by green): the colour shallow water darkens to at the bank edge.
    bank = masks["shallow_bank"]
    masks["bank_deep"] = bank & (g <= np.percentile(g[bank], 25))
    # The shallow class as a whole: bank, shoals and seagrass together.
    masks["shallow"] = masks["shallow_bank"] | masks["shoal"] | masks["seagrass"]
    return masks


def stats(rgb: np.ndarray, mask: np.ndarray) -> dict:
    px = rgb[:, mask].astype(np.float64)
    return {
        "n": int(mask.sum()),
        "mean": px.mean(1),
        "std": px.std(1),
        "cov": np.cov(px),
        "p5": np.percentile(px, 5, axis=1),
        "p50": np.percentile(px, 50, axis=1),
        "p95": np.percentile(px, 95, axis=1),
    }


def main(argv=None) -> dict:
    import rasterio

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path", nargs="?", default=str(DEFAULT_PATH))
    ap.add_argument("--png", help="write the image with the sampled pixels tinted per class")
    args = ap.parse_args(argv)
    with rasterio.open(args.path) as ds:
        rgb = ds.read()
    masks = class_masks(rgb)
    table = {name: stats(rgb, m) for name, m in masks.items()}

    fmt = lambda v: "(" + ", ".join(f"{x:6.1f}" for x in v) + ")"  # noqa: E731
    print(f"{'class':13s} {'pixels':>7s}  {'mean R,G,B':24s} {'std R,G,B':24s} {'p5':24s} {'p50':24s} {'p95':24s}")
    for name, s in table.items():
        cols = " ".join(fmt(s[k]) for k in ("mean", "std", "p5", "p50", "p95"))
        print(f"{name:13s} {s['n']:7d}  {cols}")
    print("\n# constants for reefmap/synthetic.py")
    for name, s in table.items():
        cov = ", ".join("(" + ", ".join(f"{x:.1f}" for x in row) + ")" for row in s["cov"])
        print(f'"{name}": ({tuple(round(float(x), 1) for x in s["mean"])}, ({cov})),')

    if args.png:
        from PIL import Image

        tint = {"deep_water": (255, 0, 255), "shallow_bank": (0, 255, 255), "seagrass": (0, 255, 0),
                "shoal": (255, 255, 0), "reef": (255, 0, 0), "land": (255, 128, 0), "cloud": (0, 0, 255),
                "shadow": (128, 0, 128)}
        img = np.moveaxis(rgb, 0, -1).copy()
        for name, colour in tint.items():
            img[masks[name]] = (0.5 * img[masks[name]] + 0.5 * np.array(colour)).astype(np.uint8)
        Image.fromarray(img).save(args.png)
    return table


if __name__ == "__main__":
    main()
