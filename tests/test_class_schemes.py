"""Class schemes come from the bundle (issue 10, item 4): a map made with the Allen Coral Atlas benthic scheme,
end to end (run → status → query → stats → overviews → exports and a PNG legend), every product following the
map's own classes; maps that record no scheme read as the demo scheme; the screen names the bundle's classes."""

import json

import numpy as np
import pytest
import yaml
from affine import Affine

import reefmap
from reefmap.classes import DEMO_SCHEME, ClassScheme
from reefmap.errors import InvalidParameter, ModelError
from reefmap.geometry.areas import area_model
from reefmap.geometry.grid import GeoBox, Shape
from reefmap.model.bundle import SPECS, read_spec
from reefmap.store.format import CLASS_NODATA, PROB_NODATA, UNFINISHED, TileState

torch = pytest.importorskip("torch")

BENTHIC = yaml.safe_load((SPECS / "allen-coral-atlas-benthic.yaml").read_text())
NAMES = ["Sand", "Rubble", "Rock", "Seagrass", "Coral/Algae", "Microalgal Mats", "Deep Water", "Land", "Cloud"]
CODES = [11, 12, 13, 14, 15, 18, 101, 102, 103]
ARCH = {"name": "tiny_unet", "in_channels": 4, "classes": 9, "base": 4, "levels": 2}
#: a deep-water colour box per band (raw uint16 values): the top-left corner of the mosaic lies inside it
DEEP_BOX = [[250.0, 400.0], [300.0, 400.0], [150.0, 250.0], [50.0, 150.0]]
TILE = 128


def benthic_spec(**over):
    # two reef classes, so that reef_probability and reef_area_km2 are shown to sum the bundle's reef classes
    return {**BENTHIC, "architecture": ARCH, "reef_classes": ["Coral/Algae", "Seagrass"],
            "screen": {"Deep Water": DEEP_BOX}, **over}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A tiny_unet state_dict with seeded random weights (4 bands in, 9 classes out) bundled with the benthic spec."""
    from reefmap.model.architectures import build_network
    from reefmap.model.artifacts import save_state_dict
    from reefmap.model.bundling import create_bundle

    d = tmp_path_factory.mktemp("benthic")
    torch.manual_seed(4)
    net = build_network(ARCH)
    with torch.no_grad():
        for p in net.parameters():
            p.uniform_(-0.4, 0.4)
    return create_bundle(save_state_dict(net.eval(), d / "weights.pt"), benthic_spec(), d / "bundle")


def uint16_mosaic(halo: int):
    """A 4-band uint16 surface-reflectance-like mosaic (x 10000) on a UTM grid: smooth structure, a deep-water
    corner (inside DEEP_BOX, as far as the top-left tile's halo reaches) and a nodata corner (0)."""
    rng = np.random.default_rng(7)
    ny, nx = 256, 384
    coarse = rng.uniform(0, 1, (4, ny // 32 + 1, nx // 32 + 1))
    smooth = np.kron(coarse, np.ones((32, 32)))[:, :ny, :nx]
    img = 100 + 1900 * (0.7 * smooth + 0.3 * rng.uniform(0, 1, (4, ny, nx)))
    deep = TILE + halo
    img[:, :deep, :deep] = np.array([320, 350, 200, 100])[:, None, None] + rng.integers(-5, 5, (4, deep, deep))
    img[:, 200:, 320:] = 0
    return img.astype(np.uint16), GeoBox(Shape(ny, nx), Affine(30.0, 0, 400000.0, 0, -30.0, 2600000.0), "EPSG:32617")


@pytest.fixture(scope="module")
def benthic_map(bundle, tmp_path_factory):
    from reefmap.sources import memory_reader
    from reefmap.sources.base import reader_to_dataarray

    arr, gb = uint16_mosaic(bundle.halo)
    reader = memory_reader(arr, gb, nodata=0, band_names=["blue", "green", "red", "nir"])
    mosaic = reader_to_dataarray(reader, chunks=TILE)
    out = tmp_path_factory.mktemp("map") / "benthic.zarr"
    summary = reefmap.run(mosaic, bundle.path, out, tile=TILE, client="inprocess", progress=False)
    yield str(out), summary, mosaic, arr, gb
    reader.release()


def stored(url):
    import zarr

    g = zarr.open_group(url, mode="r")
    return g["reef_probability"][:], g["classification"][:]


def test_a_benthic_map_end_to_end(bundle, benthic_map):
    url, summary, mosaic, arr, gb = benthic_map
    assert bundle.scheme == ClassScheme(tuple(CODES), tuple(NAMES), bundle.class_colors, ("Coral/Algae", "Seagrass"))
    assert summary.failed == 0 and summary.planned == 6

    # status: the deep-water corner was screened by the bundle's own class name, the nodata corner is not a tile
    st = reefmap.status(url)
    assert st["done"] + st["skipped"] == 6 and st["skipped_by_reason"]["deep_water"] == 1

    # the stored layer: the map's CF flags and colours are the bundle's classes
    import zarr

    attrs = dict(zarr.open_group(url, mode="r")["classification"].attrs)
    assert attrs["flag_values"] == [CLASS_NODATA, *CODES, UNFINISHED]
    assert attrs["flag_meanings"].split() == ["nodata", "Sand", "Rubble", "Rock", "Seagrass", "Coral_Algae",
                                              "Microalgal_Mats", "Deep_Water", "Land", "Cloud", "unfinished"]
    assert attrs["flag_colors"].split()[5] == "#ff6161"  # Coral/Algae, as the spec gives it
    prob, cls = stored(url)
    assert (cls[:TILE, :TILE] == 101).all()  # the screened tile is written as Deep Water
    present = set(np.unique(cls).tolist())
    assert present <= {CLASS_NODATA, *CODES} and len(present - {CLASS_NODATA, 101}) >= 3

    # the pixels: codes[argmax] of the network and the summed probability of the two reef classes, computed here on
    # the whole image with the bundle's scaling (the map's tiles are halo'd; halo >= radius makes them identical)
    from reefmap.compute import kernels
    from reefmap.model.segmenter import load_model

    x, valid = kernels.normalize(arr, bundle.kernel_scaling(), 0, bundle.valid_range)
    p = load_model(bundle.path, device="cpu").predict(x[None])[0]
    inferred = np.ones(cls.shape, bool)
    inferred[:TILE, :TILE] = False
    want_cls = np.where(valid, np.asarray(CODES, np.uint8)[p.argmax(0)], CLASS_NODATA)
    want_prob = np.where(valid, np.round((p[4] + p[3]) * 250), PROB_NODATA)
    assert (cls[inferred] == want_cls[inferred]).mean() > 0.999
    assert np.abs(prob[inferred].astype(int) - want_prob[inferred]).max() <= 1

    # query: the Dataset carries the scheme; segment() gives the same pixels with the same attributes
    ds = reefmap.query(url)
    np.testing.assert_array_equal(ds["classification"].values, cls)
    assert json.loads(ds["classification"].attrs["class_scheme"])["classes"][4] == \
        {"value": 15, "name": "Coral/Algae", "color": "ff6161"}
    seg = reefmap.segment(mosaic, bundle.path, tile=TILE)
    assert seg["classification"].attrs["class_scheme"] == ds["classification"].attrs["class_scheme"]
    np.testing.assert_array_equal(seg["classification"].values[inferred], cls[inferred])

    # stats: per class by the benthic names; reef area = the area of both reef classes' pixels
    s = reefmap.stats(url)
    assert list(s["class_area_km2"]) == ["nodata", *NAMES]
    area = np.broadcast_to(area_model(gb).block(slice(0, 256), slice(0, 384)), cls.shape)
    for name, code in zip(NAMES, CODES):
        assert s["class_area_km2"][name] == pytest.approx(area[cls == code].sum() * 1e-6, rel=1e-9), name
    assert s["reef_area_km2"] == pytest.approx(area[(cls == 15) | (cls == 14)].sum() * 1e-6, rel=1e-9)
    assert s["reef_area_km2"] > 0 and s["reef_classes"] == ["Coral/Algae", "Seagrass"]
    assert s["area_km2"] == pytest.approx(sum(s["class_area_km2"].values()), rel=1e-9)


def test_overviews_take_the_mode_over_the_maps_own_codes(benthic_map):
    from reefmap.products.overviews import build_overviews

    url = benthic_map[0]
    build_overviews(url, levels=1)
    _, cls = stored(url)
    want = np.zeros((128, 192), np.uint8)
    for i in range(128):
        for j in range(192):
            block = cls[2 * i:2 * i + 2, 2 * j:2 * j + 2].ravel()
            block = block[block != CLASS_NODATA]
            if block.size:
                codes, counts = np.unique(block, return_counts=True)  # sorted: argmax picks the lowest code of a tie
                want[i, j] = codes[counts.argmax()]
    level1 = reefmap.query(url, resolution=60.0)
    np.testing.assert_array_equal(level1["classification"].values, want)
    assert level1["classification"].attrs["class_scheme"] == reefmap.query(url)["classification"].attrs["class_scheme"]


def test_pictures_and_exports_name_the_benthic_classes(benthic_map, tmp_path):
    import rasterio
    from PIL import Image

    from reefmap.products.export import export
    from reefmap.viz.quicklook import quicklook_png

    url = benthic_map[0]
    ds = reefmap.query(url)
    pic = quicklook_png(tmp_path / "benthic.png", ds, title="benthic classes")
    img = np.asarray(Image.open(pic.path).convert("RGB")).astype(int)
    below = img[max(top + h for _, top, _, h in pic.map_boxes) + 30:]  # under the maps and their lon labels: the legend
    for name, color in zip(NAMES, BENTHIC["classes"]):
        rgb = np.array([int(color["color"][k:k + 2], 16) for k in (0, 2, 4)])
        assert (np.abs(below - rgb).max(-1) == 0).sum() > 50, name  # a legend swatch in the class's colour
    tif = export(ds, tmp_path / "classes.tif", layer="classification")
    with rasterio.open(tif) as src:
        tags, cmap = src.tags(), src.colormap(1)
    assert "15=Coral/Algae; 18=Microalgal Mats" in tags["ENCODING"] and tags["REEF_CLASSES"] == "Coral/Algae; Seagrass"
    assert cmap[15][:3] == (255, 97, 97) and cmap[101][:3] == (16, 40, 110)


def test_a_map_that_records_no_scheme_reads_as_the_demo_scheme(tmp_path):
    from map_fixtures import patterns, write_map

    from reefmap.products.mapview import inspect_map

    gb = GeoBox(Shape(8, 8), Affine(30.0, 0, 400000.0, 0, -30.0, 2600000.0), "EPSG:32617")
    prob, cls = patterns((8, 8))
    store, _ = write_map(tmp_path / "old.zarr", gb, 8, prob, cls, np.array([[TileState.DONE]], np.uint8))
    assert "classes" not in store.attrs  # as maps written before schemes were recorded
    assert inspect_map(store.url).scheme == DEMO_SCHEME == store.scheme
    assert list(reefmap.stats(store.url)["class_area_km2"]) == ["nodata", *DEMO_SCHEME.names]


def test_scheme_json_round_trip_and_reef_codes():
    s = ClassScheme.from_json(benthic_spec())
    assert ClassScheme.from_json(s.to_json()) == s
    assert s.reef_codes == (15, 14) and s.reef_channels == (4, 3)
    assert s.flag_words[5] == "Microalgal_Mats"


# --- bad input --------------------------------------------------------------------------------------------------
# Duplicate class codes and codes colliding with the map's reserved ones (nodata 0, unfinished 254, outside 255)
# are refused by test_bundle.py::test_a_spec_with_duplicate_or_reserved_class_codes_is_refused; a network whose
# output channels differ from the classes by test_bundle.py::test_output_channels_must_match_the_classes (.pt2).

def test_a_state_dict_with_another_number_of_outputs_than_classes_is_refused(tmp_path):
    from reefmap.model.architectures import build_network
    from reefmap.model.artifacts import save_state_dict
    from reefmap.model.bundling import create_bundle

    weights = save_state_dict(build_network({**ARCH, "classes": 5}), tmp_path / "five.pt")
    with pytest.raises(ModelError, match="returns 5 output channels but its bundle names 9 classes"):
        create_bundle(weights, benthic_spec(architecture={**ARCH, "classes": 5}), tmp_path / "b")
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("over, message", [
    ({"screen": {"Sand": DEEP_BOX}}, "only a class named deep_water or land can be screened"),
    ({"screen": {"Kelp": DEEP_BOX}}, "'screen' 'Kelp' must name a class of"),
    ({"classes": [*BENTHIC["classes"][:-1], {"value": 103, "name": "nodata"}]}, "class name 'nodata' is one the map reserves"),
    ({"classes": [*BENTHIC["classes"][:-1], {"value": 11, "name": "Cloud"}]}, r"class values \[11\] appear more than once"),
    ({"classes": [*BENTHIC["classes"][:-1], {"value": 0, "name": "Cloud"}]}, "class 'Cloud' has code 0, which the map reserves"),
])
def test_bad_class_specs_are_refused(over, message):
    with pytest.raises(InvalidParameter, match=message):
        read_spec(benthic_spec(**over))
