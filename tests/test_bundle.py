"""Model bundles as a model artifact plus STAC MLM metadata (issue 10, items 1-3): the three artifact types end to
end (create → inspect → validate → load_model → predict), the halo measured rather than trusted, the older format
still loading everywhere, and one clear error for each bad input."""

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from reefmap.cli.main import main
from reefmap.errors import InvalidParameter, ModelError
from reefmap.model.architectures import analytic_receptive_radius, build_network
from reefmap.model.artifacts import export_program, export_torchscript, load_network, save_state_dict
from reefmap.model.bundle import SPECS, inspect_bundle, read_bundle, read_spec
from reefmap.model.bundling import convert_bundle, create_bundle, validate_bundle
from reefmap.model.receptive import measure_receptive_radius, measure_size_multiple
from reefmap.model.segmenter import load_model

torch = pytest.importorskip("torch")

TINY = {"name": "tiny_unet", "in_channels": 3, "classes": 5, "base": 4, "levels": 2}


def randomize(net, scale=0.3, seed=0):
    """Weights drawn so that a change travels through every layer (default inits shrink it towards 1e-8)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.uniform_(-scale, scale)
    return net.eval()


class PoolNet(torch.nn.Module):
    """An architecture reefmap has never seen: convolutions, a dilated one, a 2x average pool and an up-sampling."""

    def __init__(self, bands=4, classes=9):
        super().__init__()
        self.a = torch.nn.Conv2d(bands, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(8, 8, 3, padding=2, dilation=2)
        self.c = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.head = torch.nn.Conv2d(16, classes, 1)

    def forward(self, x):
        f = torch.relu(self.b(torch.relu(self.a(x))))  # radius 1 + 2
        g = torch.relu(self.c(torch.nn.functional.avg_pool2d(f, 2)))
        g = torch.nn.functional.interpolate(g, scale_factor=2.0, mode="nearest")
        return self.head(torch.cat([f, g], 1))


#: output pixel 2j reads pooled pixels j-1..j+1 = f pixels 2j-2..2j+3 (2j+1: 2j-3..2j+2), f adds 1 + 2 each side
POOLNET_RADIUS = 3 + 3


def demo_spec(**over):
    spec = yaml.safe_load((SPECS / "demo.yaml").read_text())
    spec["architecture"] = dict(TINY)
    return {**spec, **over}


def benthic_spec(**over):
    return {**yaml.safe_load((SPECS / "allen-coral-atlas-benthic.yaml").read_text()), **over}


def run_cli(capsys, *args):
    code = main(list(map(str, args)))
    out, err = capsys.readouterr()
    return code, out, err


def probs(net, x):
    with torch.inference_mode():
        return torch.softmax(net(torch.from_numpy(x)), 1).numpy()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random-weight tiny_unet, saved as a state_dict and as TorchScript."""
    d = tmp_path_factory.mktemp("tiny")
    net = randomize(build_network(TINY))
    return net, save_state_dict(net, d / "weights.pt"), export_torchscript(net, 3, d / "tiny.ts")


@pytest.fixture(scope="module")
def poolnet(tmp_path_factory):
    """PoolNet exported the way a user would: torch.export with dynamic batch, height and width (an example batch
    of 2: a batch of 1 would be specialised)."""
    from torch.export import Dim

    net = randomize(PoolNet(), seed=2)
    ep = torch.export.export(net, (torch.randn(2, 4, 64, 64),), dynamic_shapes=({0: Dim.AUTO, 2: Dim.AUTO, 3: Dim.AUTO},))
    path = tmp_path_factory.mktemp("pool") / "poolnet.pt2"
    torch.export.save(ep, str(path))
    return net, path


@pytest.fixture(scope="module")
def benthic_bundle(poolnet, tmp_path_factory):
    return create_bundle(poolnet[1], benthic_spec(), tmp_path_factory.mktemp("b") / "benthic")


def end_to_end(capsys, artifact, spec, out, net, bands):
    """create → inspect --json → validate → load_model → predict, through the CLI and the library."""
    spec_file = out.parent / f"{out.name}.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    code, stdout, err = run_cli(capsys, "bundle", "create", artifact, "--spec", spec_file, "--out", out)
    assert code == 0, err
    assert "measured receptive radius" in stdout
    code, stdout, _ = run_cli(capsys, "bundle", "inspect", out, "--json")
    info = json.loads(stdout)
    assert info == inspect_bundle(out)
    code, stdout, err = run_cli(capsys, "bundle", "validate", out)
    assert code == 0, err
    assert "seam-free" in stdout and "valid" in stdout
    model = load_model(out, device="cpu")
    x = np.random.default_rng(1).standard_normal((2, bands, 40, 48)).astype(np.float32)
    np.testing.assert_allclose(model.predict(x), probs(net, x), atol=1e-6)
    return info


def test_a_state_dict_bundle_end_to_end(tiny, tmp_path, capsys):
    net, weights, _ = tiny
    info = end_to_end(capsys, weights, demo_spec(), tmp_path / "sd", net, 3)
    assert info["artifact_type"] == "torch.save" and info["architecture"] == TINY
    assert info["bands"] == ["red", "green", "blue"] and info["value_scaling"][0]["type"] == "z-score"
    assert [(c["value"], c["name"]) for c in info["classes"]] == [(1, "deep_water"), (2, "shallow"), (3, "reef"),
                                                                  (4, "land"), (5, "cloud")]
    r = info["receptive_radius"]
    assert 0 < r <= analytic_receptive_radius(TINY) and info["halo"] == -(-r // 4) * 4  # rounded up to the multiple 4


def test_a_torchscript_bundle_end_to_end(tiny, tmp_path, capsys):
    net, _, ts = tiny
    info = end_to_end(capsys, ts, demo_spec(architecture=None), tmp_path / "ts", net, 3)
    assert info["artifact_type"] == "torch.jit.save" and info["size_multiple"] == 4  # measured: 2 poolings
    assert info["receptive_radius"] == read_bundle(tmp_path / "ts").receptive_radius > 0


def test_a_pt2_of_an_architecture_reefmap_has_never_seen_end_to_end(poolnet, tmp_path, capsys):
    net, pt2 = poolnet
    info = end_to_end(capsys, pt2, benthic_spec(), tmp_path / "pool", net, 4)
    assert info["artifact_type"] == "torch.export.save" and info["artifact"] == "model.pt2"
    assert info["bands"] == ["blue", "green", "red", "nir"] and info["source_data_type"] == "uint16"
    assert [c["value"] for c in info["classes"]] == [11, 12, 13, 14, 15, 18, 101, 102, 103]
    assert info["classes"][4]["name"] == "Coral/Algae" and info["reef_classes"] == ["Coral/Algae"]
    assert info["size_multiple"] == 2 and info["receptive_radius"] == POOLNET_RADIUS and info["halo"] == 6


def test_the_export_helpers_keep_batch_height_and_width_dynamic(tiny, tmp_path):
    net, weights, ts = tiny
    pt2 = export_program(net, 3, tmp_path / "tiny.pt2")
    x = np.random.default_rng(3).standard_normal((1, 3, 36, 92)).astype(np.float32)  # batch 1, multiples of 4 only
    for path, kind in ((pt2, "torch.export.save"), (ts, "torch.jit.save"), (weights, "torch.save")):
        np.testing.assert_allclose(probs(load_network(path, kind, TINY), x), probs(net, x), atol=1e-6)


def test_the_item_is_stac_mlm_that_pystac_reads(benthic_bundle):
    import pystac
    from pystac.extensions.file import FileExtension
    from pystac.extensions.mlm import AssetDetailedMLMExtension, MLMExtension

    item = pystac.Item.from_file(f"{benthic_bundle.path}/item.json")
    mlm = MLMExtension.ext(item)
    assert mlm.mlm_name == benthic_bundle.name and mlm.tasks == ["semantic-segmentation"]
    (inp,), (out,) = mlm.input, mlm.output
    assert inp.bands == ["blue", "green", "red", "nir"] and inp.input.shape == [-1, 4, -1, -1]
    assert [s["type"] for s in inp.properties["value_scaling"]] == ["z-score"] * 4  # one per band, as MLM says
    assert [(c.value, c.name, c.color_hint) for c in out.classes][4] == (15, "Coral/Algae", "ff6161")
    assert out.result.shape == [-1, 9, -1, -1] and mlm.accelerator == "cuda" and mlm.accelerator_constrained is False
    hyper = mlm.hyperparameters.to_dict()
    assert hyper["receptive_radius"] == POOLNET_RADIUS and hyper["halo"] == 6 and hyper["size_multiple"] == 2
    assert hyper["reef_classes"] == ["Coral/Algae"] and hyper["valid_range"] == [0.0, 10000.0]
    asset = item.assets["model"]
    assert AssetDetailedMLMExtension.ext(asset).artifact_type == "torch.export.save"
    digest = hashlib.sha256(Path(benthic_bundle.path, "model.pt2").read_bytes()).hexdigest()
    assert FileExtension.ext(asset).checksum == "1220" + digest  # a sha2-256 multihash


def test_reading_and_inspecting_a_bundle_never_imports_torch(benthic_bundle):
    code = ("import sys\nfrom reefmap.model.bundle import inspect_bundle, read_bundle\n"
            f"m = read_bundle({benthic_bundle.path!r})\ninfo = inspect_bundle({benthic_bundle.path!r})\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\nprint(m.sha256, info['halo'])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [benthic_bundle.sha256, "6"]


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_the_measured_radius_is_within_the_analytic_one_and_random_backgrounds_matter(levels):
    arch = {**TINY, "levels": levels}
    net = randomize(build_network(arch), seed=levels)
    m = measure_size_multiple(net, 3)
    r = measure_receptive_radius(net, 3, m)
    assert m == 2**levels
    assert analytic_receptive_radius(arch) - 2**levels - 4 <= r <= analytic_receptive_radius(arch)
    # an impulse on zeros can see less: here, ReLUs whose bias is negative stay dead around it
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, torch.nn.Conv2d):
                mod.bias.fill_(-0.2)
        n = 256
        x = torch.zeros(1, 3, n, n)
        x2 = x.clone()
        x2[0, :, n // 2, n // 2] = 1.0
        d = (net(x2) - net(x)).abs().amax(dim=(0, 1, 3))
    impulse_reach = int((torch.nonzero(d > 0).flatten() - n // 2).abs().max()) if (d > 0).any() else 0
    assert impulse_reach < measure_receptive_radius(net, 3, m)


@pytest.mark.slow
def test_the_resnet34_unet_is_measured_at_its_analytic_radius():
    arch = {"name": "resnet34_unet", "in_channels": 3, "classes": 5, "width": 8}
    torch.manual_seed(0)
    net = build_network(arch).eval()  # default initialisation, as a user's untrained model would be
    full = build_network({**arch, "width": 64})
    encoder = [full.stem, full.layers]
    assert sum(p.numel() for m in encoder for p in m.parameters()) == 21_797_672 - 513_000  # torchvision's, less fc
    assert measure_size_multiple(net, 3) == 32
    radius = measure_receptive_radius(net, 3, 32)
    assert 543 - 32 < radius <= analytic_receptive_radius(arch) == 543  # the default halo: 544 either way


def test_a_halo_below_the_measured_radius_is_refused_with_the_number(tiny, tmp_path, capsys):
    _, weights, _ = tiny
    radius = create_bundle(weights, demo_spec(), tmp_path / "ok").receptive_radius
    with pytest.raises(InvalidParameter, match=f"halo 8 px is below the measured receptive radius {radius} px"):
        create_bundle(weights, demo_spec(halo=8), tmp_path / "low")
    spec = tmp_path / "low.yaml"
    spec.write_text(yaml.safe_dump(demo_spec(halo=8)))
    code, out, err = run_cli(capsys, "bundle", "create", weights, "--spec", spec, "--out", tmp_path / "low2")
    assert code == 2 and out == "" and err.count("\n") == 1 and f"receptive radius {radius} px" in err
    assert not (tmp_path / "low").exists() and not (tmp_path / "low2").exists()
    assert create_bundle(weights, demo_spec(halo=40), tmp_path / "wide").halo == 40


def test_older_bundles_load_as_before_and_convert_to_the_same_maps(random_bundle, memory_mosaic, tmp_path):
    from reefmap.execute.runner import run

    demo = read_bundle(None)  # the shipped demo: trained by `reefmap train`, so in the new format
    assert demo.format == "stac-mlm" and demo.artifact_type == "torch.save"
    assert inspect_bundle(None)["classes"][2] == {"value": 3, "name": "reef", "color": "ff503c"}
    new = convert_bundle(random_bundle.path, tmp_path / "converted")
    assert new.format == "stac-mlm" and new.artifact_type == "torch.save" and new.halo == random_bundle.halo
    assert new.kernel_scaling() == random_bundle.kernel_scaling() and new.screen == random_bundle.screen
    assert new.receptive_radius <= random_bundle.receptive_radius  # measured vs the analytic bound recorded before
    with pytest.raises(InvalidParameter, match="already a STAC MLM bundle"):
        convert_bundle(new.path, tmp_path / "again")
    da, _ = memory_mosaic
    maps = []
    for bundle, name in ((random_bundle.path, "old"), (new.path, "new")):
        run(da, bundle, tmp_path / f"{name}.zarr", tile=256, client="inprocess", progress=False)
        maps.append(xr_layers(tmp_path / f"{name}.zarr"))
    for a, b in zip(*maps):
        np.testing.assert_array_equal(a, b)


def xr_layers(path):
    import zarr

    g = zarr.open_group(str(path), mode="r")
    from reefmap.store.mapstore import MapStore

    return g["reef_probability"][:], g["classification"][:], MapStore.open_readonly(str(path)).states()


# --- bad input: one clear error each -----------------------------------------------------------------------------

def test_a_checksum_mismatch_is_refused(benthic_bundle, tmp_path, capsys):
    b = tmp_path / "b"
    shutil.copytree(benthic_bundle.path, b)
    data = bytearray((b / "model.pt2").read_bytes())
    data[-100] ^= 0xFF
    (b / "model.pt2").write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"the checksum of model.pt2 is .* not the recorded"):
        read_bundle(b)
    for cmd in ("validate", "inspect"):
        code, out, err = run_cli(capsys, "bundle", cmd, b)
        assert code == 2 and out == "" and err.count("\n") == 1 and "file:checksum" in err
    with pytest.raises(ModelError, match="checksum"):
        load_model(b, device="cpu")


def test_an_artifact_that_fails_to_load_names_its_type_and_the_torch_version(tiny, tmp_path, capsys):
    _, weights, _ = tiny
    wrong = demo_spec(architecture={**TINY, "base": 8})  # the weights are of base 4
    with pytest.raises(ModelError, match=r"does not load as a state_dict of .*tiny_unet.* with torch "
                       + re.escape(torch.__version__) + r" \(RuntimeError: Error\(s\) in loading state_dict"):
        create_bundle(weights, wrong, tmp_path / "x")
    truncated = tmp_path / "cut.pt2"
    truncated.write_bytes(weights.read_bytes()[:500])
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(demo_spec()))
    code, out, err = run_cli(capsys, "bundle", "create", truncated, "--spec", spec, "--out", tmp_path / "y")
    assert code == 2 and err.count("\n") == 1 and "not a torch zip archive, or a truncated one" in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_output_channels_must_match_the_classes(poolnet, benthic_bundle, tmp_path):
    with pytest.raises(ModelError, match="returns 9 output channels but its bundle names 5 classes"):
        create_bundle(poolnet[1], demo_spec(architecture=None, bands=benthic_spec()["bands"], screen=None), tmp_path / "x")
    b = tmp_path / "b"
    shutil.copytree(benthic_bundle.path, b)
    doc = json.loads((b / "item.json").read_text())
    del doc["properties"]["mlm:output"][0]["classification:classes"][-1]  # metadata edited after the fact
    (b / "item.json").write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="returns 9 output channels but the metadata names 8 classes"):
        validate_bundle(b, device="cpu")


@pytest.mark.parametrize("classes, message", [
    ([{"value": 1, "name": "a"}, {"value": 1, "name": "b"}], r"class values \[1\] appear more than once"),
    ([{"value": 0, "name": "a"}, {"value": 1, "name": "b"}], "class 'a' has code 0, which the map reserves"),
    ([{"value": 254, "name": "a"}], "class 'a' has code 254, which the map reserves"),
    ([{"value": 1, "name": "a"}, {"value": 2, "name": "a"}], r"class names \['a'\] appear more than once"),
])
def test_a_spec_with_duplicate_or_reserved_class_codes_is_refused(classes, message, tmp_path, capsys):
    spec = benthic_spec(classes=classes, reef_classes=["a"])
    with pytest.raises(InvalidParameter, match=message):
        read_spec(spec)
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(spec))
    code, out, err = run_cli(capsys, "bundle", "create", tmp_path / "any.pt2", "--spec", f, "--out", tmp_path / "o")
    assert code == 2 and err.count("\n") == 1 and "reefmap: error: spec" in err


def test_a_torchscript_file_given_as_pt2_is_refused(tiny, tmp_path, capsys):
    _, _, ts = tiny
    fake = tmp_path / "model.pt2"
    shutil.copyfile(ts, fake)
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(demo_spec(architecture=None)))
    code, out, err = run_cli(capsys, "bundle", "create", fake, "--spec", spec, "--out", tmp_path / "o")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "is a torch.jit.save file but its suffix '.pt2' says torch.export.save: rename it to model.ts" in err
    with pytest.raises(ModelError, match="the spec's artifact_type says torch.export.save"):
        create_bundle(ts, demo_spec(architecture=None, artifact_type="torch.export.save"), tmp_path / "o2")


def test_validate_finds_seams_when_the_recorded_radius_is_too_small(benthic_bundle, tmp_path, capsys):
    b = tmp_path / "b"
    shutil.copytree(benthic_bundle.path, b)
    doc = json.loads((b / "item.json").read_text())
    doc["properties"]["mlm:hyperparameters"].update(receptive_radius=2, halo=2)  # the true radius is 6
    (b / "item.json").write_text(json.dumps(doc))
    code, out, err = run_cli(capsys, "bundle", "validate", b)
    assert code == 2 and err.count("\n") == 1 and "is not seam-free" in err and "recorded 2 px" in err
