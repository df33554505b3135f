"""Shared fixtures: small real model bundles, in-memory and on-disk mosaics, the shared data folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data"


def torch_devices() -> list[str]:
    """The devices the device-path tests run on: the CPU, and CUDA where torch sees a GPU (on a GPU machine the same
    tests then check the CUDA path: streams, pinned memory, the kernels' bytes)."""
    import torch

    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test when that folder is absent (a clone elsewhere)."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared data not available: {p} (tests using ../shared/data run where it is beside the repo)")
    return p


@pytest.fixture(scope="session")
def random_bundle(tmp_path_factory):
    """A real TinyUNet bundle with seeded random weights (untrained): fine for exactness properties."""
    import torch

    from reefmap.classes import CLASS_NAMES
    from reefmap.model.architectures import analytic_receptive_radius, build_network
    from reefmap.model.segmenter import save_bundle

    torch.manual_seed(1)
    arch = {"name": "tiny_unet", "in_channels": 3, "classes": len(CLASS_NAMES), "base": 4, "levels": 2}
    net = build_network(arch)
    with torch.no_grad():
        for p in net.parameters():
            p.uniform_(-0.4, 0.4)
    meta = {
        "name": "test-random", "architecture": arch, "bands": ["red", "green", "blue"], "mean": [100.0, 110.0, 120.0],
        "std": [40.0, 40.0, 40.0], "valid_range": [0.0, 255.0], "classes": list(CLASS_NAMES),
        "receptive_radius": analytic_receptive_radius(arch), "halo": 32, "size_multiple": 4,
        "screen": {"deep_water": [[0, 30], [0, 60], [40, 120]], "land": [[120, 255], [100, 255], [0, 90]]},
        "training": {"data": "none (random weights, for tests)"},
    }
    return save_bundle(tmp_path_factory.mktemp("bundle") / "random", net, meta)


def textured(shape, seed=0, nodata_box=None):
    """A (3, y, x) uint8 image with smooth structure at several scales, plus an optional nodata rectangle."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    img = np.zeros((3, ny, nx), np.float32)
    for b in range(3):
        for scale in (7.0, 23.0, 71.0):
            fy, fx, ph = rng.uniform(0.5, 1.5), rng.uniform(0.5, 1.5), rng.uniform(0, 6.28)
            img[b] += np.sin(yy / scale * fy + ph) * np.cos(xx / scale * fx - ph) * 40
        img[b] += rng.normal(0, 12, (ny, nx))
    img = np.clip(img + 128, 1, 255).astype(np.uint8)
    if nodata_box is not None:
        r0, r1, c0, c1 = nodata_box
        img[:, r0:r1, c0:c1] = 0
    return img


@pytest.fixture
def memory_mosaic():
    """An in-memory 3-band mosaic on a UTM grid with a nodata corner; returns (DataArray, numpy array)."""
    from affine import Affine

    from reefmap.geometry.grid import GeoBox, Shape
    from reefmap.sources import memory_reader
    from reefmap.sources.base import reader_to_dataarray

    arr = textured((700, 900), seed=3, nodata_box=(0, 300, 0, 300))
    gb = GeoBox(Shape(700, 900), Affine(30.0, 0, 200000.0, 0, -30.0, 2700000.0), "EPSG:32618")
    reader = memory_reader(arr, gb, nodata=0, band_names=["red", "green", "blue"])
    yield reader_to_dataarray(reader, chunks=256), arr
    reader.release()


@pytest.fixture
def zarr_mosaic(tmp_path):
    """The same kind of mosaic written to a Zarr store on disk (readable from worker processes)."""
    from affine import Affine

    from reefmap.geometry.grid import GeoBox, Shape
    from reefmap.sources import memory_reader, open_mosaic
    from reefmap.sources.base import reader_to_dataarray

    arr = textured((600, 800), seed=5, nodata_box=(500, 600, 600, 800))
    gb = GeoBox(Shape(600, 800), Affine(30.0, 0, 300000.0, 0, -30.0, 2600000.0), "EPSG:32618")
    reader = memory_reader(arr, gb, nodata=0, band_names=["red", "green", "blue"])
    da = reader_to_dataarray(reader, chunks=256)
    path = tmp_path / "mosaic.zarr"
    ds = da.drop_attrs().drop_vars("band").to_dataset(name="image")
    ds["image"].attrs["_FillValue"] = 0
    ds = ds.rio.write_crs(gb.crs)
    ds.to_zarr(path, consolidated=False, zarr_format=3)
    reader.release()
    return path, arr
