"""reefmap: map the world's coral reefs from satellite imagery with Dask, xarray, Zarr and PyTorch.

The top-level names are imported lazily so that planning and status never pull in torch.
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "open_mosaic": "reefmap.sources",
    "load_model": "reefmap.model.segmenter",
    "segment": "reefmap.compute.segment",
    "train": "reefmap.model.training",
    "run": "reefmap.execute.runner",
    "plan_tiles": "reefmap.planning.plan",
    "open_map": "reefmap.products.mapview",
    "tile_states": "reefmap.products.mapview",
    "query": "reefmap.products.query",
    "stats": "reefmap.products.stats",
    "synthetic_mosaic": "reefmap.synthetic.reader",
    "status": "reefmap.store.status",
    "verify": "reefmap.store.integrity",
    "clear_caches": "reefmap.caching",
    "calval": "reefmap.products.calval",
    "experiment": "reefmap.execute.experiment",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'reefmap' has no attribute {name!r}")
