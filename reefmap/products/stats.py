"""Reef area statistics of a map (or a box/polygon of it): areas in km² with pixel areas true to the store's CRS.

Pixel areas (m²) are exact for the store's CRS: ``reefmap.geometry.areas`` (closed-form ellipsoidal cells for
geographic and cylindrical grids, PROJ's areal scale factor for any other projection).

A pixel belongs to a box/polygon when the query selects it (box: every pixel the box touches; polygon: pixels
whose centre is inside). Areas count only pixels of *finished* tiles; the area of unfinished tiles is reported
on its own, and ``complete_fraction`` says how much of the region (pixels) is finished.
"""

from __future__ import annotations

import numpy as np

from reefmap.geometry.areas import AreaModel, area_model
from reefmap.products.query import query, stale_note, summary
from reefmap.store.format import CLASS_NODATA, OUTSIDE, is_finished, scheme_of_attrs
from reefmap.viz.render import geobox_of

# per-block sums: the area of each class code (nodata first, then the map's classes), then these six
_UNFINISHED, _AREA, _PA, _A_VALID, _PIXELS, _FINISHED_PIXELS = range(-6, 0)


def _block_sums(cls, prob, state, model: AreaModel, rows: slice, cols: slice, codes: tuple[int, ...]) -> np.ndarray:
    area = np.broadcast_to(model.block(rows, cols), state.shape)
    inside = state != OUTSIDE
    fin = is_finished(state) & inside
    out = np.zeros(len(codes) + 6)
    for i, code in enumerate(codes):
        out[i] = area[fin & (cls == code)].sum()
    out[_UNFINISHED] = area[inside & ~fin].sum()
    out[_AREA] = area[inside].sum()
    valid = fin & np.isfinite(prob)
    out[_PA] = (prob[valid].astype(np.float64) * area[valid]).sum()
    out[_A_VALID] = area[valid].sum()
    out[_PIXELS] = inside.sum()
    out[_FINISHED_PIXELS] = fin.sum()
    return out


def stats(store, bbox=None, geometry=None, *, resolution=None, storage_options: dict | None = None) -> dict:
    """Reef area statistics of ``store`` within ``bbox`` (lon/lat W,S,E,N) and/or ``geometry`` (lon/lat polygon),
    or the whole map. Returns a JSON-ready dict: ``reef_area_km2`` (pixels of the reef classes of the map's class
    scheme), ``class_area_km2`` per class of the scheme, by name (and nodata), ``expected_reef_area_km2`` (Σ p·area), ``mean_reef_probability`` (area-weighted over
    valid finished pixels), ``unfinished_area_km2``, ``area_km2``, ``complete_fraction`` (pixels),
    ``complete_area_fraction``, the ``area_method`` and the query's level/resolution; ``stale_overview_tiles``:
    tiles finished since the overview level read was built, counted as unfinished (0 at level 0).
    """
    import dask

    ds = query(store, bbox=bbox, geometry=geometry, resolution=resolution, storage_options=storage_options)
    q = summary(ds)
    model = area_model(geobox_of(ds))
    scheme = scheme_of_attrs(ds["classification"].attrs)
    codes = (CLASS_NODATA, *scheme.codes)
    cls, prob, st = ds["classification"].data, ds["reef_probability"].data, ds["tile_state"].data
    rch, cch = st.chunks
    r_off = np.concatenate([[0], np.cumsum(rch)]).astype(int)
    c_off = np.concatenate([[0], np.cumsum(cch)]).astype(int)
    dc, dp, dst = cls.to_delayed(), prob.to_delayed(), st.to_delayed()
    parts = [dask.delayed(_block_sums, pure=True)(dc[i, j], dp[i, j], dst[i, j], model,
                                                  slice(int(r_off[i]), int(r_off[i + 1])),
                                                  slice(int(c_off[j]), int(c_off[j + 1])), codes)
             for i in range(len(rch)) for j in range(len(cch))]
    tot = np.sum(dask.compute(*parts), axis=0) if parts else np.zeros(len(codes) + 6)
    km2 = 1e-6
    by_code = dict(zip(codes, tot[:len(codes)] * km2))
    class_area = {"nodata": by_code[CLASS_NODATA], **{name: by_code[code] for name, code in zip(scheme.names, scheme.codes)}}
    out = {
        "store": q["store"],
        "bbox": q["bbox"],
        "geometry": q["geometry"],
        "crs": geobox_of(ds).crs,
        "level": q["level"],
        "resolution": q["resolution"],
        "pixels": int(tot[_PIXELS]),
        "area_km2": tot[_AREA] * km2,
        "reef_area_km2": sum(by_code[c] for c in scheme.reef_codes),
        "reef_classes": list(scheme.reef),
        "expected_reef_area_km2": tot[_PA] * km2,
        "class_area_km2": class_area,
        "mean_reef_probability": (tot[_PA] / tot[_A_VALID]) if tot[_A_VALID] > 0 else None,
        "unfinished_area_km2": tot[_UNFINISHED] * km2,
        "complete_fraction": (tot[_FINISHED_PIXELS] / tot[_PIXELS]) if tot[_PIXELS] else 0.0,
        "complete_area_fraction": ((tot[_AREA] - tot[_UNFINISHED]) / tot[_AREA]) if tot[_AREA] else 0.0,
        "area_method": model.method,
        "area_method_description": model.description,
        "stale_overview_tiles": q["stale_overview_tiles"],
    }
    for k, v in list(out.items()):
        if isinstance(v, np.floating):
            out[k] = float(v)
    out["class_area_km2"] = {k: float(v) for k, v in class_area.items()}
    return out


def format_stats(s: dict) -> str:
    lines = [f"{s['store']}" + (f"  bbox {s['bbox']}" if s["bbox"] else "") + ("  (polygon)" if s["geometry"] else ""),
             f"  reef area ({', '.join(s['reef_classes'])}) {s['reef_area_km2']:.3f} km² (expected from probability {s['expected_reef_area_km2']:.3f} km²)"
             f" of {s['area_km2']:.3f} km²; mean reef probability "
             + ("n/a" if s["mean_reef_probability"] is None else f"{s['mean_reef_probability']:.3f}"),
             "  by class: " + ", ".join(f"{k} {v:.3f}" for k, v in s["class_area_km2"].items()) + " km²",
             f"  complete {100 * s['complete_fraction']:.1f}% of pixels; unfinished {s['unfinished_area_km2']:.3f} km²",
             f"  areas: {s['area_method']} ({s['crs']}, level {s['level']}, pixel {s['resolution']:g})"]
    if stale_note(s):
        lines.append(f"  WARNING: {stale_note(s)}")
    return "\n".join(lines)
