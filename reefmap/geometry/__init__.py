"""Geometry value objects: grids, windows, boxes, the Web-Mercator lattice. No I/O."""
