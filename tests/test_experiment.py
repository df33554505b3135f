"""reefmap experiment: a 2-member grid trained, validated (mapped over its held-out regions, scored by calval) and
compared; a re-run skips finished members; members on a 2-worker LocalCluster give the in-process metrics; typos."""

from __future__ import annotations

import json

import pytest
import yaml

from reefmap.errors import InvalidParameter

SPEC = {"name": "t", "bands": ["red", "green", "blue"], "reef_classes": ["reef"],
        "classes": [{"value": v, "name": n, "color": c} for v, n, c in
                    ((1, "deep_water", "10286e"), (2, "shallow", "78c8d2"), (3, "reef", "ff503c"),
                     (4, "land", "967846"), (5, "cloud", "ebebeb"))]}
BASE = {"name": "tiny", "data": {"scenes": [{"synthetic": 9, "size": 256}]},
        "validation": {"blocks": {"size": 128, "fraction": 0.25}, "max_patches": 4},
        "sampling": {"patch": 32, "patches_per_epoch": 16, "batch": 8},
        "model": {"spec": SPEC, "architecture": {"name": "tiny_unet", "base": 4, "levels": 2}},
        "optimisation": {"epochs": 1, "threads": 1, "lr": 0.01}}


def experiment_config(tmp_path, **over) -> dict:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    return {"name": "sweep", "base": str(tmp_path / "base.yaml"), "tile": 128, "pictures": False,
            "grid": {"model.architecture.base": [4, 8]}, **over}


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    from reefmap.execute.experiment import experiment

    tmp = tmp_path_factory.mktemp("exp")
    cfg = experiment_config(tmp, pictures=True)
    lines = []
    s = experiment(cfg, tmp / "out", client="inprocess", log=lines.append)
    return tmp, cfg, s, lines


def test_a_grid_trains_validates_and_compares_its_members(done):
    tmp, _, s, _ = done
    out = tmp / "out"
    assert set(s["members"]) == {"base=4", "base=8"} and all(m["status"] == "trained" for m in s["members"].values())
    assert s["members"]["base=8"]["overrides"] == {"model.architecture.base": 8}
    rep = json.loads((out / "comparison" / "report.json").read_text())
    assert [r["product"] for r in rep["ranking"]] and {r["product"] for r in rep["ranking"]} == set(s["members"])
    for name, m in s["members"].items():
        own = json.loads((out / "members" / name / "validation" / "report.json").read_text())
        assert m["metrics"]["reef_f1"] == own["all_regions"][name]["reef"]["f1"]  # the member's own validation
        assert m["metrics"]["reef_f1"] == rep["all_regions"][name]["reef"]["f1"]  # = its column in the comparison
        assert m["metrics"]["ece"] is not None and (out / "members" / name / "train" / "bundle" / "item.json").is_file()
    assert len(rep["regions"]) == 1 and rep["regions"][0]["name"].startswith("scene1/rows")
    px = rep["regions"][0]["products"]["base=4"]["pixels"]
    assert px["region"] == 128 * 128 and px["unfinished"] == px["product_nodata"] == 0  # the held-out block, mapped
    md = (out / "comparison" / "report.md").read_text()
    assert "| 1 | base=" in md and (out / "comparison" / "regions.png").is_file()
    assert json.loads((out / "experiment.json").read_text())["ranking"] == s["ranking"]


def test_a_rerun_skips_finished_members(done):
    from reefmap.execute.experiment import experiment

    tmp, cfg, s, _ = done
    bundles = {n: (tmp / "out" / "members" / n / "train" / "model.pt").stat().st_mtime_ns for n in s["members"]}
    lines = []
    again = experiment(cfg, tmp / "out", client="inprocess", log=lines.append)
    assert all(m["status"] == "skipped" for m in again["members"].values())
    assert sum("skipped" in line for line in lines) == 2 and not any("to train" in line for line in lines)
    assert {n: (tmp / "out" / "members" / n / "train" / "model.pt").stat().st_mtime_ns for n in s["members"]} == bundles
    assert {n: m["metrics"] for n, m in again["members"].items()} == {n: m["metrics"] for n, m in s["members"].items()}
    changed = {**cfg, "base": {**BASE, "optimisation": {**BASE["optimisation"], "lr": 0.02}}}
    with pytest.raises(InvalidParameter, match="holds member 'base=4' of another config"):
        experiment(changed, tmp / "out", client="inprocess", log=lines.append)


def test_members_on_a_two_worker_local_cluster_match_in_process(done, tmp_path):
    from reefmap.execute.experiment import experiment

    _, cfg, s, _ = done
    par = experiment(cfg, tmp_path / "par", client="local", workers=2, log=lambda *_: None)
    assert all(m["status"] == "trained" for m in par["members"].values())
    assert {n: m["metrics"] for n, m in par["members"].items()} == {n: m["metrics"] for n, m in s["members"].items()}
    sha = [{n: json.loads((root / "members" / n / "member.json").read_text())["bundle_sha256"] for n in par["members"]}
           for root in (tmp_path / "par", done[0] / "out")]
    assert sha[0] == sha[1] and len(set(sha[0].values())) == 2  # the same weights as in-process, and two models


def test_config_typos_are_refused_with_the_known_keys(tmp_path, capsys):
    from reefmap.cli.main import main
    from reefmap.execute.experiment import load_experiment

    with pytest.raises(InvalidParameter, match=r"unknown keys \['grd'\]; known keys: \['name', 'base', 'grid'"):
        load_experiment({**experiment_config(tmp_path), "grd": {}})
    bad = experiment_config(tmp_path, grid={"optimisation.sed": [0, 1], "sampling.patchs": [32], "sampling.batch": [8]})
    with pytest.raises(InvalidParameter, match=r"unknown keys \['optimisation.sed', 'sampling.patchs'\]; known dotted "
                                               r"keys.*'data.scenes', .*'model.architecture.\*'.*'optimisation.seed'"):
        load_experiment(bad)
    with pytest.raises(InvalidParameter, match="give either grid"):
        load_experiment({**experiment_config(tmp_path), "members": [{"name": "a"}]})
    with pytest.raises(InvalidParameter, match=r"architecture tiny_unet has unknown parameters \['bse'\]"):
        load_experiment(experiment_config(tmp_path, grid={"model.architecture.bse": [4]}))
    p = tmp_path / "exp.yaml"
    p.write_text(yaml.safe_dump(bad))
    assert main(["experiment", str(p), "--client", "inprocess"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("reefmap: error:") and "optimisation.sed" in err[0]
    members = load_experiment(experiment_config(tmp_path, grid=None, members=[
        {"name": "small", "overrides": {"model.architecture.base": 4}}, {"name": "seed1", "overrides": {"optimisation.seed": 1}}]))
    assert [m.name for m in members.members] == ["small", "seed1"] and members.members[1].config.optimisation.seed == 1
    assert members.members[0].config.data.scenes[0].synthetic == 9 and members.members[0].config_hash != members.members[1].config_hash


def test_calval_bundle_maps_the_held_out_regions_first(done, tmp_path, capsys):
    from reefmap.cli.main import main

    tmp, _, s, _ = done
    member = s["members"]["base=8"]
    assert main(["calval", "--bundle", member["bundle"], "--out", str(tmp_path / "rep"), "--tile", "128",
                 "--no-pictures"]) == 0
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    (name,) = rep["all_regions"]
    assert rep["all_regions"][name]["reef"]["f1"] == member["metrics"]["reef_f1"]  # the experiment's validation
    assert rep["all_regions"][name]["calibration"]["ece"] == member["metrics"]["ece"]
    assert (tmp_path / "rep" / "maps" / "map-1.zarr").is_dir() and "1. " in capsys.readouterr().out
    assert main(["calval", "--bundle", member["bundle"], "--map", "x.zarr", "--out", str(tmp_path / "r2")]) == 2
    assert main(["calval", "--out", str(tmp_path / "r3")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "give either --bundle" in err[0] and "or --bundle DIR" in err[1]
