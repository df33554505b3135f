"""Data of another kind (issue 10, item 6): a 4-band uint16 surface-reflectance mosaic made from the real Bahamas
scene (../shared/data/real; skipped when absent), mapped through a torch.export ``.pt2`` of an architecture reefmap
has never seen, bundled with ``reefmap bundle create``: the map's georeferencing is the source's, its classes are
codes of the bundle's scheme, and two tile sizes give the same map."""

import numpy as np
import pytest
import rasterio
import xarray as xr
import yaml
import zarr

from reefmap.cli.main import main
from reefmap.execute.runner import run
from reefmap.model.bundle import SPECS
from reefmap.sources import open_mosaic
from reefmap.store.format import CLASS_NODATA

from conftest import shared_data

torch = pytest.importorskip("torch")


class GatedNet(torch.nn.Module):
    """Nothing reefmap ships: a dilated depthwise convolution in a gated residual, and a max-pooled branch."""

    def __init__(self, bands: int, classes: int):
        super().__init__()
        self.stem = torch.nn.Conv2d(bands, 12, 3, padding=1)
        self.depthwise = torch.nn.Conv2d(12, 12, 5, padding=4, dilation=2, groups=12)
        self.gate = torch.nn.Conv2d(12, 12, 1)
        self.down = torch.nn.Conv2d(12, 12, 3, padding=1)
        self.head = torch.nn.Conv2d(24, classes, 1)

    def forward(self, x):
        f = torch.nn.functional.silu(self.stem(x))
        f = f + self.depthwise(f) * torch.sigmoid(self.gate(f))
        g = torch.nn.functional.silu(self.down(torch.nn.functional.max_pool2d(f, 2)))
        g = torch.nn.functional.interpolate(g, scale_factor=2.0, mode="nearest")
        return self.head(torch.cat([f, g], 1))


def reflectance_mosaic(path):
    """RGB.byte.tif as 4-band uint16 surface reflectance x 10000 (red, green, blue, a NIR-like band: bright over
    land, dark over water), nodata 0 where the scene has none."""
    with rasterio.open(shared_data("real", "RGB.byte.tif")) as src:
        rgb, profile = src.read().astype(np.float64), src.profile
    nodata = np.all(rgb == 0, axis=0)
    nir = np.clip(1.6 * rgb[0] - 0.6 * rgb[2], 0, 255)
    data = np.round(np.concatenate([rgb, nir[None]]) / 255 * 10000).astype(np.uint16)
    data[:, nodata] = 0
    profile.update(count=4, dtype="uint16", nodata=0, photometric="MINISBLACK")
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        for i, name in enumerate(["red", "green", "blue", "nir"], start=1):
            dst.set_band_description(i, name)
    return str(path), profile, nodata


def scheme_spec(scheme: str) -> dict:
    """The Allen Coral Atlas benthic example spec (4 bands blue, green, red, nir of uint16 reflectance, z-scored), or
    the same bands with the demo scheme's five classes."""
    spec = yaml.safe_load((SPECS / "allen-coral-atlas-benthic.yaml").read_text())
    if scheme == "demo":
        demo = yaml.safe_load((SPECS / "demo.yaml").read_text())
        spec.update(name="reflectance-demo-classes", classes=demo["classes"], reef_classes=demo["reef_classes"])
    return spec


@pytest.mark.parametrize("scheme", [
    "benthic",
    "demo",
])
def test_a_pt2_of_a_new_architecture_maps_uint16_reflectance(scheme, tmp_path, capsys):
    from torch.export import Dim

    scene, profile, nodata = reflectance_mosaic(tmp_path / "reflectance.tif")
    spec = scheme_spec(scheme)
    codes = {c["value"] for c in spec["classes"]}
    torch.manual_seed(4)
    net = GatedNet(4, len(spec["classes"])).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.uniform_(-0.4, 0.4)
    program = torch.export.export(net, (torch.randn(2, 4, 64, 64),), dynamic_shapes=({0: Dim.AUTO, 2: Dim.AUTO, 3: Dim.AUTO},))
    torch.export.save(program, str(tmp_path / "gated.pt2"))
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))

    assert main(["bundle", "create", str(tmp_path / "gated.pt2"), "--spec", str(tmp_path / "spec.yaml"),
                 "--out", str(tmp_path / "bundle")]) == 0
    run(open_mosaic(scene), tmp_path / "bundle", tmp_path / "t512.zarr", tile=512, client="inprocess", progress=False)
    code = main(["run", "--mosaic", scene, "--model", str(tmp_path / "bundle"), "--out", str(tmp_path / "t256.zarr"),
                 "--tile", "256", "--workers", "1", "--json"])
    assert code == 0, capsys.readouterr().err

    maps = [xr.open_zarr(tmp_path / f"t{t}.zarr", consolidated=False) for t in (256, 512)]
    for ds in maps:  # the source's grid, exactly
        assert ds.rio.crs == profile["crs"] and ds.rio.transform() == profile["transform"]
        assert ds.classification.shape == (profile["height"], profile["width"])
    cls = maps[0].classification.values
    present = set(np.unique(cls).tolist()) - {CLASS_NODATA}
    assert present and present <= codes  # codes of the bundle's scheme only
    np.testing.assert_array_equal(cls == CLASS_NODATA, nodata)  # nodata exactly where the scene has none
    g = [zarr.open_group(str(tmp_path / f"t{t}.zarr"), mode="r") for t in (256, 512)]
    np.testing.assert_array_equal(g[0]["classification"][:], g[1]["classification"][:])  # tile-size invariant
    # probabilities: the same but for float rounding (torch's convolutions sum in another order on another tensor
    # shape, and a value on a uint8 step's edge may land on either side): at most one step, on a handful of pixels
    a, b = (x["reef_probability"][:].astype(int) for x in g)
    assert np.abs(a - b).max() <= 1 and np.count_nonzero(a != b) <= 1e-4 * a.size
