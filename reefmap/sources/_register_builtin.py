"""Importing this module registers every built-in reader kind with ``open_reader``."""

from importlib import import_module

for _mod in (
    "reefmap.synthetic",
    "reefmap.sources.memory",
    "reefmap.sources.zarr_source",
    "reefmap.sources.geotiff",
    "reefmap.sources.stac",
):
    try:
        import_module(_mod)
    except ModuleNotFoundError as _e:
        # reefmap.synthetic is optional here (it may not be installed/written yet); every other module must import
        if _mod != "reefmap.synthetic" or _e.name != _mod:
            raise
