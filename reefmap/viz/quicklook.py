"""Quick-look pictures of a map's layers (classes and reef probability) from an ``xarray.Dataset``.

Used for the demo's picture, ``reefmap query --out x.png`` and the launch notebook; drawn by
``reefmap.viz.render``. The Dataset holds ``classification`` (uint8 codes) and/or ``reef_probability`` (float,
NaN = nodata) on y/x, georeferenced through ``.rio``, and optionally ``tile_state`` (per-pixel tile states:
unfinished pixels are drawn as such). Classes are drawn and named in the class scheme recorded in the
``classification`` layer's attributes (``reefmap.store.format.classification_attrs``; the demo scheme without).
"""

from __future__ import annotations

import math

import numpy as np

from reefmap.classes import ClassScheme
from reefmap.errors import InvalidParameter
from reefmap.store.format import CLASS_NODATA, OUTSIDE, UNFINISHED, is_finished, scheme_of_attrs
from reefmap.viz.render import (LegendItem, MapPanel, Picture, UNFINISHED_RGB, categorical_rgba, geobox_of,
                                nodata_legend, probability_rgba, render_map, unfinished_legend)

#: the colour of unfinished pixels (pending or failed tiles)
PENDING_RGB = UNFINISHED_RGB


def palette(scheme: ClassScheme) -> dict[int, tuple[int, int, int]]:
    """Class code → RGB of a scheme (CLASS_NODATA black: pictures draw it transparent; it serves colour tables)."""
    return {CLASS_NODATA: (0, 0, 0), **{code: scheme.rgb(code) for code in scheme.codes}}


def class_rgba(classification: np.ndarray, scheme: ClassScheme) -> np.ndarray:
    """RGBA of class codes: the scheme's colours, unfinished grey, nodata (and unknown codes) transparent."""
    colours = {code: scheme.rgb(code) for code in scheme.codes}
    colours[UNFINISHED] = UNFINISHED_RGB
    return categorical_rgba(classification, colours)


def class_legend(scheme: ClassScheme) -> list[LegendItem]:
    return [LegendItem(name.replace("_", " "), scheme.rgb(code)) for name, code in zip(scheme.names, scheme.codes)]


def quicklook_png(path, ds, *, title: str = "", subtitle: str = "", max_size: int = 1024) -> Picture:
    """Write ``path``: the class map and/or the reef probability of ``ds`` side by side, decimated to at most
    ``max_size`` pixels on the long side (enlarged when small), with legend, colour bar, lon/lat ticks, scale bar
    and CRS. Returns the ``Picture`` (``str()`` is the path)."""
    ny, nx = int(ds.sizes["y"]), int(ds.sizes["x"])
    step = max(1, math.ceil(max(ny, nx) / max_size))
    if step > 1:
        ds = ds.isel(y=slice(None, None, step), x=slice(None, None, step))
    unfinished = None
    if "tile_state" in ds:
        st = np.asarray(ds["tile_state"].values)
        unfinished = ~is_finished(st) & (st != OUTSIDE)
    panels, legend = [], []
    if "classification" in ds:
        codes = np.asarray(ds["classification"].values)
        scheme = scheme_of_attrs(ds["classification"].attrs)
        panels.append(MapPanel(class_rgba(codes, scheme), "classes"))
        legend += class_legend(scheme)
        if unfinished is None:
            unfinished = codes == UNFINISHED
    if "reef_probability" in ds:
        panels.append(MapPanel(probability_rgba(ds["reef_probability"].values, unfinished), "reef probability",
                               colorbar=True))
    if not panels:
        raise InvalidParameter("nothing to draw: the dataset has neither classification nor reef_probability")
    legend.append(nodata_legend())
    if "tile_state" in ds or (unfinished is not None and unfinished.any()):  # a map's layers (not a bare segment())
        legend.append(unfinished_legend())
    note = f"shown at 1/{step} resolution" if step > 1 else ""
    return render_map(path, geobox_of(ds), panels, title=title, subtitle=subtitle, legend=legend, note=note)
