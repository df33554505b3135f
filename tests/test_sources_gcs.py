"""``open_mosaic`` on ``gs://`` URLs, against a local GCS emulator (``tests/gcs_emulator.py``).

Skipped (with the reason) when gcp-storage-emulator is not installed.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

try:  # must come before anything imports gcsfs: it sets the emulator's environment
    from gcs_emulator import STORAGE_OPTIONS, gcs_emulator, gcs_fs  # noqa: F401  (pytest fixtures)
except ImportError:  # tests/ collected as a package
    from tests.gcs_emulator import STORAGE_OPTIONS, gcs_emulator, gcs_fs  # noqa: F401

import dask
import numpy as np
import pytest
import rasterio
from affine import Affine

from reefmap.store.format import decode_meta
from reefmap.errors import CorruptSource, SourceNotFound
from reefmap.geometry.grid import Window
from reefmap.sources import open_mosaic, reader_of

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
T0 = Affine(30.0, 0.0, 500_000.0, 0.0, -30.0, 2_700_000.0)

pytestmark = [
    pytest.mark.filterwarnings("ignore:The data type .* does not have a Zarr V3 specification"),
    pytest.mark.filterwarnings("ignore::zarr.errors.UnstableSpecificationWarning"),
]


def write_tif(path, data, transform=T0, crs="EPSG:32618", nodata=0, **kw):
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0], dtype=data.dtype,
                   crs=crs, transform=transform, nodata=nodata, tiled=True, blockxsize=64, blockysize=64,
                   compress="deflate", interleave="pixel")
    profile.update(kw)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return str(path)


def scene(ny=200, nx=260, seed=0):
    img = np.random.default_rng(seed).integers(1, 255, size=(3, ny, nx), dtype=np.uint8)
    img[:, :5] = 0
    return img


def test_geotiff_mosaic_on_gcs(gcs_fs, tmp_path):
    fs, bucket = gcs_fs
    a, b = scene(seed=1), scene(seed=2)
    fs.put(write_tif(tmp_path / "a.tif", a), f"{bucket}/tiles/a.tif")
    fs.put(write_tif(tmp_path / "b.tif", b, T0 @ Affine.translation(200, 100)), f"{bucket}/tiles/b.tif")
    urls = [f"gs://{bucket}/tiles/a.tif", f"gs://{bucket}/tiles/b.tif"]

    remote = open_mosaic(urls, chunks=96, storage_options=STORAGE_OPTIONS)
    local = open_mosaic([tmp_path / "a.tif", tmp_path / "b.tif"], chunks=96)
    assert reader_of(remote).geobox == reader_of(local).geobox
    assert remote.rio.crs.to_epsg() == 32618 and remote.rio.transform() == T0
    with dask.config.set(scheduler="threads", num_workers=4):  # one handle per file per thread
        np.testing.assert_array_equal(remote.values, local.values)
    spec = reader_of(remote).spec()
    assert spec["paths"] == urls and spec["storage_options"] == STORAGE_OPTIONS


def test_real_cog_on_gcs(gcs_fs):
    if not (REAL / "RGB.byte.cog.tif").exists():
        pytest.skip(f"the shared real data is not at {REAL}")
    fs, bucket = gcs_fs
    fs.put(str(REAL / "RGB.byte.cog.tif"), f"{bucket}/RGB.byte.cog.tif")
    m = open_mosaic(f"gs://{bucket}/RGB.byte.cog.tif", chunks=256, storage_options=STORAGE_OPTIONS)
    with rasterio.open(REAL / "RGB.byte.tif") as src:
        assert m.rio.transform() == src.transform and m.rio.crs.to_epsg() == 32618
        np.testing.assert_array_equal(m.values, src.read())


def test_zarr_on_gcs(gcs_fs, tmp_path):
    fs, bucket = gcs_fs
    img = scene(150, 170)
    local = open_mosaic(write_tif(tmp_path / "a.tif", img), chunks=50)
    url = f"gs://{bucket}/mosaics/m.zarr"
    local.to_dataset(name="image").to_zarr(url, mode="w", consolidated=False, storage_options=STORAGE_OPTIONS)

    z = open_mosaic(url, chunks=64, storage_options=STORAGE_OPTIONS)
    r = reader_of(z)
    assert type(r).__name__ == "ZarrReader"
    assert r.geobox == reader_of(local).geobox and z.dtype == np.uint8 and z.attrs["nodata"] == 0
    np.testing.assert_array_equal(z.values, img)
    # a prefix holding zarr.json is recognised without the .zarr suffix
    url2 = f"gs://{bucket}/mosaics/plain"
    local.to_dataset(name="image").to_zarr(url2, mode="w", consolidated=False, storage_options=STORAGE_OPTIONS)
    np.testing.assert_array_equal(open_mosaic(url2, storage_options=STORAGE_OPTIONS).values, img)


def test_gcs_readers_rebuild_from_spec(gcs_fs, tmp_path):
    fs, bucket = gcs_fs
    img = scene(120, 140)
    fs.put(write_tif(tmp_path / "a.tif", img), f"{bucket}/a.tif")
    local = open_mosaic(tmp_path / "a.tif", chunks=64)
    local.to_dataset(name="image").to_zarr(f"gs://{bucket}/a.zarr", mode="w", consolidated=False,
                                           storage_options=STORAGE_OPTIONS)
    for url in (f"gs://{bucket}/a.tif", f"gs://{bucket}/a.zarr"):
        r = reader_of(open_mosaic(url, storage_options=STORAGE_OPTIONS))
        r2 = pickle.loads(pickle.dumps(r))
        assert r2.spec() == r.spec()
        r3 = type(r).from_spec(json.loads(json.dumps(r.spec())))
        np.testing.assert_array_equal(r3.read(Window(7, 99, 11, 130)), img[:, 7:99, 11:130])


def test_missing_gcs_objects_are_source_not_found(gcs_fs):
    fs, bucket = gcs_fs
    with pytest.raises(SourceNotFound, match=f"gs://{bucket}/nope.tif"):
        open_mosaic(f"gs://{bucket}/nope.tif", storage_options=STORAGE_OPTIONS)
    with pytest.raises(SourceNotFound, match=f"gs://{bucket}/nope.zarr"):
        open_mosaic(f"gs://{bucket}/nope.zarr", storage_options=STORAGE_OPTIONS)


def test_truncated_geotiff_on_gcs(gcs_fs, tmp_path):
    fs, bucket = gcs_fs
    img = scene(256, 256)
    data = Path(write_tif(tmp_path / "a.tif", img)).read_bytes()
    fs.pipe(f"{bucket}/cut.tif", data[: len(data) // 2])
    r = reader_of(open_mosaic(f"gs://{bucket}/cut.tif", chunks=64, storage_options=STORAGE_OPTIONS))
    np.testing.assert_array_equal(r.read(Window(0, 64, 0, 64)), img[:, :64, :64])
    with pytest.raises(CorruptSource, match=r"gs://.*/cut\.tif.*rows 192:256"):
        r.read(Window(192, 256, 192, 256))


def test_credentials_reach_the_workers_but_never_the_maps_provenance(gcs_fs, tmp_path, random_bundle):
    import zarr

    from reefmap.execute.runner import run
    from reefmap.sources.base import public_spec

    fs, bucket = gcs_fs
    fs.put(write_tif(tmp_path / "a.tif", scene(ny=128, nx=128)), f"{bucket}/secret/a.tif")
    secret = {"token": {"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----sekrit"}}
    spec = public_spec({"kind": "geotiff", "storage_options": {**secret, "project": "reef", "anon": False}})
    assert spec["storage_options"] == {"token": "<redacted>", "project": "reef", "anon": False}

    m = open_mosaic(f"gs://{bucket}/secret/a.tif", chunks=64, storage_options=STORAGE_OPTIONS)
    assert reader_of(m).spec()["storage_options"] == STORAGE_OPTIONS  # workers rebuild the reader with them
    out = tmp_path / "m.zarr"
    run(m, random_bundle.path, out, tile=64, client="inprocess", progress=False)
    attrs = decode_meta(zarr.open_group(str(out), mode="r").attrs["reefmap"])
    assert attrs["sources"][0]["storage_options"] == {"token": "<redacted>"}
    assert attrs["sources"][0]["paths"] == [f"gs://{bucket}/secret/a.tif"]
    assert "anon" not in json.dumps(attrs["sources"])
