"""Importing this module registers every built-in reader kind with ``open_reader``."""

from importlib import import_module

for _mod in (
    "reefmap.synthetic.world",
    "reefmap.sources.memory",
    "reefmap.sources.zarr_source",
    "reefmap.sources.geotiff",
    "reefmap.sources.stac",
):
    import_module(_mod)
