"""How heavy planning and status are: wall time and whether torch or numba get loaded, each in a fresh interpreter.

    .venv/bin/python benchmarks/bench_imports.py [--repeat 5]

Prints the best of ``--repeat`` fresh runs of each entry point (imports included). Targets: planning and status load
neither torch nor numba.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

PROBE = "import sys, json, time; t = time.perf_counter(); {code}; " \
        "print(json.dumps({{'s': time.perf_counter() - t, 'torch': 'torch' in sys.modules, 'numba': 'numba' in sys.modules}}))"


def measure(code: str, repeat: int) -> dict:
    runs = []
    for _ in range(repeat):
        out = subprocess.run([sys.executable, "-c", PROBE.format(code=code)], capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    best = min(runs, key=lambda r: r["s"])
    return {"seconds": round(best["s"], 3), "torch": best["torch"], "numba": best["numba"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = f"{tmp}/m.zarr"
        subprocess.run([sys.executable, "-c", (
            "from affine import Affine; from reefmap.geometry.grid import GeoBox, Shape, TileGrid; "
            "from reefmap.store.mapstore import MapStore; "
            f"MapStore.create_or_open({store!r}, TileGrid(GeoBox(Shape(2048, 2048), Affine(30, 0, 0, 0, -30, 0), "
            "'EPSG:32618'), 1024), {'id': 1}, {})")], check=True)
        entries = {
            "import reefmap.planning.plan": "import reefmap.planning.plan",
            "import reefmap.store.status": "import reefmap.store.status",
            "reefmap status STORE --json": f"from reefmap.cli.main import main; main(['status', {store!r}, '--json'])",
            "import reefmap.compute.tiles": "import reefmap.compute.tiles",
            "import reefmap.model.segmenter": "import reefmap.model.segmenter",
        }
        rows = {name: measure(code, a.repeat) for name, code in entries.items()}
    for name, r in rows.items():
        print(f"{name:42s} {r['seconds']:6.3f} s   torch {'loaded' if r['torch'] else 'no':6s}  numba {'loaded' if r['numba'] else 'no'}")
    print(f"\nreproduce: .venv/bin/python benchmarks/bench_imports.py --repeat {a.repeat}")


if __name__ == "__main__":
    main()
