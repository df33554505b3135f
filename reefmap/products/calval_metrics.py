"""The numbers of a calval report, from arrays on one grid: ``Tally`` (additive sums) → ``Tally.metrics()``.

A ``Tally`` holds sums that add across regions (so a pooled "all regions" entry is the same computation):

- the confusion matrix ``confusion[t, p]``: evaluated pixels of true class ``t`` predicted as ``p`` (the order of
  ``codes``); evaluated = truth has a class there and the product has a prediction there;
- the true, mapped and correctly mapped reef area (m², the grid's exact pixel areas) over evaluated pixels; reef =
  any of the scheme's reef codes;
- per true reef object ``i`` (a connected component, 8-neighbour, of truth reef pixels; or an input polygon of a
  reef class): its evaluated area ``A_i`` and its F-score ``F_i`` (below), summed as ``Σ A_i``, ``Σ A_i F_i``,
  ``Σ A_i R_i``, ``Σ A_i P_i`` (over objects whose ``P_i`` is defined) and ``Σ A_i`` of those;
- calibration sums per probability bin (15 equal bins on [0, 1]): pixels, Σ p, Σ truth-is-reef.

Definitions (``None`` = undefined, never 0 or 1 in its place):

- per class (``reefmap.metrics``, shared with training's validation): precision = TP / predicted (None when
  nothing was predicted as the class); recall = TP / support (None when the truth has no pixel of the class);
  F1 = 2 TP / (support + predicted) (= 2PR / (P + R) when both are defined; 0 when the class is never predicted)
  and IoU = TP / (support + predicted − TP), both None when the class has no support (an empty class is not
  scored, even if it was predicted: its precision is then 0);
- overall accuracy = trace / evaluated pixels; macro F1 = mean of the defined per-class F1;
- reef: the same four for reef vs not reef, pixel counts and areas; the area-weighted F-score of the legacy
  project: for true reef object ``i``, recall ``R_i`` = mapped reef area inside it / its area; precision ``P_i`` =
  true reef area inside the predicted reef objects (connected components of predicted reef pixels) that overlap
  it / their whole area; ``F_i`` = 2 P_i R_i / (P_i + R_i), and 0 when nothing predicted overlaps it (missed).
  ``area_weighted_f`` = Σ A_i F_i / Σ A_i over all true reef objects in the evaluated pixels (the truth's
  extent). Predicted reefs overlapping no true reef do not enter it (the pixel reef precision counts them);
- ECE (expected calibration error of ``reef_probability`` for "truth is reef"): Σ_b n_b / N · |mean p_b − reef
  fraction_b| over 15 equal-width bins (bin b = [b/15, (b+1)/15), the last one closed), each pixel counted once
  (pixel-weighted, not area-weighted).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from reefmap.metrics import confusion, confusion_scores, ratio

ECE_BINS = 15


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components (8-neighbour) of a boolean mask: (int32 labels, 0 outside; their number). GDAL's
    polygonize traces each component along pixel edges; rasterising the polygons back (pixel centres) gives the
    same pixels, numbered."""
    from affine import Affine
    from rasterio import features

    if not mask.any():
        return np.zeros(mask.shape, np.int32), 0
    polys = [g for g, _ in features.shapes(mask.astype(np.uint8), mask=mask, connectivity=8, transform=Affine.identity())]
    labels = features.rasterize(((g, i + 1) for i, g in enumerate(polys)), out_shape=mask.shape,
                                transform=Affine.identity(), fill=0, dtype="int32")
    return labels, len(polys)


def bin_of(p: np.ndarray) -> np.ndarray:
    return np.minimum((p * ECE_BINS).astype(np.int64), ECE_BINS - 1)


@dataclass
class Tally:
    """Additive sums for one product (a map or a baseline) over one or more regions (see the module docstring)."""

    codes: tuple[int, ...]
    confusion: np.ndarray = None
    reef_true_m2: float = 0.0
    reef_mapped_m2: float = 0.0
    reef_correct_m2: float = 0.0
    objects: int = 0
    obj_area: float = 0.0
    obj_af: float = 0.0
    obj_ar: float = 0.0
    obj_ap: float = 0.0
    obj_area_p: float = 0.0
    has_probability: bool = False
    cal_n: np.ndarray = field(default_factory=lambda: np.zeros(ECE_BINS))
    cal_p: np.ndarray = field(default_factory=lambda: np.zeros(ECE_BINS))
    cal_y: np.ndarray = field(default_factory=lambda: np.zeros(ECE_BINS))
    pixels: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.confusion is None:
            self.confusion = np.zeros((len(self.codes), len(self.codes)), np.int64)

    def __iadd__(self, o: "Tally") -> "Tally":
        self.confusion = self.confusion + o.confusion
        for k in ("reef_true_m2", "reef_mapped_m2", "reef_correct_m2", "objects", "obj_area", "obj_af", "obj_ar",
                  "obj_ap", "obj_area_p"):
            setattr(self, k, getattr(self, k) + getattr(o, k))
        self.has_probability = self.has_probability or o.has_probability
        self.cal_n, self.cal_p, self.cal_y = self.cal_n + o.cal_n, self.cal_p + o.cal_p, self.cal_y + o.cal_y
        for k, v in o.pixels.items():
            self.pixels[k] = self.pixels.get(k, 0) + v
        return self

    # ---------------------------------------------------------------------------------------------------------
    def add(self, truth: np.ndarray, pred: np.ndarray, evaluated: np.ndarray, area: np.ndarray, reef_codes,
            truth_objects: np.ndarray | None = None, prob: np.ndarray | None = None) -> "Tally":
        """Add one region: ``truth``/``pred`` class codes (of ``codes``), ``evaluated`` (bool), ``area`` (m² per
        pixel, broadcastable), ``truth_objects`` (int labels of the true reef objects, 0 elsewhere; None: the
        connected components of truth reef), ``prob`` (reef probability, NaN = none; None: the product has none)."""
        k = len(self.codes)
        lut = np.full(256, -1, np.int64)
        lut[list(self.codes)] = np.arange(k)
        t, p = lut[truth[evaluated]], lut[pred[evaluated]]
        if (t < 0).any() or (p < 0).any():
            raise ValueError("codes outside the tally's codes reached the metrics (a bug: inputs are checked first)")
        self.confusion += confusion(t, p, k)
        area = np.broadcast_to(area, truth.shape)
        t_reef = np.isin(truth, reef_codes) & evaluated
        p_reef = np.isin(pred, reef_codes) & evaluated
        self.reef_true_m2 += float(area[t_reef].sum())
        self.reef_mapped_m2 += float(area[p_reef].sum())
        self.reef_correct_m2 += float(area[t_reef & p_reef].sum())
        self._add_objects(t_reef, p_reef, area, truth_objects)
        if prob is not None:
            self.has_probability = True
            ok = evaluated & np.isfinite(prob)
            b = bin_of(np.clip(prob[ok], 0.0, 1.0))
            self.cal_n += np.bincount(b, minlength=ECE_BINS)
            self.cal_p += np.bincount(b, weights=prob[ok].astype(np.float64), minlength=ECE_BINS)
            self.cal_y += np.bincount(b, weights=t_reef[ok].astype(np.float64), minlength=ECE_BINS)
        return self

    def _add_objects(self, t_reef, p_reef, area, truth_objects) -> None:
        if truth_objects is None:
            r_lab, n_r = label_components(t_reef)
        else:
            r_lab = np.where(t_reef, truth_objects, 0)
            n_r = int(r_lab.max(initial=0))
        if n_r == 0:
            return
        p_lab, n_p = label_components(p_reef)
        a_r = np.bincount(r_lab.ravel(), weights=area.ravel(), minlength=n_r + 1)
        tp_r = np.bincount(r_lab[p_reef], weights=area[p_reef], minlength=n_r + 1)
        a_p = np.bincount(p_lab.ravel(), weights=area.ravel(), minlength=n_p + 1)
        good_p = np.bincount(p_lab[t_reef], weights=area[t_reef], minlength=n_p + 1)
        both = (r_lab > 0) & (p_lab > 0)
        pairs = np.unique(r_lab[both].astype(np.int64) * (n_p + 1) + p_lab[both])
        ri, pj = pairs // (n_p + 1), pairs % (n_p + 1)
        den, num = np.zeros(n_r + 1), np.zeros(n_r + 1)
        np.add.at(den, ri, a_p[pj])
        np.add.at(num, ri, good_p[pj])
        present = np.nonzero(a_r[1:] > 0)[0] + 1  # objects with evaluated pixels
        rec = tp_r[present] / a_r[present]
        has_p = den[present] > 0
        prec = np.where(has_p, num[present] / np.where(has_p, den[present], 1.0), 0.0)
        f = np.where(prec + rec > 0, 2 * prec * rec / np.where(prec + rec > 0, prec + rec, 1.0), 0.0)
        w = a_r[present]
        self.objects += len(present)
        self.obj_area += float(w.sum())
        self.obj_af += float((w * f).sum())
        self.obj_ar += float((w * rec).sum())
        self.obj_ap += float((w[has_p] * prec[has_p]).sum())
        self.obj_area_p += float(w[has_p].sum())

    # ---------------------------------------------------------------------------------------------------------
    def metrics(self, names: tuple[str, ...], reef_codes) -> dict:
        """The JSON-ready metrics (see the module docstring); ``names`` name ``codes`` in order."""
        c = self.confusion
        s = confusion_scores(c, names, [code in reef_codes for code in self.codes])
        per_class = {name: {"code": int(code), **v} for (name, v), code in zip(s["per_class"].items(), self.codes)}
        reef = {**s["reef"],
                "area_true_km2": self.reef_true_m2 * 1e-6, "area_mapped_km2": self.reef_mapped_m2 * 1e-6,
                "area_correct_km2": self.reef_correct_m2 * 1e-6,
                "area_ratio": ratio(self.reef_mapped_m2, self.reef_true_m2),
                "area_weighted_f": ratio(self.obj_af, self.obj_area),
                "area_weighted_recall": ratio(self.obj_ar, self.obj_area),
                "area_weighted_precision": ratio(self.obj_ap, self.obj_area_p), "reef_objects": self.objects}
        out = {"pixels": dict(self.pixels), "classes": list(names), "codes": [int(v) for v in self.codes],
               "confusion": c.tolist(), "per_class": per_class, "overall_accuracy": s["accuracy"],
               "macro_f1": s["macro_f1"], "reef": reef, "calibration": None}
        if self.has_probability:
            nb = self.cal_n
            tot = nb.sum()
            ece = float(np.abs(self.cal_y - self.cal_p).sum() / tot) if tot else None
            bins = [{"lo": b / ECE_BINS, "hi": (b + 1) / ECE_BINS, "pixels": int(nb[b]),
                     "mean_probability": ratio(self.cal_p[b], nb[b]), "reef_fraction": ratio(self.cal_y[b], nb[b])}
                    for b in range(ECE_BINS)]
            out["calibration"] = {"ece": ece, "bins": bins, "pixels": int(tot)}
        return out


def metric_value(m: dict, path: str) -> float | None:
    """A metric by its dotted path in ``Tally.metrics()`` output, e.g. ``reef.f1``, ``overall_accuracy``,
    ``calibration.ece``, ``per_class.reef.iou``; None when undefined or absent."""
    v = m
    for part in path.split("."):
        if not isinstance(v, dict) or part not in v:
            return None
        v = v[part]
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


__all__ = ["ECE_BINS", "Tally", "label_components", "metric_value"]
