"""Sensors (issue 10, item 5): a mosaic's bands by name, the model's bands picked from it (by name or --bands),
its values checked against the model's declared type and range before anything is written, the alpha rule, and
run() mapping exactly the .sel/.isel subset it is given."""

import json
import logging

import numpy as np
import pytest
import rasterio
import xarray as xr
import yaml
import zarr
import reefmap
from affine import Affine

from reefmap.cli.main import main
from reefmap.errors import BandMismatch, InputValuesMismatch, InvalidParameter
from reefmap.config import RunConfig
from reefmap.execute.runner import prepare, run, run_config
from reefmap.sources import open_mosaic, reader_of
from reefmap.sources.bands import parse_bands, select_bands
from reefmap.sources.subset import SubsetReader

from conftest import textured

T = Affine(30.0, 0.0, 400_000.0, 0.0, -30.0, 2_600_000.0)
RGB = textured((160, 200), seed=7, nodata_box=(0, 40, 0, 40))  # (3, y, x) uint8, a nodata corner


def nir_like(rgb):
    """A band unlike the others: bright where red is bright, 0 (nodata) where they are."""
    nir = np.clip(rgb[0].astype(int) * 2 - rgb[2] // 2, 1, 255).astype(np.uint8)
    nir[np.all(rgb == 0, axis=0)] = 0
    return nir


def write_tif(path, data, descriptions=None, nodata=0, **kw):
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0], dtype=data.dtype,
                   crs="EPSG:32618", transform=T, **({} if nodata is None else {"nodata": nodata}), **kw)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        for i, d in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, d)
    return str(path)


def layers(path):
    g = zarr.open_group(str(path), mode="r")
    return g["classification"][:], g["reef_probability"][:]


def mapped(mosaic, out, **kw):
    run(mosaic, None, out, tile=128, client="inprocess", progress=False, **kw)
    return layers(out)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The demo model's map of the RGB scene, from a plain 3-band file (unnamed bands, taken in order)."""
    d = tmp_path_factory.mktemp("ref")
    return mapped(open_mosaic(write_tif(d / "rgb.tif", RGB)), d / "ref.zarr")


# --- band names and the model's bands ------------------------------------------------------------------------

def test_band_names_come_from_descriptions_zarr_coords_else_numbers(tmp_path):
    described = write_tif(tmp_path / "d.tif", np.concatenate([RGB[::-1], nir_like(RGB)[None]]),
                          ["B02", "B03", "B04", "B08"])
    assert open_mosaic(described).band.values.tolist() == ["B02", "B03", "B04", "B08"]
    assert open_mosaic(write_tif(tmp_path / "c.tif", RGB)).band.values.tolist() == ["red", "green", "blue"]  # colours
    plain = write_tif(tmp_path / "p.tif", RGB.astype(np.uint16))  # gray, undefined, undefined: no names
    assert open_mosaic(plain).band.values.tolist() == ["1", "2", "3"]
    da = xr.DataArray(RGB, dims=("band", "y", "x"), coords={"band": ["red", "green", "blue"]})
    da = da.rio.write_crs("EPSG:32618").rio.write_transform(T).rio.write_nodata(0)
    da.to_dataset(name="image").to_zarr(tmp_path / "m.zarr", consolidated=False)
    assert open_mosaic(tmp_path / "m.zarr").band.values.tolist() == ["red", "green", "blue"]


def test_unnamed_bands_taken_in_order_are_said_so(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="reefmap"):
        assert select_bands(reader_of(open_mosaic(write_tif(tmp_path / "n.tif", RGB))), ["red", "green", "blue"]) == (0, 1, 2)
        assert "no names" not in caplog.text  # named by colour: nothing to say
        reader = reader_of(open_mosaic(write_tif(tmp_path / "u.tif", RGB.astype(np.uint16))))
        assert select_bands(reader, ["red", "green", "blue"], model="m") == (0, 1, 2)
    assert "bands have no names: bands 1..3 are taken in order as model 'm''s red, green, blue" in caplog.text


def test_bands_parse_as_pairs_or_a_list_and_resolve_by_name_or_number(tmp_path):
    assert parse_bands("red=3, green=2,blue=1") == {"red": "3", "green": "2", "blue": "1"}
    assert parse_bands("B04,B03,B02,B08") == ("B04", "B03", "B02", "B08")
    with pytest.raises(InvalidParameter, match="mixes"):
        parse_bands("red=3,B03")
    r = reader_of(open_mosaic(write_tif(tmp_path / "d.tif", RGB[::-1].copy(), ["B02", "B03", "B04"])))
    wanted = ["red", "green", "blue"]
    assert select_bands(r, wanted, "red=B04,green=B03,blue=B02") == (2, 1, 0)
    assert select_bands(r, wanted, ["b04", 2, "1"]) == (2, 1, 0)  # a name (any case) or a 1-based number
    with pytest.raises(BandMismatch, match=r"has 3 bands: 1: B02, 2: B03, 3: B04; it lacks \['red', 'green', 'blue'\].*--bands red=1"):
        select_bands(r, wanted)
    with pytest.raises(BandMismatch, match=r"\['B05'\] are not bands of the mosaic.*1: B02"):
        select_bands(r, wanted, "B04,B03,B05")
    with pytest.raises(BandMismatch, match=r"missing: \['blue'\]"):
        select_bands(r, wanted, {"red": 3, "green": 2})


def test_bands_by_name_or_mapping_feed_the_model_in_its_order_reading_only_those(tmp_path, reference, monkeypatch):
    """A B02,B03,B04,B08 file (blue first, plus NIR) gives the map of the RGB file: picked by --bands, only the three
    bands read; and a file whose bands are named red/green/blue in another order is reordered by name."""
    s2 = write_tif(tmp_path / "s2.tif", np.concatenate([RGB[::-1], nir_like(RGB)[None]]), ["B02", "B03", "B04", "B08"])
    plan, job, _ = prepare(open_mosaic(s2), None, tmp_path / "p.zarr", tile=128, bands="red=B04,green=B03,blue=B02")
    assert job.reader_spec["kind"] == "subset" and job.reader_spec["bands"] == [2, 1, 0]
    read = []
    orig = rasterio.io.DatasetReader.read
    monkeypatch.setattr(rasterio.io.DatasetReader, "read", lambda self, *a, **k: read.append(k.get("indexes")) or orig(self, *a, **k))
    for i, bands in enumerate(("red=B04,green=B03,blue=B02", ["B04", "B03", "B02"], {"red": 3, "green": 2, "blue": 1})):
        read.clear()
        reefmap.clear_caches()  # the chunk cache would serve the blocks the previous run decoded
        got = mapped(open_mosaic(s2), tmp_path / f"s2-{i}.zarr", bands=bands)
        np.testing.assert_array_equal(got[0], reference[0])
        np.testing.assert_array_equal(got[1], reference[1])
        assert read and all(sorted(ix) == [1, 2, 3] for ix in read)  # band 4 (B08) never read
    bgr = write_tif(tmp_path / "bgr.tif", RGB[::-1].copy(), ["blue", "green", "red"])
    np.testing.assert_array_equal(mapped(open_mosaic(bgr), tmp_path / "bgr.zarr")[0], reference[0])


def test_bands_the_mosaic_lacks_are_one_error_listing_what_it_has_nothing_written(tmp_path, capsys):
    s2 = write_tif(tmp_path / "s2.tif", np.concatenate([RGB, nir_like(RGB)[None]]), ["B04", "B03", "B02", "B08"])
    with pytest.raises(BandMismatch, match=r"needs bands \['red', 'green', 'blue'\] but the mosaic has 4 bands: "
                                           r"1: B04, 2: B03, 3: B02, 4: B08"):
        run(open_mosaic(s2), None, tmp_path / "a.zarr", client="inprocess", progress=False)
    code = main(["run", "--mosaic", s2, "--out", str(tmp_path / "b.zarr"), "--bands", "red=B04,green=B03,blue=B05"])
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1 and err.startswith("reefmap: error: bands ['B05'] are not bands")
    assert not (tmp_path / "a.zarr").exists() and not (tmp_path / "b.zarr").exists()


def test_bands_from_the_command_line_and_the_yaml_config(tmp_path, reference, capsys):
    s2 = write_tif(tmp_path / "s2.tif", np.concatenate([RGB[::-1], nir_like(RGB)[None]]), ["B02", "B03", "B04", "B08"])
    assert main(["run", "--mosaic", s2, "--out", str(tmp_path / "c.zarr"), "--tile", "128", "--workers", "1",
                 "--bands", "B04,B03,B02", "--json"]) == 0
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"mosaic": s2, "out": str(tmp_path / "y.zarr"), "tile": 128, "workers": 1,
                                   "bands": {"red": "B04", "green": 3 - 1, "blue": "B02"}}))
    run_config(RunConfig.from_yaml(cfg), client="inprocess", progress=False)  # the CLI's path, without a cluster
    capsys.readouterr()
    for out in ("c.zarr", "y.zarr"):
        np.testing.assert_array_equal(layers(tmp_path / out)[0], reference[0])


# --- values checked against the model's declared type and range ----------------------------------------------

@pytest.mark.parametrize("kind", ["uint16 reflectance", "float reflectance"])
def test_values_the_model_cannot_take_are_refused_before_the_store_exists(tmp_path, kind, capsys):
    scaled = RGB.astype(np.float64) / 255
    data = (scaled * 10000).astype(np.uint16) if kind.startswith("uint16") else scaled.astype(np.float32)
    path = write_tif(tmp_path / "x.tif", data)
    if kind.startswith("uint16"):
        msg = (r"the mosaic holds uint16 values \d+..10000 \(sampled \d+ band values; \d+\.\d% outside the model's range\) "
               r"but model 'reefmap-demo-tiny-unet-b8-l4' expects uint8 values 0..255.*Use a bundle made for this "
               r"sensor \(source_data_type: uint16.*or rescale the mosaic to uint8 values 0..255 first")
    else:
        msg = r"float32 values 0.0039\d*..1, which looks like reflectance 0..1.*expects uint8 values 0..255.*x 255"
    with pytest.raises(InputValuesMismatch, match=msg):
        run(open_mosaic(path), None, tmp_path / "m.zarr", client="inprocess", progress=False)
    assert main(["run", "--mosaic", path, "--out", str(tmp_path / "c.zarr")]) != 0
    err = capsys.readouterr().err.splitlines()  # (a warning that the unnamed bands are taken in order may precede it)
    assert err[-1].startswith("reefmap: error: the mosaic holds") and not any("Traceback" in line for line in err)
    assert not (tmp_path / "m.zarr").exists() and not (tmp_path / "c.zarr").exists()


def test_an_existing_map_is_left_unchanged_by_a_refused_input(tmp_path):
    good = write_tif(tmp_path / "g.tif", RGB)
    out = tmp_path / "m.zarr"
    mapped(open_mosaic(good), out)
    before = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    wide = write_tif(tmp_path / "w.tif", (RGB.astype(np.uint16) * 40))
    with pytest.raises(InputValuesMismatch, match="uint16"):
        run(open_mosaic(wide), None, out, tile=128, client="inprocess", progress=False, allow_new_sources=True)
    assert {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before


# --- the alpha rule -----------------------------------------------------------------------------------------

def test_rasterios_default_rgbn_file_keeps_its_nir_band_as_data(tmp_path, reference, caplog):
    """rasterio writes a 4-band uint8 file as RGB + alpha (PHOTOMETRIC=RGB, band 4 flagged alpha): its NIR band must
    not become a mask (here 0 over a quarter of the valid pixels, which would all turn into nodata)."""
    nir = nir_like(RGB)
    nir[:, 100:] = np.where(nir[:, 100:] > 0, 0, nir[:, 100:])  # NIR 0 in the east: alpha would mask it out
    path = write_tif(tmp_path / "rgbn.tif", np.concatenate([RGB, nir[None]]))
    with rasterio.open(path) as src:
        assert src.colorinterp[3] == rasterio.enums.ColorInterp.alpha  # what the file says, by rasterio's default
    with caplog.at_level(logging.WARNING, logger="reefmap"):
        cls, prob = mapped(open_mosaic(path), tmp_path / "m.zarr")
    assert "flagged as alpha by the file, but it holds values other than 0 and 255" in caplog.text
    np.testing.assert_array_equal(cls, reference[0])  # the east is mapped, not nodata
    np.testing.assert_array_equal(prob, reference[1])


def test_a_flagged_alpha_band_a_model_needs_is_read_as_its_band(tmp_path):
    from reefmap.sources.bands import model_input

    path = write_tif(tmp_path / "rgbn.tif", np.concatenate([RGB, nir_like(RGB)[None]]), nodata=None)
    plain = reader_of(open_mosaic(path))
    assert plain.band_names == ("red", "green", "blue")  # alpha dropped, as a mask
    r = model_input(plain, ["blue", "green", "red", "nir"])
    assert isinstance(r, SubsetReader) and r.band_names == ("blue", "green", "red", "4") and r.bands == (2, 1, 0, 3)
    from reefmap.geometry.grid import Window

    np.testing.assert_array_equal(r.read(Window(0, 160, 0, 200))[3], nir_like(RGB))


def test_a_real_alpha_mask_still_masks(tmp_path):
    alpha = np.where(np.all(RGB == 0, axis=0), 0, 255).astype(np.uint8)
    alpha[:, :50] = 0
    path = write_tif(tmp_path / "rgba.tif", np.concatenate([RGB, alpha[None]]), nodata=None)
    cls, _ = mapped(open_mosaic(path), tmp_path / "m.zarr")
    assert (cls[:, :50] == 0).all() and (cls[50:, 60:] != 0).all()  # nodata where alpha is 0, mapped elsewhere


# --- run() maps exactly the subset it is given --------------------------------------------------------------

def four_bands(tmp_path):
    return open_mosaic(write_tif(tmp_path / "rgbn.tif", np.concatenate([RGB, nir_like(RGB)[None]]),
                                 ["red", "green", "blue", "nir"]), chunks=64)


def test_run_of_a_band_selection_maps_those_bands(tmp_path, reference):
    m = four_bands(tmp_path)
    got = mapped(m.sel(band=["red", "green", "blue"]), tmp_path / "sel.zarr")
    np.testing.assert_array_equal(got[0], reference[0])
    with pytest.raises(BandMismatch, match=r"the mosaic has 2 bands: 1: red, 2: nir"):
        mapped(m.sel(band=["red", "nir"]), tmp_path / "two.zarr")


@pytest.mark.parametrize("how", ["isel", "sel"])
def test_run_of_a_window_maps_exactly_that_window_on_its_grid(tmp_path, how):
    m = four_bands(tmp_path).sel(band=["red", "green", "blue"])
    if how == "isel":
        sub = m.isel(y=slice(30, 130), x=slice(45, 190))
    else:  # coordinates: y runs north to south
        sub = m.sel(x=slice(400_000 + 45 * 30, 400_000 + 190 * 30 - 1), y=slice(2_600_000 - 30 * 30, 2_600_000 - 130 * 30 + 1))
    assert sub.shape == (3, 100, 145)
    got = mapped(sub, tmp_path / "sub.zarr")
    alone = write_tif(tmp_path / "alone.tif", RGB[:, 30:130, 45:190].copy())  # the same pixels, a file of their own
    want = mapped(open_mosaic(alone), tmp_path / "alone.zarr")
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    ds = xr.open_zarr(tmp_path / "sub.zarr", consolidated=False)
    assert ds.classification.shape == (100, 145) and ds.rio.transform() == T @ Affine.translation(45, 30)
    assert ds.rio.crs == sub.rio.crs
    sources = json.loads(ds.attrs["reefmap"])["sources"][0]
    assert sources["kind"] == "subset" and sources["window"] == [30, 130, 45, 190]


def test_selections_the_runner_cannot_re_read_are_refused(tmp_path):
    m = four_bands(tmp_path)
    for bad, msg in ((m.isel(x=slice(0, None, 2)), "not a contiguous run"), (m.isel(x=[3, 1, 2]), "not a contiguous"),
                     (m.astype("float32"), "holds float32 values but its source holds uint8"),
                     (m.isel(x=slice(5, 5)), "selects no pixels along x")):
        with pytest.raises(InvalidParameter, match=msg):
            run(bad, None, tmp_path / "n.zarr", client="inprocess", progress=False)
    assert not (tmp_path / "n.zarr").exists()


def test_zarr_and_stac_bands_are_found_by_coordinate_and_common_name(tmp_path, reference):
    """A Zarr store with band coordinates blue, green, red, nir, and STAC items of assets B02, B03, B04 whose
    eo:bands say blue, green, red: the model's red, green, blue are found in both, and the maps are the RGB file's."""
    import datetime

    import pystac

    from reefmap.geometry.grid import Window

    bgrn = np.concatenate([RGB[::-1], nir_like(RGB)[None]])
    da = xr.DataArray(bgrn, dims=("band", "y", "x"), coords={"band": ["blue", "green", "red", "nir"]})
    da.rio.write_crs("EPSG:32618").rio.write_transform(T).rio.write_nodata(0).to_dataset(name="image").to_zarr(
        tmp_path / "m.zarr", consolidated=False)
    z = open_mosaic(tmp_path / "m.zarr")
    sub = reader_of(z)
    np.testing.assert_array_equal(SubsetReader(sub, (2, 1, 0)).read(Window(0, 160, 0, 200)), RGB)  # oindex read
    np.testing.assert_array_equal(mapped(z, tmp_path / "z.zarr")[0], reference[0])

    item = pystac.Item("s", geometry=None, bbox=None, datetime=datetime.datetime(2024, 1, 1),
                       properties={"proj:epsg": 32618, "proj:transform": list(T)[:6], "proj:shape": [160, 200]})
    for i, (key, common) in enumerate((("B02", "blue"), ("B03", "green"), ("B04", "red"))):
        href = write_tif(tmp_path / f"{key}.tif", RGB[2 - i][None].copy())
        item.add_asset(key, pystac.Asset(href=href, media_type=pystac.MediaType.COG, roles=["data"],
                                         extra_fields={"eo:bands": [{"name": key, "common_name": common}]}))
    s = open_mosaic([item])
    assert reader_of(s).band_names == ("B02", "B03", "B04") and reader_of(s).band_common_names == ("blue", "green", "red")
    np.testing.assert_array_equal(mapped(s, tmp_path / "s.zarr")[0], reference[0])
