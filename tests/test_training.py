"""Config-driven training (reefmap.model.training): the config loader, regional split, balanced sampling, labels on
another grid, a real kill and resume, DDP with two CPU processes, and the bundle/log/curves it writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from reefmap.errors import InvalidParameter
from reefmap.geometry.grid import Window

REPO = Path(__file__).resolve().parents[1]
SPEC = {"name": "t", "bands": ["red", "green", "blue"], "reef_classes": ["reef"],
        "classes": [{"value": v, "name": n} for v, n in
                    ((1, "deep_water"), (2, "shallow"), (3, "reef"), (4, "land"), (5, "cloud"))]}


def config(**over) -> dict:
    """A tiny config on synthetic world 9 (256 px: reef, shallow, land, cloud, deep water)."""
    c = {"name": "tiny", "data": {"scenes": [{"synthetic": 9, "size": 256}]},
         "validation": {"blocks": {"size": 128, "fraction": 0.25}, "max_patches": 4},
         "sampling": {"patch": 32, "patches_per_epoch": 16, "batch": 8},
         "augmentation": {"brightness": 0.1, "contrast": 0.05},
         "model": {"spec": SPEC, "architecture": {"name": "tiny_unet", "base": 4, "levels": 2}},
         "optimisation": {"epochs": 2, "threads": 1, "lr": 0.01}}
    for k, v in over.items():
        c[k] = {**c[k], **v} if isinstance(v, dict) and isinstance(c.get(k), dict) else v
    return c


def test_a_config_typo_is_refused_with_the_known_keys(tmp_path, capsys):
    from reefmap.cli.main import main
    from reefmap.model.training_config import load_config

    with pytest.raises(InvalidParameter, match=r"unknown keys \['patchs'\]; known keys: \['patch', 'patches_per_epoch'"):
        load_config(config(sampling={"patchs": 32}))
    with pytest.raises(InvalidParameter, match=r"unknown keys \['optimiser'\].*'optimisation'"):
        load_config({**config(), "optimiser": {}})
    with pytest.raises(InvalidParameter, match="optimisation: lr must be a number, got .fast."):
        load_config(config(optimisation={"lr": "fast"}))
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(config(model={"architecture": {"name": "tiny_unet", "bse": 4}})))
    assert main(["train", str(p), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown parameters ['bse']" in err[0] and "'base'" in err[0]
    cfg = load_config(config())  # relative paths resolve from the YAML file's folder
    p.write_text(yaml.safe_dump({**config(), "out": "runs/x"}))
    assert load_config(p).out == str(tmp_path / "runs" / "x") and cfg.sampling.reef_share_bins[0] == 0.0


def test_the_split_is_by_region_and_sampling_balances_reef_share():
    from reefmap.model.training import draw_epoch, prepare
    from reefmap.model.training_config import load_config

    cfg = load_config(config(sampling={"patches_per_epoch": 400}))
    prep = prepare(cfg, log=lambda *_: None)
    val = [w for _, w in prep.val]
    assert val and all(not (t.intersect(v)) for _, t in prep.train for v in val)  # no training patch touches one
    idx, aug = draw_epoch(cfg, prep, epoch=0)
    bins = np.array(prep.bins)[idx]
    present = np.unique(prep.bins)
    counts = np.bincount(bins, minlength=present.max() + 1)[present]
    assert len(present) >= 3 and counts.min() > 0.6 * counts.max()  # drawn evenly, though candidates are not
    assert np.bincount(prep.bins)[present].max() > 3 * np.bincount(prep.bins)[present].min()
    assert set(np.unique(aug[:, 0])) == {0, 1, 2, 3} and set(np.unique(aug[:, 1])) == {0, 1}
    again, _ = draw_epoch(cfg, prep, epoch=0)
    other, _ = draw_epoch(cfg, prep, epoch=1)
    assert (again == idx).all() and not (other == idx).all()
    assert prep.spec["scaling"][0]["type"] == "z-score"  # measured: the spec gives none


def test_validation_boxes_outside_the_data_are_refused():
    from reefmap.model.training import prepare
    from reefmap.model.training_config import load_config

    cfg = load_config(config(validation={"blocks": None, "boxes": [[10.0, 10.0, 11.0, 11.0]]}))
    with pytest.raises(InvalidParameter, match=r"validation boxes \[\[10.0, 10.0, 11.0, 11.0\]\].*do not intersect the data"):
        prepare(cfg, log=lambda *_: None)


def write_scene(tmp_path, label_crs=None, recode=None, size=128):
    """A GeoTIFF image of synthetic world 9 (EPSG:32618) and its truth as a label raster: on the same grid, or
    reprojected nearest-neighbour into ``label_crs``; ``recode`` maps codes before writing."""
    import rasterio
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    from reefmap.synthetic.reader import SyntheticReader, synthetic_geobox
    from reefmap.synthetic.world import resolve_world

    g = synthetic_geobox(size)
    rgb, truth = SyntheticReader(g, resolve_world(9, None)).read_with_truth(Window(0, size, 0, size))
    for a, b in (recode or {}).items():
        truth[truth == a] = b
    prof = {"driver": "GTiff", "width": size, "height": size, "crs": g.crs, "transform": g.transform, "nodata": 0}
    with rasterio.open(tmp_path / "image.tif", "w", count=3, dtype="uint8", **prof) as f:
        f.write(rgb)
    lab, tr, crs = truth, g.transform, g.crs
    if label_crs:
        tr, w, h = calculate_default_transform(g.crs, label_crs, size, size, *g.bounds)
        lab = np.zeros((h, w), np.uint8)
        reproject(truth, lab, src_transform=g.transform, src_crs=g.crs, dst_transform=tr, dst_crs=label_crs,
                  resampling=Resampling.nearest, src_nodata=0, dst_nodata=0)
        crs = label_crs
    with rasterio.open(tmp_path / "labels.tif", "w", count=1, dtype="uint8", **{**prof, "crs": crs, "transform": tr,
                                                                               "width": lab.shape[1], "height": lab.shape[0]}) as f:
        f.write(lab[None])
    return truth


def mosaic_config(tmp_path):
    return config(data={"scenes": [{"image": str(tmp_path / "image.tif"), "label": str(tmp_path / "labels.tif")}]},
                  validation={"blocks": {"size": 64, "fraction": 0.25}})


def test_labels_on_another_grid_and_crs_are_reprojected_nearest(tmp_path):
    from reefmap.model.training import SceneData, prepare
    from reefmap.model.training_config import load_config

    truth = write_scene(tmp_path, label_crs="EPSG:4326")
    cfg = load_config(mosaic_config(tmp_path))
    sd = SceneData(cfg.data.scenes[0], 0)
    assert not sd.same_grid
    got = sd.labels(Window(0, 128, 0, 128))
    assert set(np.unique(got)) <= set(np.unique(truth)) | {0}  # nearest: only codes that exist, no blends
    inner = (slice(4, -4), slice(4, -4))
    assert (got[inner] == truth[inner]).mean() > 0.9
    prep = prepare(cfg, log=lambda *_: None)
    assert prep.provenance[0]["label_reprojected"] and prep.train


def test_labels_that_miss_the_image_are_refused_with_the_fix(tmp_path):
    import rasterio
    from affine import Affine

    from reefmap.model.training import SceneData
    from reefmap.model.training_config import load_config

    write_scene(tmp_path)
    with rasterio.open(tmp_path / "labels.tif", "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8",
                       crs="EPSG:4326", transform=Affine(0.01, 0, 100.0, 0, -0.01, 10.0), nodata=0) as f:
        f.write(np.full((1, 8, 8), 3, np.uint8))
    cfg = load_config(mosaic_config(tmp_path))
    with pytest.raises(InvalidParameter, match="does not overlap image .* give the labels of the same area"):
        SceneData(cfg.data.scenes[0], 0)


def test_label_codes_outside_the_class_scheme_are_listed(tmp_path):
    from reefmap.model.training import prepare
    from reefmap.model.training_config import load_config

    write_scene(tmp_path, recode={3: 7, 2: 9})
    with pytest.raises(InvalidParameter, match=r"label codes \[7, 9\] \(\d+ pixels\) are not in the class scheme "
                                               r"\(1=deep_water, 2=shallow, 3=reef, 4=land, 5=cloud\)"):
        prepare(load_config(mosaic_config(tmp_path)), log=lambda *_: None)


def test_training_writes_an_mlm_bundle_a_log_and_curves(tmp_path):
    import reefmap
    from reefmap.model.bundle import MLM_FORMAT, read_bundle

    meta = reefmap.train(config(), tmp_path / "run", log=lambda *_: None)
    out = tmp_path / "run"
    assert meta.format == MLM_FORMAT and read_bundle(out / "bundle").sha256 == meta.sha256
    t = meta.training
    assert t["config"]["sampling"]["patch"] == 32 and t["data"][0]["synthetic_world_seed"] == 9
    assert t["validation"]["split"] == "blocks" and 0 <= t["validation"]["reef_f1"] <= 1
    assert set(t["validation"]["per_class"]) == {"deep_water", "shallow", "reef", "land", "cloud"}
    assert meta.architecture == {"name": "tiny_unet", "base": 4, "levels": 2, "in_channels": 3, "classes": 5}
    assert meta.scaling[0]["type"] == "z-score" and meta.receptive_radius > 0
    logd = json.loads((out / "train-log.json").read_text())
    assert [r["epoch"] for r in logd["epochs"]] == [1, 2] and logd["epochs"][0]["patches_per_s"] > 0
    assert (out / "train-log.csv").read_text().splitlines()[0].startswith("epoch,loss,lr,val_reef_f1")
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    model = reefmap.load_model(out / "bundle")
    p = model.predict(np.zeros((1, 3, 32, 32), np.float32))
    assert p.shape == (1, 5, 32, 32) and np.allclose(p.sum(1), 1, atol=1e-5)
    again = reefmap.train(config(), out, log=lambda *_: None)  # a finished run is not trained again
    assert again.sha256 == meta.sha256


def test_the_confusion_metrics_leave_an_empty_class_undefined():
    from reefmap.model.training import confusion_metrics

    cm = np.array([[5, 1, 0], [2, 8, 0], [0, 0, 0]])  # class c: no truth, never predicted
    m = confusion_metrics(cm, ["a", "reef", "c"], [False, True, False])
    assert m["per_class"]["c"]["f1"] is None and m["per_class"]["c"]["iou"] is None
    assert m["reef_f1"] == pytest.approx(16 / 19) and m["accuracy"] == pytest.approx(13 / 16)


KILL_SCRIPT = """
import sys
from reefmap.model.training import train
train({config}, sys.argv[1], log=lambda *_: None)
"""


def test_a_killed_run_resumes_to_the_same_weights(tmp_path):
    """SIGKILL after the first checkpoint, resume, and compare with an uninterrupted run, tensor for tensor."""
    import torch

    from reefmap.model.training import weights_of

    cfg = config(optimisation={"epochs": 4, "threads": 1, "lr": 0.01, "schedule": "step", "step_epochs": 1,
                               "gamma": 0.5}, sampling={"patches_per_epoch": 48})
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT.format(config=repr(cfg)))
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(script), str(killed)], env=env)
    try:
        deadline = time.time() + 120
        while not (killed / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    ck = torch.load(killed / "checkpoint.pt", weights_only=False)
    assert proc.returncode == -signal.SIGKILL and 1 <= ck["state"]["epoch"] < 4 and not (killed / "bundle").exists()
    from reefmap.model.training import train

    resumed = train(cfg, killed, log=lambda *_: None)
    whole = train(cfg, tmp_path / "whole", log=lambda *_: None)
    a, b = weights_of(killed), weights_of(tmp_path / "whole")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la, lb = (json.loads((p / "train-log.json").read_text()) for p in (killed, tmp_path / "whole"))
    assert la["summary"]["final_weights_sha256"] == lb["summary"]["final_weights_sha256"]
    assert [r["loss"] for r in la["epochs"]] == [r["loss"] for r in lb["epochs"]] and len(la["epochs"]) == 4
    assert resumed.training["validation"] == whole.training["validation"]


def test_ddp_with_two_cpu_processes_trains_and_the_ranks_agree(tmp_path):
    from reefmap.model.training import train

    meta = train(config(optimisation={"epochs": 1, "threads": 1}), tmp_path / "ddp", nproc=2, log=lambda *_: None)
    s = json.loads((tmp_path / "ddp" / "train-log.json").read_text())["summary"]
    assert s["processes"] == 2 and len(s["final_weights_sha256_by_rank"]) == 2
    assert len(set(s["final_weights_sha256_by_rank"])) == 1
    assert meta.training["processes"] == 2 and (tmp_path / "ddp" / "bundle" / "model.pt").is_file()
    with pytest.raises(InvalidParameter, match="batch 8 must be a multiple of nproc 3"):
        train(config(), tmp_path / "x", nproc=3)


def test_early_stopping_on_the_validation_metric_and_the_patch_multiple(tmp_path):
    from reefmap.model.training import train

    cfg = config(optimisation={"epochs": 5, "patience": 1, "lr": 1e-12, "threads": 1},
                 sampling={"patches_per_epoch": 8})  # no learning: the metric never improves after epoch 1
    meta = train(cfg, tmp_path / "es", log=lambda *_: None)
    s = json.loads((tmp_path / "es" / "train-log.json").read_text())["summary"]
    assert s["epochs_run"] == 2 and s["stopped_early"] and s["best_epoch"] == 1
    assert meta.training["validation"]["best_epoch"] == 1
    with pytest.raises(InvalidParameter, match="patch 34 px is not a multiple of 4, .* use 36"):
        train(config(sampling={"patch": 34}), tmp_path / "x")


def write_label_polygons(tmp_path, truth, crs=None) -> Path:
    """The truth of ``write_scene`` as class polygons (GeoJSON, property ``cls``: class names, codes for land),
    in the image CRS (a legacy ``crs`` member) or reprojected to ``crs``; deep water (1) and nodata (0) are left
    unlabelled."""
    import shapely
    from rasterio import features

    from reefmap.geometry.vector import to_crs
    from reefmap.synthetic.reader import synthetic_geobox

    g = synthetic_geobox(truth.shape[0])
    names = {2: "shallow", 3: "REEF", 4: 4, 5: "cloud"}
    feats = [(shapely.geometry.shape(s), names[int(v)]) for s, v in
             features.shapes(truth, mask=truth > 1, transform=g.transform)]
    geoms = to_crs([f for f, _ in feats], g.crs, crs or g.crs)
    doc = {"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": shapely.geometry.mapping(s),
                                                      "properties": {"cls": v}} for s, (_, v) in zip(geoms, feats)]}
    if crs is None:
        doc["crs"] = {"type": "name", "properties": {"name": g.crs}}
    path = tmp_path / "labels.geojson"
    path.write_text(json.dumps(doc))
    return path


def test_training_from_label_polygons_rasterised_onto_the_image_grid(tmp_path):
    from reefmap.errors import TruthError
    from reefmap.model.training import SceneData, train
    from reefmap.model.training_config import load_config

    truth = write_scene(tmp_path)
    path = write_label_polygons(tmp_path, truth)
    cfg = config(data={"scenes": [{"image": str(tmp_path / "image.tif"), "label": str(path), "label_attribute": "cls"}]},
                 validation={"blocks": {"size": 64, "fraction": 0.25}}, optimisation={"epochs": 1, "threads": 1})
    meta = train(cfg, tmp_path / "run", log=lambda *_: None)
    assert meta.training["data"][0]["label_rasterised"] and meta.training["validation"]["patches"] > 0
    assert meta.training["class_counts"]["deep_water"] == 0  # unlabelled: nodata, not a class
    from reefmap.classes import ClassScheme
    from reefmap.model.bundle import read_spec

    scheme = ClassScheme.from_json(read_spec(SPEC))
    sd = SceneData(load_config(cfg).data.scenes[0], 0, scheme)
    got = sd.labels(Window(0, 128, 0, 128))
    assert (got == np.where(truth <= 1, 255, truth)).all()  # exact in the image CRS
    lonlat = write_label_polygons(tmp_path, truth, crs="EPSG:4326")
    sd = SceneData(load_config({**cfg, "data": {"scenes": [{"image": str(tmp_path / "image.tif"), "label": str(lonlat),
                                                             "label_attribute": "cls"}]}}).data.scenes[0], 0, scheme)
    assert (sd.labels(Window(0, 128, 0, 128)) == np.where(truth <= 1, 255, truth)).mean() > 0.99
    bad = json.loads(path.read_text())
    bad["features"][0]["properties"]["cls"] = "seagrass"
    path.write_text(json.dumps(bad))
    with pytest.raises(TruthError, match=r"label .*class values \['seagrass'\] of attribute 'cls' are not in the class"):
        SceneData(load_config(cfg).data.scenes[0], 0, scheme)
