"""``reefmap calval --map [NAME=]STORE ... --truth PATH|synthetic --out DIR``: validate maps against truth
(``reefmap.calval``) and write a report directory; ``reefmap calval --bundle DIR --out DIR``: map a trained bundle
over the held-out regions of its training data first, then validate it there (``validate_bundle``).

Registered into the main parser by ``add_commands(subparsers)``. ``--truth synthetic`` takes the synthetic world's
truth of the (first) map's input, as its provenance records it. A region whose west edge is negative may be written
``--region andros=-78.5,24,-77.5,25`` (its value starts with the name).
"""

from __future__ import annotations

import json

from reefmap.errors import InvalidParameter, TruthError


def synthetic_truth_of(store):
    """The truth raster of the synthetic world a map was made from (its recorded input source)."""
    from reefmap.products.mapview import inspect_map
    from reefmap.synthetic.reader import SyntheticReader, synthetic_truth

    sources = inspect_map(store).attrs.get("sources") or []
    spec = next((s for s in sources if isinstance(s, dict) and s.get("kind") == "synthetic"), None)
    if spec is None:
        raise TruthError(f"--truth synthetic: the map {store!r} was not made from the synthetic world (its inputs: "
                         f"{[s.get('kind') for s in sources if isinstance(s, dict)]}); give a label raster or polygons")
    reader = SyntheticReader.from_spec(spec)
    return synthetic_truth(geobox=reader.geobox, world=reader.world)


def cmd_calval(a) -> int:
    from reefmap.products.calval import calval, named

    if a.bundle:
        from reefmap.execute.experiment import validate_bundle

        if a.map or a.truth or a.region or a.baseline:
            raise InvalidParameter("--bundle validates on the held-out regions of the bundle's own training data "
                                   "(its truth): give either --bundle, or --map with --truth (and --region)")
        r = validate_bundle(a.bundle, a.out, tile=a.tile, rank_by=a.rank_by, pictures=not a.no_pictures)
    elif not (a.map and a.truth):
        raise InvalidParameter("give --map STORE ... with --truth PATH|synthetic, or --bundle DIR")
    else:
        truth = a.truth
        if truth == "synthetic":
            truth = synthetic_truth_of(next(iter(named(a.map, "map").values())))
        r = calval(a.map, truth, a.out, regions=a.region, baselines=a.baseline, buffer_m=a.buffer_m,
                   truth_attribute=a.truth_attribute, truth_nodata=a.truth_nodata,
                   truth_background=a.truth_background, rank_by=a.rank_by, pictures=not a.no_pictures)
    if a.json:
        print(json.dumps({"out": a.out, "ranking": r["ranking"], "timing": r["timing"]}, indent=2))
    else:
        print(f"wrote {a.out}/report.json, report.md and {sum(f.endswith('.png') for f in r['files'])} PNGs "
              f"({len(r['regions'])} region(s), {r['timing']['region_pixels'] / 1e6:.2f} Mpx, "
              f"{r['timing']['seconds_total']:.1f} s)")
        for row in r["ranking"]:
            v = "n/a" if row["value"] is None else f"{row['value']:.3f}"
            print(f"  {row['rank']}. {row['product']}: {r['rank_by']} {v}")
    return 0


def add_commands(subparsers) -> None:
    c = subparsers.add_parser("calval", help="validate maps (and baselines) against truth; write a report directory")
    c.add_argument("--map", nargs="+", action="extend", metavar="[NAME=]STORE",
                   help="reefmap map(s) to validate; the first one's grid is the validated grid")
    c.add_argument("--bundle", metavar="DIR",
                   help="instead of --map/--truth: a bundle trained by reefmap train, mapped over the held-out regions "
                        "of its training data (into OUT/maps/) and validated there against that data's truth")
    c.add_argument("--tile", type=int, default=1024, help="tile (px) of the --bundle validation maps (default 1024)")
    c.add_argument("--truth", metavar="PATH|synthetic",
                   help="label raster (GeoTIFF/Zarr of class codes), class polygons (GeoJSON/GeoPackage), or "
                        "'synthetic' (the synthetic world the map was made from)")
    c.add_argument("--out", required=True, help="report directory (created)")
    c.add_argument("--region", nargs="+", action="extend", metavar="NAME=W,S,E,N|[NAME=]FILE.geojson",
                   help="validation regions (lon/lat boxes or polygon files; default: the map's extent)")
    c.add_argument("--baseline", nargs="+", action="extend", metavar="[NAME=]PATH",
                   help="baseline maps: a reefmap store, a GeoTIFF of class codes, or a vector reef layer (GeoJSON)")
    c.add_argument("--buffer-m", type=float, default=1000.0, help="buffer (m) around vector reef baselines (default 1000)")
    c.add_argument("--truth-attribute", default="class", help="class attribute of truth polygons (codes or names)")
    c.add_argument("--truth-nodata", type=int, help="truth raster nodata code (default: the file's, else 0)")
    c.add_argument("--truth-background", type=int, help="class code of pixels under no truth polygon (default: nodata)")
    c.add_argument("--rank-by", default="reef.f1", help="metric of the ranked table (default reef.f1; e.g. "
                                                        "reef.area_weighted_f, overall_accuracy, calibration.ece)")
    c.add_argument("--no-pictures", action="store_true", help="write report.json and report.md only")
    c.add_argument("--json", action="store_true", help="print the ranking and timing as JSON")
    c.set_defaults(fn=cmd_calval)
