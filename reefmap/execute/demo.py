"""The demo job: a synthetic reef world mapped on the embedded default into a local Zarr store, plus a quick-look."""

from __future__ import annotations

from pathlib import Path

#: the demo's synthetic world: one whose seed the shipped demo model never saw in training (it was trained on
#: worlds 0-15: pipelines/configs/train-demo.yaml), so the demo map shows it on unseen data
DEMO_SEED = 100


def run_demo(out: str | Path, *, size: int = 3072, workers: int | None = None, seed: int = DEMO_SEED,
             progress: bool = True) -> dict:
    """Map a ``size`` px synthetic world (``seed``) with the demo bundle on the embedded default (the ``local``
    profile with ``workers`` processes; in-process for a job below ``inprocess_below_mpx`` and no ``workers``) into
    ``out/reefmap-demo.zarr`` and draw ``out/reefmap-demo.png``; ``{"summary", "store", "png"}``."""
    from reefmap.execute.runner import run
    from reefmap.products.mapview import open_map
    from reefmap.synthetic.reader import synthetic_mosaic
    from reefmap.viz.quicklook import quicklook_png

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    store = out / "reefmap-demo.zarr"
    mosaic = synthetic_mosaic(size, seed=seed)
    mosaic[:, :8, :8].values  # compiles the synthetic renderer here once, not in every worker at the same time
    summary = run(mosaic, None, store, workers=workers, progress=progress)
    png = str(quicklook_png(out / "reefmap-demo.png", open_map(store),
                            title=f"reefmap demo: synthetic world seed {seed}, {size}x{size} px"))
    return {"summary": summary, "store": str(store), "png": png}
