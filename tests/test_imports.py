"""What each entry point imports: planning, status and bundle metadata never load torch or numba, and the tile
steps load torch only when the model runs. Each check runs in a fresh interpreter (imports are per process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from reefmap.geometry.grid import GeoBox, Shape

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "numba")

#: runs the snippet, then prints which of HEAVY it left in sys.modules, as the last line
WRAPPER = """
import json, sys
try:
{body}
finally:
    print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r})))
"""


def run_fresh(body: str) -> tuple[list[str], list[str]]:
    """Run ``body`` in a fresh interpreter: its output lines, and the heavy modules (``HEAVY`` and their
    submodules) it left loaded."""
    code = WRAPPER.format(body="\n".join("    " + line for line in body.strip().splitlines()), heavy=HEAVY)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    *output, heavy = r.stdout.strip().splitlines()
    return output, json.loads(heavy)


def loaded_after(body: str) -> list[str]:
    return run_fresh(body)[1]


@pytest.mark.parametrize("module", ["reefmap", "reefmap.planning.plan", "reefmap.store.status", "reefmap.model.bundle",
                                    "reefmap.sources", "reefmap.cli.main"])
def test_light_modules_load_neither_torch_nor_numba(module):
    assert loaded_after(f"import {module}") == []


def test_reading_the_demo_bundle_loads_neither():
    assert loaded_after("from reefmap.model.bundle import read_bundle\nread_bundle(None)") == []


def test_reefmap_status_on_a_store_loads_neither(tmp_path):
    from map_fixtures import make_map

    from reefmap.store.format import TileState

    geobox = GeoBox(Shape(64, 64), Affine(30.0, 0.0, 500_000.0, 0.0, -30.0, 2_700_000.0), "EPSG:32618")
    make_map(tmp_path / "m.zarr", geobox, 32, np.array([[TileState.DONE, TileState.PENDING]] * 2))
    output, heavy = run_fresh(f"""
import runpy
sys.argv = ["reefmap", "status", "--json", {str(tmp_path / "m.zarr")!r}]
try:
    runpy.run_module("reefmap", run_name="__main__")
except SystemExit as e:
    assert not e.code, e.code
""")
    assert heavy == []
    report = json.loads("\n".join(output))  # the status report itself came out
    assert report["tiles_total"] == 4 and report["done"] == 2


def test_the_tile_steps_load_torch_only_when_the_model_runs():
    assert "torch" not in loaded_after("import reefmap.compute.tiles\nimport reefmap.compute.segment")
    assert "torch" in loaded_after("from reefmap.model.segmenter import load_model\nload_model(None, device='cpu')")
