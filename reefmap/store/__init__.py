"""The map's Zarr store: its format, writes, tile states and status."""
