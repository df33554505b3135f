"""``reefmap query`` / ``stats`` / ``overviews``: subcommands over ``reefmap.query``, ``areas``, ``export``, ``overviews``.

Registered into the main parser by ``add_commands(subparsers)``; each command's ``fn`` takes the parsed
arguments and returns an exit code, raising ``ReefmapError`` subclasses for user mistakes (the main CLI prints
them as one line). A box whose west edge is negative may be written ``--bbox -78.5,24,-77.5,25``
(``reefmap.cli.main.attach_values`` keeps argparse from reading it as an option).
"""

from __future__ import annotations

import json

from reefmap.errors import InvalidParameter

_BBOX_HELP = "lon/lat box W,S,E,N, e.g. --bbox -78.5,24,-77.5,25; W > E crosses the antimeridian: --bbox 170,-20,-170,-10"


def cmd_query(a) -> int:
    from reefmap.products.export import export, output_format
    from reefmap.products.query import query, stale_note, summary

    if a.bbox is None and a.geometry is None:
        raise InvalidParameter("give the region: --bbox=W,S,E,N (lon/lat) and/or --geometry FILE.geojson")
    fmt = output_format(a.out)
    ds = query(a.store, bbox=a.bbox, geometry=a.geometry, resolution=a.resolution)
    if fmt == "png" and a.resolution is None and max(ds.sizes["y"], ds.sizes["x"]) > 1024:
        # a picture shows ~1024 px: read the coarsest overview level that still has that many
        ds = query(a.store, bbox=a.bbox, geometry=a.geometry,
                   resolution=ds.attrs["resolution"] * max(ds.sizes["y"], ds.sizes["x"]) / 1024)
    path = export(ds, a.out, layer=a.layer, overwrite=a.overwrite)
    s = summary(ds)
    if a.json:
        print(json.dumps({**s, "out": path, "format": fmt}, indent=2))
    else:
        print(f"wrote {path} ({fmt}, {s['shape']['y']}x{s['shape']['x']} px, {s['crs']}, level {s['level']}); "
              f"{100 * s['complete_fraction']:.1f}% of its pixels are in finished tiles")
        if stale_note(s):
            print(f"WARNING: {stale_note(s)}")
    return 0


def cmd_stats(a) -> int:
    from reefmap.products.stats import format_stats, stats

    s = stats(a.store, bbox=a.bbox, geometry=a.geometry, resolution=a.resolution)
    print(json.dumps(s, indent=2) if a.json else format_stats(s))
    return 0


def cmd_overviews(a) -> int:
    from reefmap.products.overviews import build_overviews

    s = build_overviews(a.store, levels=a.levels, full=a.full)
    if a.json:
        print(json.dumps(s, indent=2))
    elif s["up_to_date"]:
        print(f"{s['store']}: overviews are up to date ({len(s['levels'])} levels)")
    else:
        lv = ", ".join(f"{d['level']}: {d['shape']['y']}x{d['shape']['x']}" for d in s["levels"])
        print(f"{s['store']}: wrote {s['chunks_written']} chunks for {s['tiles_updated']} tiles "
              f"({'full build' if s['full'] else 'update'}) in {s['seconds']:.1f}s; levels {lv}")
    return 0


def add_commands(subparsers) -> None:
    """Register ``query``, ``stats`` and ``overviews`` on an argparse subparsers object."""
    q = subparsers.add_parser("query", help="export a region of a map: COG .tif, NetCDF .nc, .zarr or a .png picture",
                              description="Cut a lon/lat box or polygon out of a map and write it by the output's "
                                          "extension. Unfinished tiles are kept visible (classification 254, tile_state; "
                                          "a probability .tif masks them and marks them in its band 2).")
    q.add_argument("store", help="the map: a path or URL (gs://, memory://, file://)")
    q.add_argument("--bbox", help=_BBOX_HELP)
    q.add_argument("--geometry", help="a GeoJSON file with a lon/lat (Multi)Polygon; pixels outside are masked")
    q.add_argument("--out", required=True, help="output file: .tif (COG), .nc, .zarr or .png")
    q.add_argument("--layer", help="reef_probability | classification | both (default: both; a .tif holds one, "
                                   "default reef_probability)")
    q.add_argument("--resolution", type=float, help="wanted pixel size in the map CRS's units: reads the coarsest "
                                                    "overview level no coarser than it")
    q.add_argument("--overwrite", action="store_true",
                   help="replace an existing output of the same kind (a file, or a Zarr export); never the map itself")
    q.add_argument("--json", action="store_true", help="print a JSON summary")
    q.set_defaults(fn=cmd_query)

    s = subparsers.add_parser("stats", help="reef area (km²), area per class, mean reef probability, completeness",
                              description="Area statistics of a map, a lon/lat box or a polygon, with pixel areas "
                                          "true to the map's CRS.")
    s.add_argument("store")
    s.add_argument("--bbox", help=_BBOX_HELP)
    s.add_argument("--geometry", help="a GeoJSON file with a lon/lat (Multi)Polygon")
    s.add_argument("--resolution", type=float, help="use an overview level (approximate class areas)")
    s.add_argument("--json", action="store_true", help="print JSON (key reef_area_km2, class_area_km2, ...)")
    s.set_defaults(fn=cmd_stats)

    o = subparsers.add_parser("overviews", help="build or update the map's multiscale overviews (factor 2 levels)")
    o.add_argument("store")
    o.add_argument("--levels", type=int, help="number of levels (default: until the coarsest fits in one tile)")
    o.add_argument("--full", action="store_true", help="recompute every chunk, not only those of changed tiles")
    o.add_argument("--json", action="store_true")
    o.set_defaults(fn=cmd_overviews)
