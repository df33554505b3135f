"""Quick-look pictures of a map: class colours (and reef probability) as a PNG with a legend."""

from __future__ import annotations

import numpy as np

from reefmap.classes import CLASSES

#: class code → RGB
PALETTE = {0: (0, 0, 0), 1: (16, 40, 110), 2: (120, 200, 210), 3: (255, 80, 60), 4: (150, 120, 70), 5: (235, 235, 235)}
PENDING_RGB = (90, 90, 90)


def colorize(classification: np.ndarray) -> np.ndarray:
    lut = np.zeros((256, 3), np.uint8)
    for code, rgb in PALETTE.items():
        lut[code] = rgb
    return lut[classification]


def quicklook_png(path, classification: np.ndarray, reef_probability: np.ndarray | None = None, *,
                  title: str = "", max_size: int = 1024) -> str:
    """Write ``path``: the class map (and, beside it, reef probability in grey), decimated to ``max_size``,
    with a colour legend underneath."""
    from PIL import Image, ImageDraw

    step = max(1, int(np.ceil(max(classification.shape) / max_size)))
    panels = [colorize(classification[::step, ::step])]
    if reef_probability is not None:
        p = reef_probability[::step, ::step]
        g = np.where(p == 255, 0, np.clip(p.astype(np.int32) * 255 // 250, 0, 255)).astype(np.uint8)
        panels.append(np.stack([g, g, g], -1))
    h = panels[0].shape[0]
    gap = np.full((h, 8, 3), 255, np.uint8)
    body = np.concatenate([x for pnl in panels for x in (pnl, gap)][:-1], axis=1)
    legend_h = 28
    img = Image.new("RGB", (max(body.shape[1], 560), h + legend_h + (18 if title else 0)), (255, 255, 255))
    y0 = 18 if title else 0
    img.paste(Image.fromarray(body), (0, y0))
    d = ImageDraw.Draw(img)
    if title:
        d.text((4, 3), title, fill=(0, 0, 0))
    x = 4
    for name, code in [("nodata", 0), *CLASSES.items()]:
        d.rectangle([x, y0 + h + 8, x + 14, y0 + h + 22], fill=PALETTE[code], outline=(0, 0, 0))
        d.text((x + 18, y0 + h + 9), name, fill=(0, 0, 0))
        x += 24 + 7 * len(name)
    if reef_probability is not None:
        d.text((x + 10, y0 + h + 9), "right: reef probability", fill=(0, 0, 0))
    img.save(path)
    return str(path)
