"""Per-tile compute: numba kernels, the read/predict/write steps, the map_overlap face."""
