"""``reefmap plan CONFIG.yaml [--mask M] [--json]``: what a global run would compute, without computing anything.

Wired into ``reefmap/cli.py`` by ``add_commands(sub)``. Imports neither torch nor the mosaic: planning is the
grid arithmetic plus one tile-resolution rasterization of the candidate mask.
"""

from __future__ import annotations

import argparse
import json


def add_commands(subparsers) -> None:
    """Register ``plan`` on the ``reefmap`` sub-command parser."""
    p = subparsers.add_parser(
        "plan", help="show the tile grid and how many tiles a global-run config plans (computes nothing)",
        description="Print the grid (CRS, pixel size, tile size, tiles wide x tall), the tiles in it, the tiles that "
                    "survive the candidate mask (and region), and how long planning took. Nothing is computed: no "
                    "store is created, no mosaic opened, no model loaded.")
    p.add_argument("config", help="a global-run YAML (e.g. pipelines/configs/global-l15.yaml)")
    p.add_argument("--mask", help="candidate mask file (overrides the config's mask: and $REEFMAP_MASK); 'none' for "
                                  "no mask")
    p.add_argument("--buffer-km", type=float, help="buffer around vector mask features, km (overrides buffer_km:)")
    p.add_argument("--json", action="store_true", help="print a JSON object (tiles_total, tiles_planned, grid, mask, ...)")
    p.set_defaults(fn=cmd_plan)


def cmd_plan(a: argparse.Namespace) -> int:
    from reefmap.execute.batch import plan_global
    from reefmap.config import GlobalRunConfig

    cfg = GlobalRunConfig.from_yaml(a.config, mask=a.mask, buffer_km=a.buffer_km)
    gp = plan_global(cfg)
    d = {"config": a.config, **gp.to_json(), "region": None if cfg.region is None else list(cfg.region),
         "out": cfg.out, "computed": False}
    if a.json:
        print(json.dumps(d, indent=2))
    else:
        print(format_plan(d))
    return 0


def format_plan(d: dict) -> str:
    g = d["grid"]
    kind = f" ({g['kind']} zoom {g['zoom']})" if g.get("kind") else ""
    lon0, lat0, lon1, lat1 = g["lonlat_bounds"]
    lines = [
        f"config   {d['config']}",
        f"grid     {g['crs']}{kind} · pixel {g['pixel_size']:.4f} · tile {g['tile_px']} px ({g['tile_size']:.1f} CRS units)"
        f" · {g['tiles_wide']} x {g['tiles_tall']} tiles ({g['pixels_wide']} x {g['pixels_tall']} px)",
        f"extent   lon {lon0:.3f} .. {lon1:.3f}, lat {lat0:.3f} .. {lat1:.3f}",
        f"tiles    {d['tiles_total']} in the grid"
        + (f" · {d['tiles_in_region']} in region {d['region']}" if d.get("region") else ""),
    ]
    m = d.get("mask")
    pct = 100.0 * d["tiles_planned"] / d["tiles_total"] if d["tiles_total"] else 0.0
    if m:
        what = f"vector, {m['features']} features, buffer {m['buffer_km']:g} km" if m["kind"] == "vector" else "raster"
        lines.append(f"mask     {m['source']} ({what}, {m['crs']})")
    else:
        lines.append("mask     none (every tile of the grid/region is planned)")
    lines.append(f"planned  {d['tiles_planned']} tiles ({pct:.3f}% of the grid)")
    if d["tiles_planned"] == 0:
        lines.append("warning  no tile survives: check mask:, mask_crs: and region:")
    lines.append(f"took     {d['seconds']:.2f}s (nothing computed; output would go to {d['out']})")
    return "\n".join(lines)
