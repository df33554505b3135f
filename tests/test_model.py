"""Model bundles: metadata without torch, content hashes, clear errors, the receptive radius."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from reefmap.errors import ModelError
from reefmap.model.bundle import DEMO_BUNDLE, read_bundle
from reefmap.model.architectures import analytic_receptive_radius, build_network


def test_reading_a_bundle_and_planning_never_import_torch(random_bundle):
    code = (
        "import sys, reefmap\n"
        "from reefmap.model.bundle import read_bundle\n"
        "from reefmap.planning.plan import plan_tiles\n"
        "from reefmap.store.status import status\n"
        "import reefmap.cli.main, reefmap.execute.runner\n"
        f"m = read_bundle({random_bundle.path!r})\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print(m.sha256)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == random_bundle.sha256


def test_the_demo_bundle_is_shipped_and_consistent():
    m = read_bundle(None)
    assert m.path == str(DEMO_BUNDLE.resolve())
    assert m.halo >= m.receptive_radius and m.halo % m.size_multiple == 0
    assert m.classes == ("deep_water", "shallow", "reef", "land", "cloud")
    assert "NOT real reef labels" in json.dumps(m.training["data"])  # synthetic worlds only
    assert set(m.screen) == {"deep_water", "land"}


def test_content_hash_detects_tampering_and_errors_are_clear(random_bundle, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(random_bundle.path, b)
    assert read_bundle(b).sha256 == random_bundle.sha256
    doc = json.loads((b / "bundle.json").read_text())
    doc["meta"]["halo"] = 64
    (b / "bundle.json").write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="corrupt"):
        read_bundle(b)
    with pytest.raises(ModelError, match="omit --model to use the shipped demo bundle"):
        read_bundle(tmp_path / "missing")
    (b / "bundle.json").write_text("{not json")
    with pytest.raises(ModelError, match="unreadable"):
        read_bundle(b)


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_receptive_radius_bounds_the_measured_one(levels):
    import torch

    arch = {"name": "tiny_unet", "in_channels": 3, "classes": 5, "base": 4, "levels": levels}
    net = build_network(arch).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.uniform_(-0.3, 0.3)
        n = 192
        x = torch.zeros(1, 3, n, n)
        base = net(x)
        reach = 0
        for off in range(0, 2**levels):  # every phase of the pooling lattice
            x2 = x.clone()
            x2[0, :, n // 2 + off, n // 2 + off] = 10.0
            d = (net(x2) - base).abs().sum(1)[0].numpy()
            rows = np.nonzero(d.sum(1) > 0)[0]
            reach = max(reach, abs(rows - (n // 2 + off)).max())
    assert reach <= analytic_receptive_radius(arch)
    assert analytic_receptive_radius(arch) - reach <= 2**levels + 4  # a bound, and not a loose one
