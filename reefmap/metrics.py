"""Confusion-matrix metrics (numpy only), the one definition used by training's validation
(``reefmap.model.training``) and by calval (``reefmap.products.calval_metrics``).

A confusion matrix ``cm[t, p]`` counts the scored pixels of true class ``t`` predicted as ``p``. For a class (or
the reef classes taken together) with ``tp`` true positives, ``support`` true pixels and ``predicted`` predicted
pixels (``None`` = undefined, never 0 or 1 in its place):

- precision = tp / predicted (None when nothing was predicted as the class);
- recall = tp / support (None when the truth has no pixel of the class);
- F1 = 2 tp / (support + predicted) and IoU = tp / (support + predicted - tp), both None when the class has no
  support (an empty class is not scored, even if it was predicted: its precision is then 0);
- accuracy = trace / pixels; macro F1 and mean IoU: the means of the defined per-class values.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def ratio(num: float, den: float) -> float | None:
    """``num / den`` as a float, None when ``den`` is 0."""
    return float(num) / float(den) if den > 0 else None


def confusion(truth: np.ndarray, pred: np.ndarray, classes: int) -> np.ndarray:
    """The ``classes`` x ``classes`` confusion matrix (int64) of class indices ``truth`` and ``pred`` (1-D, equal
    length, each in ``0 .. classes - 1``)."""
    t, p = np.asarray(truth, np.int64), np.asarray(pred, np.int64)
    return np.bincount(t * classes + p, minlength=classes * classes).reshape(classes, classes)


def scores(tp: int, support: int, predicted: int) -> dict:
    """Precision, recall, F1, IoU (None when undefined, see the module docstring), support and predicted."""
    tp, support, predicted = int(tp), int(support), int(predicted)
    return {"precision": ratio(tp, predicted), "recall": ratio(tp, support),
            "f1": ratio(2 * tp, support + predicted) if support else None,
            "iou": ratio(tp, support + predicted - tp) if support else None,
            "support": support, "predicted": predicted}


def confusion_scores(cm: np.ndarray, names: Sequence[str], reef: Sequence[bool]) -> dict:
    """``per_class`` scores by name, ``reef`` (the classes flagged in ``reef`` taken together, vs the rest),
    ``accuracy``, ``macro_f1``, ``mean_iou`` and ``pixels`` of a confusion matrix (rows true, columns predicted)."""
    cm = np.asarray(cm, np.int64)
    per_class = {n: scores(cm[k, k], cm[k].sum(), cm[:, k].sum()) for k, n in enumerate(names)}
    r = np.asarray(reef, bool)
    f1s = [v["f1"] for v in per_class.values() if v["f1"] is not None]
    ious = [v["iou"] for v in per_class.values() if v["iou"] is not None]
    return {"per_class": per_class, "reef": scores(cm[np.ix_(r, r)].sum(), cm[r].sum(), cm[:, r].sum()),
            "accuracy": ratio(np.trace(cm), cm.sum()), "macro_f1": float(np.mean(f1s)) if f1s else None,
            "mean_iou": float(np.mean(ious)) if ious else None, "pixels": int(cm.sum())}


__all__ = ["confusion", "confusion_scores", "ratio", "scores"]
