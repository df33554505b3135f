"""Tests of the mosaic readers and ``reefmap.open_mosaic`` on real files only.

Two kinds of real data: GeoTIFFs/Zarr stores/COGs written to ``tmp_path`` here (always run), and the real
imagery in ``../shared/data/real`` (skipped, with the reason, when that folder is absent).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import uuid
from pathlib import Path

import dask
import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window as RioWindow

import reefmap
from reefmap.errors import CorruptSource, CRSMismatch, InvalidParameter, SourceError, SourceNotFound
from reefmap.geometry.grid import GeoBox, Shape, Window
from reefmap.options import set_options
from reefmap.sources import open_mosaic, open_reader, open_source, reader_of

SHARED = Path(__file__).resolve().parents[2] / "shared"
REAL = SHARED / "data" / "real"

pytestmark = [
    pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning"),
    pytest.mark.filterwarnings("ignore:The data type .* does not have a Zarr V3 specification"),
    pytest.mark.filterwarnings("ignore::zarr.errors.UnstableSpecificationWarning"),
]


@pytest.fixture
def real():
    if not (REAL / "RGB.byte.tif").exists():
        pytest.skip(f"the shared real data is not at {REAL} (a fresh clone has no ../shared/data)")
    return REAL


def rio_read(path, **kw):
    with rasterio.open(path) as src:
        return src.read(**kw)


def write_tif(path, data, transform, crs="EPSG:32618", nodata=0, **kw):
    """Write ``data`` ((band, y, x) or (y, x)) as a GeoTIFF; extra keywords go to rasterio (tiled, compress...)."""
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0], dtype=data.dtype,
                   crs=crs, transform=transform, nodata=nodata)
    profile.update(kw)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return str(path)


def scene(ny=200, nx=300, bands=3, seed=0):
    """A uint8 image with values 1..254 and a nodata (0) collar on its left edge."""
    rng = np.random.default_rng(seed)
    img = rng.integers(1, 255, size=(bands, ny, nx), dtype=np.uint8)
    img[:, :, :7] = 0
    return img


T0 = Affine(30.0, 0.0, 500_000.0, 0.0, -30.0, 2_700_000.0)


def forbid_compute(dsk, keys, **kw):
    raise AssertionError("dask computed something while it should only build a graph")


# -- GeoTIFF: real data ------------------------------------------------------------------------------------


def test_rgb_byte_equals_rasterio(real):
    path = real / "RGB.byte.tif"
    m = open_mosaic(path, chunks=360)
    with rasterio.open(path) as src:
        assert m.rio.crs.to_epsg() == 32618
        assert reader_of(m).geobox.crs == "EPSG:32618"
        assert m.rio.transform() == src.transform  # exactly
        assert reader_of(m).geobox.transform == src.transform
        assert m.shape == (3, src.height, src.width)
        ref = src.read()
    assert m.dims == ("band", "y", "x") and m.dtype == np.uint8
    assert m.attrs["nodata"] == 0 and m.attrs["_FillValue"] == 0
    assert m.chunks[1] == (360, 358) and m.chunks[2] == (360, 360, 71)
    np.testing.assert_array_equal(m.values, ref)


def test_quadrants_mosaic_equals_full_image(real):
    """rgb1..rgb4 overlap by one pixel; as one mosaic they are RGB.byte.tif exactly (grid and pixels)."""
    m = open_mosaic([real / f"rgb{i}.tif" for i in (1, 2, 3, 4)], chunks=400)
    g = reader_of(m).geobox
    with rasterio.open(real / "RGB.byte.tif") as full, rasterio.open(real / "rgb1.tif") as q1:
        assert tuple(g.shape) == (full.height, full.width)
        assert g.transform == full.transform
        assert m.rio.transform() == full.transform
        ref = full.read()
        # the quadrants carry an unnamed-datum UTM 18N (WGS 84 ellipsoid, no EPSG code): the mosaic keeps it,
        # and it is the same projection as EPSG:32618 (points map onto themselves)
        assert m.rio.crs == q1.crs
        from pyproj import Transformer

        tr = Transformer.from_crs(g.crs, "EPSG:32618", always_xy=True)
        x, y = tr.transform(200_000.0, 2_700_000.0)
        assert abs(x - 200_000.0) < 1e-6 and abs(y - 2_700_000.0) < 1e-6
    np.testing.assert_array_equal(m.values, ref)


def test_cog(real):
    m = open_mosaic(real / "RGB.byte.cog.tif", chunks=256)
    with rasterio.open(real / "RGB.byte.tif") as full:
        assert m.rio.transform() == full.transform
        np.testing.assert_array_equal(m.values, full.read())
    # a window straddling COG blocks reads the same as rasterio's windowed read
    r = reader_of(m)
    win = Window(200, 333, 250, 517)
    np.testing.assert_array_equal(r.read(win), rio_read(real / "RGB.byte.cog.tif", window=RioWindow(250, 200, 267, 133)))


def test_rgba_alpha_becomes_nodata_mask(real):
    m = open_mosaic(real / "RGBA.byte.tif")
    rgba = rio_read(real / "RGBA.byte.tif")
    assert m.shape == (3, *rgba.shape[1:])
    assert m.attrs["nodata"] == 0
    expect = np.where(rgba[3] == 0, 0, rgba[:3])
    got = m.values
    np.testing.assert_array_equal(got, expect)
    assert (rgba[3] == 0).any() and (got[:, rgba[3] == 0] == 0).all()


def test_reproject_real_to_lonlat_matches_warpedvrt(real):
    from rasterio.vrt import WarpedVRT

    m = open_mosaic(real / "RGB.byte.tif", crs="EPSG:4326", chunks=200)
    g = reader_of(m).geobox
    assert g.crs == "EPSG:4326" and m.rio.crs.to_epsg() == 4326
    with rasterio.open(real / "RGB.byte.tif") as src, WarpedVRT(
        src, crs="EPSG:4326", transform=g.transform, width=g.shape.x, height=g.shape.y, src_nodata=0, nodata=0,
        tolerance=1e-6,
    ) as vrt:
        ref = vrt.read()
    np.testing.assert_array_equal(m.values, ref)
    # the extent covers the scene's lon/lat bounds
    b = g.bounds
    assert b.left <= -78.95 and b.right >= -76.58 and b.bottom <= 23.57 and b.top >= 25.55


# -- GeoTIFF: files made here --------------------------------------------------------------------------------


def test_single_synthetic_file_grid_and_pixels(tmp_path):
    img = scene()
    p = write_tif(tmp_path / "a.tif", img, T0)
    m = open_mosaic(p, chunks=64)
    g = reader_of(m).geobox
    assert g == GeoBox(Shape(200, 300), T0, "EPSG:32618")
    np.testing.assert_array_equal(m.values, img)
    # a halo window past the edge is padded with nodata
    out = reader_of(m).read(Window(-5, 10, 290, 310))
    assert out.shape == (3, 15, 20)
    assert (out[:, :5] == 0).all() and (out[:, :, 10:] == 0).all()
    np.testing.assert_array_equal(out[:, 5:, :10], img[:, :10, 290:300])


def test_precedence_first_listed_valid_pixel_wins(tmp_path):
    """Overlapping files: the first listed file with a valid pixel wins; its nodata lets later files show."""
    a = np.full((3, 100, 100), 10, np.uint8)
    a[:, 40:60, 60:80] = 0  # a nodata hole inside the overlap
    b = np.full((3, 100, 100), 20, np.uint8)
    pa = write_tif(tmp_path / "a.tif", a, T0)
    pb = write_tif(tmp_path / "b.tif", b, T0 @ Affine.translation(50, 30))  # B starts 30 rows, 50 cols later

    ab = open_mosaic([pa, pb], chunks=64)
    g = reader_of(ab).geobox
    assert tuple(g.shape) == (130, 150) and g.transform == T0
    v = ab.values
    assert (v[:, :100, :100][:, a[0] == 10] == 10).all()  # A everywhere it is valid, overlap included
    assert (v[:, 40:60, 60:80] == 20).all()  # A's hole, inside B: B shows through
    assert (v[:, 30:130, 100:150] == 20).all()  # B alone
    assert (v[:, 100:, :50] == 0).all()  # neither: nodata
    assert v[0, 50, 55] == 10  # overlap, outside the hole → A

    ba = open_mosaic([pb, pa], chunks=64)
    w = ba.values
    assert (w[:, 30:130, 50:150] == 20).all()  # B wins its whole footprint now
    assert (w[:, :30, :100] == 10).all()
    assert reader_of(ba).geobox == g


def test_open_reads_no_pixels_and_keeps_no_file_open(tmp_path, monkeypatch):
    from reefmap.sources.geotiff import GeoTIFFMosaicReader

    calls = {"inside": 0, "rio": 0}
    orig_inside = GeoTIFFMosaicReader._read_bands_inside
    orig_read = rasterio.io.DatasetReader.read

    def counting_inside(self, window, bands):
        calls["inside"] += 1
        return orig_inside(self, window, bands)

    def counting_read(self, *a, **k):
        calls["rio"] += 1
        return orig_read(self, *a, **k)

    monkeypatch.setattr(GeoTIFFMosaicReader, "_read_bands_inside", counting_inside)
    monkeypatch.setattr(rasterio.io.DatasetReader, "read", counting_read)
    paths = [write_tif(tmp_path / f"q{i}.tif", scene(seed=i), T0 @ Affine.translation(300 * i, 0)) for i in range(3)]
    m = open_mosaic(paths, chunks=100)
    assert calls == {"inside": 0, "rio": 0}
    assert m.shape == (3, 200, 900)
    # no pixels were loaded and no handle kept: once the files are gone, reading fails cleanly
    for p in paths:
        os.remove(p)
    with pytest.raises(SourceNotFound, match="q0.tif"):
        m[:, :10, :10].values
    assert calls["inside"] == 1 and calls["rio"] == 0


def test_graph_is_lazy_and_reads_only_needed_chunks(tmp_path, monkeypatch):
    from reefmap.sources.geotiff import GeoTIFFMosaicReader

    p = write_tif(tmp_path / "a.tif", scene(400, 400), T0)
    with dask.config.set(scheduler=forbid_compute):
        m = open_mosaic(p, chunks=100)
        sub = (m.isel(x=slice(0, 50), y=slice(0, 50)).astype("float32") * 2).rio.write_crs("EPSG:32618")
        assert sub.shape == (3, 50, 50)
    seen = []
    orig = GeoTIFFMosaicReader._read_bands_inside
    monkeypatch.setattr(GeoTIFFMosaicReader, "_read_bands_inside", lambda self, w, b: seen.append(w) or orig(self, w, b))
    with set_options(chunk_cache_mb=0):  # no chunk cache: exactly the window
        sub.compute(scheduler="sync")
    assert seen == [Window(0, 100, 0, 100)]
    reefmap.clear_caches()
    sub.compute(scheduler="sync")  # the chunk cache reads the aligned block holding it (here the whole file)
    assert seen[1:] == [Window(0, 400, 0, 400)]


def test_each_file_opened_once_per_thread_and_reused(tmp_path, monkeypatch):
    from reefmap.sources.geotiff import GeoTIFFMosaicReader

    paths = [write_tif(tmp_path / f"o{i}.tif", scene(seed=i), T0 @ Affine.translation(300 * i, 0)) for i in range(2)]
    opened = []
    orig = GeoTIFFMosaicReader._open
    monkeypatch.setattr(GeoTIFFMosaicReader, "_open", lambda self, i: opened.append(i) or orig(self, i))
    m = open_mosaic(paths, chunks=50)  # 4 x 12 chunks
    assert opened == []
    m.compute(scheduler="sync")
    assert sorted(opened) == [0, 1]
    m.compute(scheduler="sync")
    assert sorted(opened) == [0, 1]


def test_geotiff_on_fsspec_memory_filesystem(tmp_path):
    import fsspec

    img = scene()
    p = write_tif(tmp_path / "a.tif", img, T0, tiled=True, blockxsize=64, blockysize=64)
    fs = fsspec.filesystem("memory")
    url = f"memory://reefmap-test-{uuid.uuid4().hex}/a.tif"
    fs.pipe(url, Path(p).read_bytes())
    try:
        m = open_mosaic(url, chunks=64)
        assert reader_of(m).geobox.transform == T0
        with dask.config.set(scheduler="threads", num_workers=3):
            np.testing.assert_array_equal(m.values, img)
    finally:
        fs.rm(url)


def test_threaded_chunked_reads_equal_whole_read(tmp_path):
    paths = [write_tif(tmp_path / f"t{i}.tif", scene(150, 170, seed=i), T0 @ Affine.translation(160 * i, 140 * (i % 2)))
             for i in range(3)]
    whole = open_mosaic(paths, chunks=4096).values
    with dask.config.set(scheduler="threads", num_workers=4):
        small = open_mosaic(paths, chunks=37).values
    np.testing.assert_array_equal(small, whole)


def test_crs_mismatch_names_files_and_fix(tmp_path):
    pa = write_tif(tmp_path / "utm18.tif", scene(), T0, crs="EPSG:32618")
    pb = write_tif(tmp_path / "utm17.tif", scene(), Affine(30, 0, 800_000, 0, -30, 2_700_000), crs="EPSG:32617")
    with pytest.raises(CRSMismatch) as ei:
        open_mosaic([pa, pb])
    msg = str(ei.value)
    assert "utm18.tif" in msg and "EPSG:32618" in msg and "utm17.tif" in msg and "EPSG:32617" in msg
    assert "crs=" in msg


def test_crs_forces_warping_of_files_in_other_crs(tmp_path):
    img = scene()
    pa = write_tif(tmp_path / "a.tif", img, T0, crs="EPSG:32618")
    # B: the same scene reprojected to EPSG:32617 (zone 17), placed east of A
    from rasterio.warp import calculate_default_transform, reproject

    tb = T0 @ Affine.translation(250, 0)
    dst_t, w, h = calculate_default_transform("EPSG:32618", "EPSG:32617", 300, 200,
                                              *rasterio.transform.array_bounds(200, 300, tb)[::1])
    b = np.zeros((3, h, w), np.uint8)
    reproject(img, b, src_transform=tb, src_crs="EPSG:32618", dst_transform=dst_t, dst_crs="EPSG:32617",
              src_nodata=0, dst_nodata=0)
    pb = write_tif(tmp_path / "b.tif", b, dst_t, crs="EPSG:32617")
    m = open_mosaic([pa, pb], crs="EPSG:32618", chunks=128)
    r = reader_of(m)
    assert r.geobox.crs == "EPSG:32618"
    t = r.geobox.transform
    # the grid is A's pixel grid (A's resolution and alignment), grown to hold B (which reaches further north)
    assert t.a == 30.0 and t.e == -30.0 and t.c == T0.c
    r0 = (t.f - T0.f) / 30.0
    assert r0 == int(r0) and r0 > 0
    r0 = int(r0)
    v = m.values
    # A is on the target grid: read exactly, and it wins where both have pixels
    a_part = v[:, r0:r0 + 200, :300]
    np.testing.assert_array_equal(a_part[:, img[0] > 0], img[:, img[0] > 0])
    # B was warped into place east of A: most of its footprint holds data
    assert v.shape[2] > 500 and (v[0, r0 + 20:r0 + 180, 320:500] > 0).mean() > 0.9
    assert [f.warp for f in r.files] == [False, True]


def test_misaligned_file_is_an_error_unless_resampled(tmp_path):
    pa = write_tif(tmp_path / "a.tif", scene(), T0)
    pb = write_tif(tmp_path / "half.tif", scene(), T0 @ Affine.translation(100.5, 0))
    with pytest.raises(SourceError, match=r"half\.tif.*not aligned.*resolution="):
        open_mosaic([pa, pb])
    pc = write_tif(tmp_path / "coarse.tif", scene(), Affine(60, 0, T0.c, 0, -60, T0.f))
    with pytest.raises(SourceError, match=r"coarse\.tif.*pixel size"):
        open_mosaic([pa, pc])
    m = open_mosaic([pa, pb], resolution=30)
    assert reader_of(m).geobox.transform.a == 30 and m.shape[2] == 401


def test_missing_file_is_source_not_found_at_open(tmp_path):
    pa = write_tif(tmp_path / "a.tif", scene(), T0)
    missing = tmp_path / "nope.tif"
    with pytest.raises(SourceNotFound, match="nope.tif"):
        open_mosaic(missing)
    with pytest.raises(SourceNotFound, match="nope.tif"):
        open_mosaic([pa, missing])
    with pytest.raises(SourceNotFound, match="nope.zarr"):
        open_mosaic(tmp_path / "nope.zarr")
    with pytest.raises(FileNotFoundError):  # SourceNotFound is also a FileNotFoundError
        open_mosaic(f"file://{missing}")


def test_not_a_geotiff_is_source_error_at_open(tmp_path):
    bad = tmp_path / "notes.tif"
    bad.write_text("this is not a GeoTIFF\n" * 50)
    with pytest.raises(SourceError, match="notes.tif.*not a readable GeoTIFF") as ei:
        open_mosaic(bad)
    assert not isinstance(ei.value, SourceNotFound)


def test_truncated_geotiff_fails_only_where_corrupt(tmp_path):
    # a tiled (64 px), DEFLATE, pixel-interleaved GeoTIFF of incompressible pixels, cut in half: the header and
    # the first tile rows are intact, the rest is gone
    img = scene(256, 256)
    good = write_tif(tmp_path / "good.tif", img, T0, tiled=True, blockxsize=64, blockysize=64,
                     compress="deflate", interleave="pixel")
    data = Path(good).read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) // 2])
    other = write_tif(tmp_path / "other.tif", scene(256, 100, seed=3), T0 @ Affine.translation(256, 0))

    m = open_mosaic([cut, other], chunks=64)  # the header is intact: opening works
    r = reader_of(m)
    np.testing.assert_array_equal(r.read(Window(0, 64, 0, 128)), img[:, :64, :128])  # intact tiles
    np.testing.assert_array_equal(r.read(Window(200, 256, 256, 356)), rio_read(other)[:, 200:256])  # other file
    with pytest.raises(CorruptSource) as ei:
        r.read(Window(192, 256, 0, 64))
    msg = str(ei.value)
    assert "cut.tif" in msg and "rows 192:256" in msg and "cols 0:64" in msg
    with pytest.raises(CorruptSource, match="cut.tif"):
        m.values  # through dask, too
    # the reader still works afterwards
    np.testing.assert_array_equal(r.read(Window(0, 64, 0, 64)), img[:, :64, :64])


def test_file_without_nodata_and_single_file_keeps_all_pixels(tmp_path):
    img = scene()
    p = write_tif(tmp_path / "nn.tif", img, T0, nodata=None)
    m = open_mosaic(p)
    assert m.attrs.get("nodata") is None and "_FillValue" not in m.attrs
    np.testing.assert_array_equal(m.values, img)


# -- dispatch and parameters -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [42, "mosaic.png", ["a.tif", 3], [], {"no": "stac"}, b"bytes.tif"])
def test_unsupported_sources_are_invalid_parameter(bad, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidParameter) as ei:
        open_mosaic(bad)
    msg = str(ei.value)
    assert "Zarr" in msg and "GeoTIFF" in msg and "STAC" in msg


def test_existing_directory_without_zarr_is_invalid(tmp_path):
    d = tmp_path / "folder"
    d.mkdir()
    with pytest.raises(InvalidParameter, match="folder"):
        open_mosaic(d)
    with pytest.raises(SourceNotFound, match="nothing_here"):
        open_mosaic(tmp_path / "nothing_here")


def test_variable_only_for_zarr(tmp_path):
    p = write_tif(tmp_path / "a.tif", scene(), T0)
    with pytest.raises(InvalidParameter, match="variable"):
        open_mosaic(p, variable="image")


def test_top_level_open_mosaic_is_the_same_function():
    assert reefmap.open_mosaic is open_mosaic


# -- Zarr ----------------------------------------------------------------------------------------------------


def _write_zarr(da, url, **kw):
    ds = da.to_dataset(name="image")
    ds.to_zarr(url, mode="w", consolidated=False, **kw)


@pytest.fixture
def tif_mosaic(tmp_path):
    img = scene(230, 170)
    return open_mosaic(write_tif(tmp_path / "src.tif", img, T0), chunks=64), img


@pytest.mark.parametrize("where", ["path", "file_url", "memory"])
def test_zarr_round_trip(tmp_path, tif_mosaic, where):
    m, img = tif_mosaic
    if where == "memory":
        url = f"memory://reefmap-test-{uuid.uuid4().hex}/mosaic.zarr"
        write_url = url
    else:
        write_url = str(tmp_path / "mosaic.zarr")
        url = write_url if where == "path" else f"file://{write_url}"
    try:
        _write_zarr(m, write_url)
        z = open_mosaic(url, chunks=100)
        r = reader_of(z)
        assert type(r).__name__ == "ZarrReader"
        assert r.geobox == reader_of(m).geobox  # CRS, transform (exactly) and shape
        assert z.rio.crs.to_epsg() == 32618 and z.rio.transform() == m.rio.transform()
        assert z.dtype == np.uint8 and z.attrs["nodata"] == 0
        np.testing.assert_array_equal(z.values, img)
        assert z.chunks[1][0] == 100
    finally:
        if where == "memory":
            import fsspec

            fs = fsspec.filesystem("memory")
            fs.rm(url.split("://", 1)[1].rsplit("/", 1)[0], recursive=True)


def test_zarr_round_trip_real_via_rioxarray(real, tmp_path):
    import rioxarray

    da = rioxarray.open_rasterio(real / "RGB.byte.cog.tif", chunks={"band": -1, "y": 256, "x": 256}, lock=False)
    _write_zarr(da, tmp_path / "cog.zarr")
    z = open_mosaic(tmp_path / "cog.zarr")
    with rasterio.open(real / "RGB.byte.tif") as src:
        assert z.rio.transform() == src.transform and z.rio.crs.to_epsg() == 32618
        np.testing.assert_array_equal(z.values, src.read())
    assert z.dtype == np.uint8  # never float/NaN decoding
    assert reader_of(z).band_names == ("1", "2", "3")


def test_zarr_dispatch_by_zarr_json_without_suffix(tmp_path, tif_mosaic):
    m, img = tif_mosaic
    _write_zarr(m, tmp_path / "store")
    z = open_mosaic(tmp_path / "store")
    np.testing.assert_array_equal(z.values, img)


def test_zarr_transform_from_coordinates_when_no_geotransform(tmp_path, tif_mosaic):
    import zarr

    m, img = tif_mosaic
    store = tmp_path / "nogt.zarr"
    _write_zarr(m, store)
    g = zarr.open_group(str(store), mode="r+")
    attrs = dict(g["spatial_ref"].attrs)
    del attrs["GeoTransform"]
    g["spatial_ref"].attrs.clear()
    g["spatial_ref"].attrs.update(attrs)
    r = reader_of(open_mosaic(store))
    np.testing.assert_allclose(list(r.geobox.transform)[:6], list(T0)[:6], rtol=0, atol=1e-6)


def test_zarr_stale_geotransform_after_slicing_uses_coordinates(tmp_path, tif_mosaic):
    m, img = tif_mosaic
    sub = m.isel(y=slice(10, 110), x=slice(20, 120)).chunk({"y": 50, "x": 50})  # keeps the old GeoTransform
    _write_zarr(sub, tmp_path / "sub.zarr")
    r = reader_of(open_mosaic(tmp_path / "sub.zarr"))
    expect = T0 @ Affine.translation(20, 10)
    np.testing.assert_allclose(list(r.geobox.transform)[:6], list(expect)[:6], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(r.read(Window(0, 100, 0, 100)), img[:, 10:110, 20:120])


def test_zarr_without_crs_is_source_error(tmp_path):
    import xarray as xr

    da = xr.DataArray(np.zeros((3, 10, 12), np.uint8), dims=("band", "y", "x"),
                      coords={"y": np.arange(10.0), "x": np.arange(12.0)})
    _write_zarr(da, tmp_path / "nocrs.zarr")
    with pytest.raises(SourceError, match=r"nocrs\.zarr.*no CRS.*rio\.write_crs"):
        open_mosaic(tmp_path / "nocrs.zarr")


def test_zarr_without_band_y_x_variable_is_source_error(tmp_path):
    import xarray as xr

    ds = xr.Dataset({"elevation": (("y", "x"), np.zeros((10, 12), np.float32))})
    ds.to_zarr(tmp_path / "dem.zarr", mode="w", consolidated=False)
    with pytest.raises(SourceError, match=r"dem\.zarr.*no variable with dims \(band, y, x\).*elevation"):
        open_mosaic(tmp_path / "dem.zarr")


def test_zarr_path_that_is_not_a_group(tmp_path, tif_mosaic):
    m, _ = tif_mosaic
    _write_zarr(m, tmp_path / "m.zarr")
    with pytest.raises(SourceError, match="single Zarr array"):
        open_mosaic(tmp_path / "m.zarr" / "image", variable="image")
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(SourceError, match=r"empty\.zarr.*not a Zarr store"):
        open_mosaic(tmp_path / "empty.zarr")


def test_zarr_several_variables_need_variable(tmp_path, tif_mosaic):
    m, img = tif_mosaic
    ds = m.to_dataset(name="a")
    ds["b"] = m + 1
    ds.to_zarr(tmp_path / "two.zarr", mode="w", consolidated=False)
    with pytest.raises(SourceError, match=r"several.*\['a', 'b'\].*variable="):
        open_mosaic(tmp_path / "two.zarr")
    z = open_mosaic(tmp_path / "two.zarr", variable="b")
    np.testing.assert_array_equal(z.values, img + 1)
    with pytest.raises(SourceError, match="no variable 'c'"):
        open_mosaic(tmp_path / "two.zarr", variable="c")


def test_zarr_rejects_reprojection(tmp_path, tif_mosaic):
    m, _ = tif_mosaic
    _write_zarr(m, tmp_path / "m.zarr")
    open_mosaic(tmp_path / "m.zarr", crs="EPSG:32618")  # the same CRS is fine
    with pytest.raises(InvalidParameter, match="reprojection"):
        open_mosaic(tmp_path / "m.zarr", crs="EPSG:4326")


def test_zarr_open_reads_no_chunks(tmp_path, tif_mosaic, monkeypatch):
    from reefmap.sources.zarr_source import ZarrReader

    m, img = tif_mosaic
    _write_zarr(m, tmp_path / "m.zarr")
    calls = []
    orig = ZarrReader._read_inside
    monkeypatch.setattr(ZarrReader, "_read_inside", lambda self, w: calls.append(w) or orig(self, w))
    with dask.config.set(scheduler=forbid_compute):
        z = open_mosaic(tmp_path / "m.zarr", chunks=50)
    assert calls == []
    shutil.rmtree(tmp_path / "m.zarr" / "image" / "c")  # all chunks gone: reads now give the fill value
    assert (z.values == 0).all()


# -- STAC ----------------------------------------------------------------------------------------------------


def write_band_cogs(folder: Path, img: np.ndarray, transform, names=("red", "green", "blue"), crs="EPSG:32618"):
    folder.mkdir(parents=True, exist_ok=True)
    hrefs = {}
    for i, name in enumerate(names):
        p = folder / f"{name}.tif"
        write_tif(p, img[i], transform, crs=crs, driver="COG", compress="deflate", blocksize=64)
        hrefs[name] = str(p)
    return hrefs


def make_item(item_id, hrefs, transform, shape, epsg=32618, use_code=False):
    import datetime

    import pystac
    from rasterio.transform import array_bounds

    b = array_bounds(shape[0], shape[1], transform)
    item = pystac.Item(item_id, geometry=None, bbox=None, datetime=datetime.datetime(2024, 1, 1), properties={})
    item.properties["proj:code" if use_code else "proj:epsg"] = f"EPSG:{epsg}" if use_code else epsg
    item.properties["proj:transform"] = list(transform)[:6]
    item.properties["proj:shape"] = list(shape)
    item.properties["proj:bbox"] = [b[0], b[1], b[2], b[3]]
    for name, href in hrefs.items():
        item.add_asset(name, pystac.Asset(href=href, media_type=pystac.MediaType.COG, roles=["data"]))
    return item


@pytest.fixture
def stac_scene(tmp_path):
    img = scene(150, 130)
    hrefs = write_band_cogs(tmp_path / "it1", img, T0)
    return make_item("it1", hrefs, T0, (150, 130)), img


def test_stac_items_with_stackstac(stac_scene):
    item, img = stac_scene
    m = open_mosaic([item], chunks=64)
    r = reader_of(m)
    assert type(r).__name__ == "StacReader"
    assert r.geobox == GeoBox(Shape(150, 130), T0, "EPSG:32618")
    assert r.band_names == ("red", "green", "blue") and m.dtype == np.uint8 and m.attrs["nodata"] == 0
    np.testing.assert_array_equal(m.values, img)
    # item dicts, a single item and an ItemCollection open the same mosaic
    import pystac

    for src in (item.to_dict(), [item.to_dict()], item, pystac.ItemCollection([item])):
        np.testing.assert_array_equal(open_mosaic(src, chunks=64)[:, 5:40, 7:90].values, img[:, 5:40, 7:90])


def test_stac_real_bands(real, tmp_path):
    rgb = rio_read(real / "RGB.byte.tif")
    with rasterio.open(real / "RGB.byte.tif") as src:
        t = src.transform
    hrefs = write_band_cogs(tmp_path / "real", rgb, t)
    m = open_mosaic([make_item("rgb", hrefs, t, rgb.shape[1:], use_code=True)], chunks=256)  # proj:code only
    assert m.rio.transform() == t and m.rio.crs.to_epsg() == 32618
    np.testing.assert_array_equal(m.values, rgb)


def test_stac_first_listed_item_wins(tmp_path):
    a = np.full((3, 60, 60), 10, np.uint8)
    a[:, :, :20] = 0
    b = np.full((3, 60, 60), 20, np.uint8)
    tb = T0 @ Affine.translation(30, 0)
    ia = make_item("a", write_band_cogs(tmp_path / "a", a, T0), T0, (60, 60))
    ib = make_item("b", write_band_cogs(tmp_path / "b", b, tb), tb, (60, 60))
    v = open_mosaic([ia, ib], chunks=32).values
    assert v.shape == (3, 60, 90)
    assert (v[:, :, 20:60] == 10).all() and (v[:, :, 60:] == 20).all() and (v[:, :, :20] == 0).all()
    w = open_mosaic([ib, ia], chunks=32).values
    assert (w[:, :, 30:] == 20).all() and (w[:, :, 20:30] == 10).all()


def test_stac_spec_is_json_and_rebuilds(stac_scene):
    item, img = stac_scene
    r = open_source([item])
    spec = r.spec()
    text = json.dumps(spec)
    assert spec["kind"] == "stac" and spec["items"][0]["id"] == "it1" and spec["assets"] == ["red", "green", "blue"]
    assert spec["items"][0]["assets"]["red"]["href"].startswith("/")
    r2 = type(r).from_spec(json.loads(text))
    assert r2.geobox == r.geobox
    np.testing.assert_array_equal(r2.read(Window(10, 50, 10, 50)), img[:, 10:50, 10:50])


def test_stac_corrupt_asset_raises_corrupt_source(tmp_path):
    img = scene(150, 130)
    hrefs = write_band_cogs(tmp_path / "bad", img, T0)
    Path(hrefs["green"]).write_bytes(b"garbage, not a COG" * 10)
    m = open_mosaic([make_item("bad", hrefs, T0, (150, 130))], chunks=64)  # STAC metadata only: opens
    with pytest.raises(CorruptSource, match=r"rows 0:64, cols 0:64"):
        reader_of(m).read(Window(0, 64, 0, 64))


def test_stac_missing_asset_is_source_not_found(tmp_path):
    hrefs = write_band_cogs(tmp_path / "gone", scene(50, 50), T0)
    os.remove(hrefs["blue"])
    with pytest.raises(SourceNotFound, match="blue"):
        open_mosaic([make_item("gone", hrefs, T0, (50, 50))])


# -- memory, Reader pass-through, specs ------------------------------------------------------------------------


def test_memory_reader_numpy_and_dataarray():
    from reefmap.sources import memory_reader

    img = scene(90, 110)
    g = GeoBox(Shape(90, 110), T0, "EPSG:32618")
    r = memory_reader(img, g, nodata=0)
    m = open_mosaic(r, chunks=32)
    assert reader_of(m) is r and r.spec()["kind"] == "memory"
    with dask.config.set(scheduler="threads"):
        np.testing.assert_array_equal(m.values, img)
    assert pickle.loads(pickle.dumps(r)) is r  # same process: the registry gives back the same reader

    da = open_mosaic(r).compute()
    m2 = open_mosaic(da, chunks=40)
    assert reader_of(m2).geobox == g and reader_of(m2).nodata == 0
    np.testing.assert_array_equal(m2.values, img)
    with pytest.raises(InvalidParameter, match="geobox"):
        memory_reader(img)
    with pytest.raises(InvalidParameter, match="does not match"):
        memory_reader(img[:, :10], g)


def test_memory_reader_over_a_dask_array():
    import dask.array as da

    from reefmap.sources import memory_reader

    img = scene(90, 110)
    r = memory_reader(da.from_array(img, chunks=(3, 30, 30)), GeoBox(Shape(90, 110), T0, "EPSG:32618"), nodata=0)
    with dask.config.set(scheduler="threads"):
        np.testing.assert_array_equal(open_mosaic(r, chunks=40).values, img)


def test_memory_reader_in_another_process_is_a_clear_error():
    with pytest.raises(SourceError, match="memory_reader.*Zarr"):
        open_reader({"kind": "memory", "id": "not-in-this-process"})


def test_readers_pickle_to_spec_and_rebuild_equal(tmp_path, tif_mosaic):
    from reefmap.sources.base import spec_key

    m, img = tif_mosaic
    _write_zarr(m, tmp_path / "m.zarr")
    for mosaic in (m, open_mosaic(tmp_path / "m.zarr")):
        r = reader_of(mosaic)
        blob = pickle.dumps(r)
        assert len(blob) < 20_000 and b"numpy" not in blob  # only the spec travels
        r2 = pickle.loads(blob)
        assert r2.spec() == r.spec() and r2.geobox == r.geobox and r2.band_names == r.band_names
        assert r2.nodata == r.nodata and r2.dtype == r.dtype
        # a fresh rebuild from the JSON spec (as on a new worker) reads the same pixels
        r3 = type(r).from_spec(json.loads(json.dumps(r.spec())))
        assert r3 is not r and spec_key(r3.spec()) == spec_key(r.spec())
        win = Window(17, 140, 3, 160)
        np.testing.assert_array_equal(r3.read(win), r.read(win))
        np.testing.assert_array_equal(r3.read(win), img[:, 17:140, 3:160])


def test_readers_rebuild_in_a_fresh_process(tmp_path, tif_mosaic):
    """A worker process with an empty reader cache rebuilds each reader from its pickled spec and reads."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from operator import methodcaller

    m, img = tif_mosaic
    _write_zarr(m, tmp_path / "m.zarr")
    readers = [reader_of(m), reader_of(open_mosaic(tmp_path / "m.zarr"))]
    win = Window(5, 90, 30, 160)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as ex:
        outs = [f.result(timeout=120) for f in [ex.submit(methodcaller("read", win), r) for r in readers]]
    for out in outs:
        np.testing.assert_array_equal(out, img[:, 5:90, 30:160])


def test_reader_pass_through(tif_mosaic):
    m, img = tif_mosaic
    r = reader_of(m)
    m2 = open_mosaic(r, chunks=50)
    assert reader_of(m2) is r and m2.chunks[1][0] == 50
    np.testing.assert_array_equal(m2.values, img)


# -- the reader table and the reader cache -------------------------------------------------------------------
def test_every_reader_kind_comes_from_the_explicit_table():
    """``READERS`` names each built-in kind's factory; opening a spec imports just its module (no side effects)."""
    import importlib
    import subprocess
    import sys

    from reefmap.sources import base

    assert set(base.READERS) == {"memory", "zarr", "geotiff", "stac", "subset", "synthetic"}
    for kind, target in base.READERS.items():
        module, _, attr = target.partition(":")
        factory = importlib.import_module(module)
        for part in attr.split("."):
            factory = getattr(factory, part)
        assert callable(factory), kind
    code = ("import json, sys\n"
            "from reefmap.sources.base import open_reader\n"
            "from reefmap.synthetic.reader import synthetic_geobox\n"
            "r = open_reader({'kind': 'synthetic', 'geobox': synthetic_geobox(16).to_json(), 'world': {'seed': 1}})\n"
            "print(type(r).__name__, 'reefmap.sources.zarr_source' in sys.modules, 'reefmap.sources.geotiff' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["SyntheticReader", "False", "False"]
    with pytest.raises(InvalidParameter, match="unknown mosaic source kind 'nope'.*geotiff"):
        open_reader({"kind": "nope"})


def test_register_reader_adds_an_outside_kind():
    from reefmap.sources import clear_reader_cache, memory_reader, register_reader

    inner = memory_reader(np.ones((1, 4, 4), np.uint8), GeoBox(Shape(4, 4), T0, "EPSG:32618"))
    register_reader("test-outside", lambda spec: inner)  # a kind no other test uses
    assert open_reader({"kind": "test-outside", "n": 1}) is inner
    register_reader("test-outside-by-name", "reefmap.sources.memory:MemoryReader.from_spec")
    assert open_reader({"kind": "test-outside-by-name", "id": inner.id}) is inner
    clear_reader_cache()
    inner.release()


def test_reader_cache_is_a_bounded_lru_that_can_be_cleared(monkeypatch):
    """Rule: ``open_reader`` keeps the ``READER_CACHE_SIZE`` most recently used readers, keyed by the spec's
    canonical JSON; an older one is dropped (and rebuilt when asked again); ``clear_reader_cache`` drops all."""
    from reefmap.caching import caches
    from reefmap.sources import clear_reader_cache
    from reefmap.synthetic.reader import synthetic_geobox

    monkeypatch.setattr(caches()["readers"], "maxsize", 3)
    clear_reader_cache()
    g = synthetic_geobox(8).to_json()
    specs = [{"kind": "synthetic", "geobox": g, "world": {"seed": s}} for s in range(4)]
    first = [open_reader(s) for s in specs[:3]]
    assert [open_reader(dict(reversed(list(s.items())))) for s in specs[:3]] == first  # key order is irrelevant
    assert open_reader(specs[0]) is first[0]  # now the most recently used: seed 1 is the oldest
    fourth = open_reader(specs[3])
    assert open_reader(specs[0]) is first[0] and open_reader(specs[2]) is first[2] and open_reader(specs[3]) is fourth
    again = open_reader(specs[1])  # it was dropped: a new reader, equal to the old
    assert again is not first[1] and again.spec() == first[1].spec()
    clear_reader_cache()
    assert all(open_reader(s) is not r for s, r in zip(specs[:3], first))
    clear_reader_cache()


def test_band_labels_are_names_when_the_file_has_them(tmp_path):
    """Descriptions win, then the colour interpretation (red/green/blue/gray); plain band numbers otherwise."""
    from rasterio.enums import ColorInterp

    profile = dict(driver="GTiff", width=8, height=8, count=3, dtype="uint8", crs="EPSG:32618",
                   transform=Affine(30, 0, 500000, 0, -30, 2700000))
    for name, colours, descriptions, expected in (
        ("rgb.tif", [ColorInterp.red, ColorInterp.green, ColorInterp.blue], None, ["red", "green", "blue"]),
        ("described.tif", [ColorInterp.red, ColorInterp.green, ColorInterp.blue], ["B04", "B03", "B02"],
         ["B04", "B03", "B02"]),
        ("plain.tif", [ColorInterp.undefined] * 3, None, ["1", "2", "3"]),
    ):
        with rasterio.open(tmp_path / name, "w", **profile, photometric="MINISBLACK") as dst:
            dst.write(np.ones((3, 8, 8), np.uint8))
            dst.colorinterp = colours
            for i, d in enumerate(descriptions or [], start=1):
                dst.set_band_description(i, d)
        assert list(open_mosaic(str(tmp_path / name)).band.values) == expected, name
