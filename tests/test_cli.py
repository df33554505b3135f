"""The command line: real GeoTIFFs on disk, one clear line per bad input, nothing written lost."""

import json
import subprocess
import sys

import numpy as np
import pytest
import rasterio
import zarr
from affine import Affine
from rasterio.crs import CRS

from conftest import textured
from reefmap.cli.main import main


def write_tif(path, arr, transform, crs="EPSG:32618", nodata=0, block=128):
    with rasterio.open(path, "w", driver="GTiff", width=arr.shape[2], height=arr.shape[1], count=arr.shape[0],
                       dtype=arr.dtype, crs=CRS.from_user_input(crs), transform=transform, nodata=nodata, tiled=True,
                       blockxsize=block, blockysize=block, compress="deflate") as dst:
        dst.write(arr)
    return path


def corrupt_block(path, row, col):
    """Overwrite one internal tile's compressed bytes with garbage (the header stays intact)."""
    with rasterio.open(path) as src:
        off = int(src.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=1))
        size = int(src.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=1))
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(b"\xff" * size)


T = Affine(30.0, 0, 200000.0, 0, -30.0, 2700000.0)


@pytest.fixture
def tif(tmp_path):
    return write_tif(tmp_path / "scene.tif", textured((512, 512), seed=11), T)


def run_cli(capsys, *args):
    code = main(list(map(str, args)))
    out, err = capsys.readouterr()
    return code, out, err


def test_run_then_status_json(tif, random_bundle, tmp_path, capsys):
    out = tmp_path / "m.zarr"
    code, stdout, err = run_cli(capsys, "run", "--mosaic", tif, "--model", random_bundle.path, "--out", out,
                                "--tile", "256", "--workers", "1", "--json")
    assert code == 0, err
    s = json.loads(stdout)
    assert s["planned"] == 4 and s["failed"] == 0
    code, stdout, _ = run_cli(capsys, "status", out, "--json")
    st = json.loads(stdout)
    assert code == 0 and {"planned", "done", "skipped", "failed", "pending"} <= set(st)
    assert st["planned"] == 4 and st["pending"] == 0 and st["done"] + st["skipped"] == 4
    code, stdout, _ = run_cli(capsys, "status", out)
    assert "100.0% done" in stdout


def test_a_corrupt_block_fails_its_tile_only_and_the_run_says_which(tmp_path, random_bundle, capsys):
    path = write_tif(tmp_path / "bad.tif", textured((512, 512), seed=12), T)
    corrupt_block(path, 3, 3)  # pixels 384..512 x 384..512 → output tile (1, 1) at tile 256
    out = tmp_path / "m.zarr"
    code, _, err = run_cli(capsys, "run", "--mosaic", path, "--model", random_bundle.path, "--out", out,
                           "--tile", "256", "--workers", "1")
    assert code == 1
    assert "1 tile(s) failed" in err and "(1, 1)" in err and "Traceback" not in err
    g = zarr.open_group(str(out), mode="r")
    st = g["tiles/status"][:]
    assert st[1, 1] == 9 and (st[0] != 0).all() and st[1, 0] != 0
    errs = {tuple(grp.attrs["tile"]): grp.attrs["error"] for _, grp in g["tile_errors"].groups()}
    assert list(errs) == [(1, 1)] and "bad.tif" in errs[(1, 1)]
    done_before = g["classification"][:256, :].copy()
    # the failed tile is retried on the next run; finished tiles are kept as they were
    code, _, err = run_cli(capsys, "run", "--mosaic", path, "--model", random_bundle.path, "--out", out,
                           "--tile", "256", "--workers", "1")
    assert code == 1
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["classification"][:256, :], done_before)


@pytest.mark.parametrize("case", ["missing", "bbox", "bands", "crs", "halo", "config"])
def test_bad_input_is_one_clear_line_and_exit_2(case, tif, random_bundle, tmp_path, capsys):
    args = ["run", "--model", random_bundle.path, "--out", tmp_path / "m.zarr", "--workers", "1"]
    if case == "missing":
        args += ["--mosaic", tmp_path / "nope.tif"]
        expect = "nope.tif"
    elif case == "bbox":
        args += ["--mosaic", tif, "--bbox", "10,10,11,11"]
        expect = "does not intersect"
    elif case == "bands":
        two = write_tif(tmp_path / "two.tif", textured((256, 256), seed=1)[:2].copy(), T)
        args += ["--mosaic", two]
        expect = "2 bands"
    elif case == "crs":
        other = write_tif(tmp_path / "other.tif", textured((256, 256), seed=2), Affine(30.0, 0, 600000.0, 0, -30.0, 2700000.0), crs="EPSG:32617")
        args += ["--mosaic", tif, "--mosaic", other]
        expect = "crs"
    elif case == "halo":
        args += ["--mosaic", tif, "--halo", "8"]
        expect = "receptive radius"
    else:
        cfg = tmp_path / "run.yaml"
        cfg.write_text("mosaic: scene.tif\nout: m.zarr\ntiles: 256\n")
        args = ["run", str(cfg)]
        expect = "unknown keys ['tiles']"
    code, out, err = run_cli(capsys, *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reefmap: error:") and expect.lower() in lines[0].lower(), err
    assert not (tmp_path / "m.zarr").exists()


def test_yaml_config_run_and_refusal_of_another_models_store(tif, random_bundle, tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"mosaic: [scene.tif]\nout: map.zarr\nmodel: {random_bundle.path}\ntile: 256\nworkers: 1\n")
    code, _, err = run_cli(capsys, "run", cfg)
    assert code == 0, err
    before = zarr.open_group(str(tmp_path / "map.zarr"), mode="r")["reef_probability"][:]
    from reefmap.model.bundle import DEMO_BUNDLE

    code, _, err = run_cli(capsys, "run", cfg, "--model", DEMO_BUNDLE)  # another model
    assert code == 2 and "refusing to mix" in err
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "map.zarr"), mode="r")["reef_probability"][:], before)


def test_cli_entry_point_prints_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "reefmap.cli.main", "status", str(tmp_path / "none.zarr")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "not a reefmap map" in r.stderr
