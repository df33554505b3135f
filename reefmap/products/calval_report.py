"""The files of a calval report directory: ``report.md`` (a ranked table and per-region tables) and the PNGs
(confusion matrices, reliability diagrams, per-region bars, map excerpts of truth vs prediction vs baselines).
``report.json`` is written by ``reefmap.products.calval.calval``. Charts use matplotlib's object API (no pyplot);
map excerpts the one map renderer, ``reefmap.viz.render``.
"""

from __future__ import annotations

import math
import os
import re

import numpy as np

from reefmap.products.calval_metrics import metric_value
from reefmap.viz.render import LegendItem, MapPanel, categorical_rgba, nodata_legend, render_map, unfinished_legend

UNFINISHED_CODE = 254
NOT_REEF_CODE, BINARY_REEF_CODE = 252, 253
NOT_REEF_RGB = (200, 200, 200)
EXCERPT_MAX = 400


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "region"


def fmt(v, digits: int = 3) -> str:
    """A report's number: ``digits`` decimals; a non-zero value too small for them (an ECE of 0.0004) with its two
    significant digits, never as a false 0.000."""
    if v is None:
        return "n/a"
    if isinstance(v, int):
        return f"{v:,}"
    if v != 0 and abs(v) < 0.5 * 10 ** -digits:
        return f"{v:.2g}"
    return f"{v:.{digits}f}"


def figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, facecolor="white")
    FigureCanvasAgg(fig)
    return fig


# ------------------------------------------------------------------------------------------------------------
# charts
# ------------------------------------------------------------------------------------------------------------
def confusion_png(path: str, region: dict) -> None:
    """One confusion matrix per product (rows: truth, columns: prediction), coloured by the row share (recall),
    annotated with pixel counts."""
    prods = region["products"]
    n = len(prods)
    ncol = min(n, 3)
    nrow = math.ceil(n / ncol)
    fig = figure(4.6 * ncol, 4.4 * nrow + 0.6)
    fig.suptitle(f"Confusion matrices: region {region['name']}\n(rows truth, columns prediction; colour = row share)",
                 fontsize=10)
    for k, (name, m) in enumerate(prods.items()):
        ax = fig.add_subplot(nrow, ncol, k + 1)
        c = np.asarray(m["confusion"], np.float64)
        share = c / np.maximum(c.sum(axis=1, keepdims=True), 1)
        im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        labels = [s.replace("_", " ") for s in m["classes"]]
        ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_xlabel("predicted", fontsize=9)
        ax.set_ylabel("true", fontsize=9)
        for i in range(c.shape[0]):
            for j in range(c.shape[1]):
                ax.text(j, i, f"{int(c[i, j]):,}", ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.6 else "black")
        ax.set_title(f"{name}\nOA {fmt(m['overall_accuracy'])}, reef F1 {fmt(m['reef']['f1'])}", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path)


def reliability_png(path: str, region: dict) -> bool:
    """The reliability diagram of every product with a reef probability; False (nothing written) when none has."""
    cal = {n: m["calibration"] for n, m in region["products"].items() if m["calibration"] and m["calibration"]["pixels"]}
    if not cal:
        return False
    fig = figure(7.0, 7.5)
    ax = fig.add_axes((0.11, 0.36, 0.85, 0.56))
    hx = fig.add_axes((0.11, 0.08, 0.85, 0.2))
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="perfect calibration")
    width = 1 / 15 / (len(cal) + 1)
    for k, (name, c) in enumerate(cal.items()):
        bins = [b for b in c["bins"] if b["pixels"]]
        ax.plot([b["mean_probability"] for b in bins], [b["reef_fraction"] for b in bins], marker="o",
                label=f"{name} (ECE {fmt(c['ece'])}, {c['pixels']:,} px)")
        hx.bar([b["lo"] + (k + 0.5) * width for b in c["bins"]], [max(b["pixels"], 0) for b in c["bins"]],
               width=width, label=name)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean predicted reef probability (15 bins)")
    ax.set_ylabel("observed reef fraction (truth)")
    ax.set_title(f"Reliability of reef_probability: region {region['name']}", fontsize=11)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    hx.set_yscale("log")
    hx.set_xlim(0, 1)
    hx.set_xlabel("predicted reef probability")
    hx.set_ylabel("pixels per bin")
    fig.savefig(path)
    return True


def regions_png(path: str, report: dict) -> None:
    """Per-region bars of reef F1 and the area-weighted F-score side by side, one bar per product (and all regions
    pooled), regions down the page so that any number of them stays readable."""
    names = [p["name"] for p in report["products"]]
    cols = [(r["name"], r["products"]) for r in report["regions"]]
    if len(cols) > 1:
        cols.append(("all regions", report["all_regions"]))
    n, k_n = len(cols), max(1, len(names))
    label_in = 0.075 * max(len(c) for c, _ in cols)  # the region names' width, inches at 8 pt
    fig = figure(8.0 + label_in, max(3.2, 0.22 * n * k_n + 0.3 * n + 1.6 + 0.25 * k_n))
    h = 0.8 / k_n
    for col, (metric, label) in enumerate((("reef.f1", "reef F1 (pixels)"),
                                           ("reef.area_weighted_f", "area-weighted reef F-score"))):
        ax = fig.add_subplot(1, 2, col + 1)
        for k, name in enumerate(names):
            vals = [metric_value(prods.get(name, {}), metric) for _, prods in cols]  # n/a: not scored there
            ys = np.arange(n) + (k - (k_n - 1) / 2) * h
            ax.barh(ys, [v if v is not None else 0 for v in vals], h, label=name, color=f"C{k}")
            for y, v in zip(ys, vals):
                ax.text((v or 0) + 0.01, y, "n/a" if v is None else f"{v:.2f}", ha="left", va="center", fontsize=7)
        ax.set_yticks(range(n), [c for c, _ in cols] if col == 0 else [""] * n, fontsize=8)
        ax.set_ylim(n - 0.5, -0.5)  # the first region on top, "all regions" last
        ax.set_xlim(0, 1.15)
        ax.set_xlabel(label)
        ax.grid(axis="x", alpha=0.3)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(k_n, 2), fontsize=8, frameon=False)
    fig.suptitle("Reef scores per region", fontsize=11)
    fig.tight_layout(rect=(0, 0.35 / fig.get_figheight() * (1 + (k_n - 1) // 2), 1, 0.97))
    fig.savefig(path)


# ------------------------------------------------------------------------------------------------------------
# map excerpts
# ------------------------------------------------------------------------------------------------------------
def excerpt_png(path: str, region: dict, arrays: dict, scheme: dict) -> None:
    """Truth, each map and each baseline of a region side by side, on its grid (decimated to ≤ EXCERPT_MAX px)."""
    gb = arrays["geobox"]
    step = max(1, math.ceil(max(gb.shape) / EXCERPT_MAX))
    sl = (slice(None, None, step), slice(None, None, step))
    inside = arrays["inside"][sl]
    colours = {c: tuple(int(h[k:k + 2], 16) for k in (0, 2, 4)) for c, h in zip(scheme["codes"], scheme["colors"])}
    reef_rgb = colours[scheme["reef_codes"][0]]
    colours |= {UNFINISHED_CODE: (90, 90, 90), NOT_REEF_CODE: NOT_REEF_RGB, BINARY_REEF_CODE: reef_rgb}
    t_codes, t_valid = arrays["truth"]
    truth = np.where(t_valid[sl] & inside, t_codes[sl], 0)
    panels = [MapPanel(categorical_rgba(truth, colours), "truth")]
    any_unfinished = any_binary = False
    for name, (codes, has_pred, unfinished, binary) in arrays["products"].items():
        c = codes[sl]
        if binary:
            c = np.where(c == 1, BINARY_REEF_CODE, NOT_REEF_CODE)
            any_binary = True
        shown = np.where(has_pred[sl] & inside, c, 0)
        if unfinished is not None:
            shown = np.where(unfinished[sl] & inside, UNFINISHED_CODE, shown)
            any_unfinished |= bool(unfinished.any())
        kind = region["products"][name]
        panels.append(MapPanel(categorical_rgba(shown, colours),
                               f"{name}: reef F1 {fmt(kind['reef']['f1'], 2)}"))
    legend = [LegendItem(n.replace("_", " "), colours[c]) for n, c in zip(scheme["names"], scheme["codes"])]
    if any_binary:
        legend.append(LegendItem("not reef (reef-only baseline)", NOT_REEF_RGB))
    legend.append(nodata_legend())
    if any_unfinished:
        legend.append(unfinished_legend())
    geobox = gb if step == 1 else _decimated(gb, step, truth.shape)
    render_map(path, geobox, panels, title=f"Truth vs prediction: region {region['name']}",
               subtitle="white/hatched: no truth or no prediction (not scored)", legend=legend, min_size=300,
               note=f"shown at 1/{step} resolution" if step > 1 else "")


def _decimated(gb, step: int, shape):
    from affine import Affine

    from reefmap.geometry.grid import GeoBox, Shape

    return GeoBox(Shape(*shape), gb.transform @ Affine.scale(step), gb.crs)


# ------------------------------------------------------------------------------------------------------------
# report.md
# ------------------------------------------------------------------------------------------------------------
def markdown(report: dict, pngs: dict) -> str:
    kinds = {p["name"]: p for p in report["products"]}
    metric = report["rank_by"]
    if "sites" in report:
        where = (f"Validated grids: {len(report['sites'])} sites ("
                 + "; ".join(f"{g['site']}: `{g['map']}`, truth `{g['truth']['source']}`" for g in report["sites"]) + "). ")
    else:
        where = (f"Validated grid: the map `{report['validated_grid']['map']}` ({report['validated_grid']['crs']}). "
                 f"Truth: `{report['truth']['source']}`. ")
    lines = ["# Calval report", "",
             where + "Classes: "
             + ", ".join(f"{n} ({c})" for n, c in zip(report["scheme"]["names"], report["scheme"]["codes"]))
             + f"; reef = {report['scheme']['reef_codes']}.", "",
             f"## Ranking by `{metric}` (all regions pooled)", "",
             "| rank | product | kind | " + metric + " | reef F1 | reef precision | reef recall | area-weighted F | "
             "overall accuracy | ECE | reef km² mapped / true | evaluated px |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in report["ranking"]:
        m = report["all_regions"][r["product"]]
        p = kinds[r["product"]]
        kind = p["kind"] + (f" (reef only, buffer {p['buffer_m']:g} m)" if p["binary"] else "")
        rf = m["reef"]
        lines.append(f"| {r['rank']} | {r['product']} | {kind} | {fmt(r['value'])} | {fmt(rf['f1'])} | "
                     f"{fmt(rf['precision'])} | {fmt(rf['recall'])} | {fmt(rf['area_weighted_f'])} | "
                     f"{fmt(m['overall_accuracy'])} | {fmt(m['calibration']['ece'] if m['calibration'] else None)} | "
                     f"{rf['area_mapped_km2']:.3f} / {rf['area_true_km2']:.3f} | {m['pixels'].get('evaluated', 0):,} |")
    if "regions" in pngs:
        lines += ["", f"![reef scores per region]({pngs['regions']})"]
    for reg in report["regions"]:
        box = reg["bbox_lonlat"]
        lines += ["", f"## Region {reg['name']} ({reg['kind']}" + (f", lon/lat {box}" if box else "") + ")", "",
                  "| product | evaluated px | truth nodata px | unfinished px | product nodata px | reef F1 | reef IoU | "
                  "area-weighted F (reefs) | OA | macro F1 | ECE |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, m in reg["products"].items():
            px, rf = m["pixels"], m["reef"]
            lines.append(f"| {name} | {px['evaluated']:,} | {px['truth_nodata']:,} | {px['unfinished']:,} | "
                         f"{px['product_nodata']:,} | {fmt(rf['f1'])} | {fmt(rf['iou'])} | "
                         f"{fmt(rf['area_weighted_f'])} ({rf['reef_objects']}) | {fmt(m['overall_accuracy'])} | "
                         f"{fmt(m['macro_f1'])} | {fmt(m['calibration']['ece'] if m['calibration'] else None)} |")
        lines += ["", "Per-class F1 (precision / recall; n/a = undefined: no support or no prediction):", "",
                  "| product | " + " | ".join(report["scheme"]["names"]) + " |",
                  "|---|" + "---:|" * len(report["scheme"]["names"])]
        for name, m in reg["products"].items():
            cells = []
            for cname in report["scheme"]["names"]:
                c = m["per_class"].get(cname)
                cells.append("–" if c is None else f"{fmt(c['f1'])} ({fmt(c['precision'], 2)} / {fmt(c['recall'], 2)})")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        for key, alt in (("confusion", "confusion matrices"), ("reliability", "reliability diagram"),
                         ("excerpt", "truth vs prediction")):
            if (key, reg["name"]) in pngs:
                lines += ["", f"![{alt}]({pngs[(key, reg['name'])]})"]
    lines += ["", "## Definitions", "", report["definitions"]["metrics"], "", report["definitions"]["pixels"], ""]
    return "\n".join(lines)


def write_report(report: dict, arrays: list[dict], out_dir, *, pictures: bool = True) -> dict:
    """Write report.md and the PNGs into ``out_dir`` (created); returns {what: file name} of the PNGs."""
    out = os.fspath(out_dir)
    os.makedirs(out, exist_ok=True)
    pngs: dict = {}
    if pictures:
        regions_png(os.path.join(out, "regions.png"), report)
        pngs["regions"] = "regions.png"
        for reg, arr in zip(report["regions"], arrays):
            s = slug(reg["name"])
            confusion_png(os.path.join(out, f"confusion_{s}.png"), reg)
            pngs[("confusion", reg["name"])] = f"confusion_{s}.png"
            if reliability_png(os.path.join(out, f"reliability_{s}.png"), reg):
                pngs[("reliability", reg["name"])] = f"reliability_{s}.png"
            excerpt_png(os.path.join(out, f"excerpt_{s}.png"), reg, arr, report["scheme"])
            pngs[("excerpt", reg["name"])] = f"excerpt_{s}.png"
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(markdown(report, pngs))
    report["files"] = sorted(["report.json", "report.md", *pngs.values()])
    return pngs


__all__ = ["write_report"]
