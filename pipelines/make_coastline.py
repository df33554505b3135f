"""Make the coastline shipped with reefmap (reefmap/viz/data/ne_land_110km.json) from Natural Earth's 1:10m land.

Natural Earth is public domain. The progress map draws it under a world of tiles, where a 0.1° (about 11 km)
simplification is finer than a pixel. Run:  .venv/bin/python pipelines/make_coastline.py [../shared/data/natural-earth/ne_10m_land.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import shapely
from shapely.geometry import mapping, shape

TOLERANCE = 0.1  # degrees
OUT = Path(__file__).resolve().parents[1] / "reefmap" / "viz" / "data" / "ne_land_110km.json"


def main(src: str) -> None:
    features = json.loads(Path(src).read_text())["features"]
    geoms = [shape(f["geometry"]).simplify(TOLERANCE, preserve_topology=True) for f in features]
    geoms = [shapely.set_precision(g, 0.01) for g in geoms if g.area > TOLERANCE**2]
    doc = {"type": "FeatureCollection",
           "name": f"Natural Earth 1:10m land (public domain), simplified to {TOLERANCE} degrees by reefmap",
           "features": [{"type": "Feature", "properties": {}, "geometry": mapping(g)} for g in geoms if not g.is_empty]}
    OUT.write_text(json.dumps(doc, separators=(",", ":")))
    print(f"{OUT}: {len(doc['features'])} features, {OUT.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).resolve().parents[2] / "shared" / "data" / "natural-earth" / "ne_10m_land.json"))
