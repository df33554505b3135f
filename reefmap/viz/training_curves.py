"""The training curve picture (``reefmap train`` writes ``curves.png``): the training loss and the validation
metrics per epoch, with the best epoch marked. matplotlib's object API (no pyplot); no torch."""

from __future__ import annotations

import os
from pathlib import Path


def curves_png(history: list[dict], path: str | os.PathLike, *, title: str, best_epoch: int | None = None) -> Path:
    """Draw ``history`` (rows with ``epoch``, ``loss``, ``val_reef_f1``, ``val_reef_iou``, ``val_accuracy``; a
    metric may be None = undefined) into ``path``: loss on the left axis, metrics (0-1) on the right."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(7.5, 4.8), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    lines = ax.plot(epochs, [r["loss"] for r in history], "o-", color="#333333", label="training loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    right = ax.twinx()
    right.set_ylabel("validation metric")
    right.set_ylim(0, 1)
    for key, colour, label in (("val_reef_f1", "#d7301f", "validation reef F1"),
                               ("val_reef_iou", "#fc8d59", "validation reef IoU"),
                               ("val_accuracy", "#2b8cbe", "validation pixel accuracy")):
        vals = [float("nan") if r.get(key) is None else r[key] for r in history]
        lines += right.plot(epochs, vals, "s--", color=colour, label=label, markersize=4)
    if best_epoch is not None:
        lines.append(ax.axvline(best_epoch, color="#31a354", lw=1.2, label=f"best epoch ({best_epoch})"))
    ax.set_xticks(epochs if len(epochs) <= 20 else ax.get_xticks())
    ax.legend(lines, [ln.get_label() for ln in lines], loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3,
              fontsize=8, frameon=False)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path
