"""Validate a bundle on synthetic scenes whose world seeds never took part in its training (held-out worlds).

    .venv/bin/python pipelines/demo_calval.py [--bundle reefmap/model/bundles/demo] [--seeds 100 101 ...]
        [--size 2048] [--out out/demo-calval]   (default seeds: 100-107)

Each seed's synthetic scene is mapped with the bundle (in-process) into OUT/maps/seedN.zarr and scored against the
scene's own truth by calval, all seeds pooled into one report: OUT/report/report.json and report.md (the shipped
demo bundle's report is kept as reefmap/model/bundles/demo/calval-report.json and .md). Synthetic data only: the procedural world,
NOT real reef labels.
"""

import argparse
from pathlib import Path

import reefmap
from reefmap.model.bundle import DEMO_BUNDLE, read_bundle
from reefmap.products.calval import Site, Truth, calval_sites
from reefmap.synthetic.reader import synthetic_mosaic, synthetic_truth

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default=str(DEMO_BUNDLE))
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(100, 108)))
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--tile", type=int, default=1024)
    ap.add_argument("--out", default="out/demo-calval")
    ap.add_argument("--no-pictures", action="store_true")
    a = ap.parse_args()
    meta = read_bundle(a.bundle)
    trained_on = sorted({s.get("synthetic") for s in meta.training.get("config", {}).get("data", {}).get("scenes", [])
                         if isinstance(s, dict) and s.get("synthetic") is not None})
    if set(a.seeds) & set(trained_on):
        raise SystemExit(f"seeds {sorted(set(a.seeds) & set(trained_on))} took part in training ({trained_on}): "
                         "pick held-out seeds")
    out = Path(a.out)
    sites = []
    for seed in a.seeds:
        store = out / "maps" / f"seed{seed}.zarr"
        reefmap.run(synthetic_mosaic(a.size, seed), a.bundle, str(store), tile=a.tile, client="inprocess",
                    progress=False)
        sites.append(Site(f"seed{seed}", {meta.name: str(store)}, Truth(synthetic_truth(a.size, seed))))
    report = calval_sites(sites, out / "report", pictures=not a.no_pictures)
    reef = report["all_regions"][meta.name]["reef"]
    print(f"{meta.name}: held-out seeds {a.seeds} (trained on {trained_on or 'unknown'}): reef F1 {reef['f1']:.3f}, "
          f"precision {reef['precision']:.3f}, recall {reef['recall']:.3f}; report in {out / 'report'}")
