"""Experiments (``reefmap experiment CONFIG.yaml``, ``reefmap.experiment(config)``): many models from one base
training config, each trained, validated and compared in one report.

An experiment config names a ``base`` training config (the ``reefmap train`` YAML, a path or inline) and its
variations: a ``grid`` (``{dotted.key: [values]}``, the cartesian product) or ``members`` (``[{name, overrides:
{dotted.key: value}}]``). Each member (``out/members/NAME/``):

1. trains (``reefmap.model.training.train`` into ``train/``; a killed member resumes from its checkpoint);
2. maps its bundle over the validation regions of its training data (``reefmap.run(..., client="inprocess")``,
   one map per scene, ``map-<k>.zarr``; see :func:`validate_bundle`);
3. is scored there against the truth (the synthetic world's, or the scene's label raster or polygons) by calval
   (``validation/report.json``); ``member.json`` records its config hash, bundle and metrics.

A member whose ``member.json`` has the same config hash and metrics, with its bundle and report on disk, is
skipped. Members run in parallel on the dask cluster, one member per worker (``client`` as in ``reefmap.run``:
``"inprocess"``, a profile such as ``"local"``, an address or a ``distributed.Client``). The experiment ends with
calval's comparison report over all members (``out/comparison/``: ranked table, plots) and ``out/experiment.json``
(member name → overrides, bundle, metrics; the ranking).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import logging
import os
import re
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reefmap.config import load_yaml, resolve_path
from reefmap.errors import InvalidParameter
from reefmap.model.training_config import TrainingConfig, build, resolve_paths

log = logging.getLogger("reefmap.execute")

MEMBER_FILE = "member.json"
EXPERIMENT_FILE = "experiment.json"
KNOWN_KEYS = ("name", "base", "grid", "members", "out", "rank_by", "tile", "pictures")


# --- the config ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Member:
    """One model of an experiment: its name, its overrides of the base config and the resulting training config."""

    name: str
    overrides: dict
    config: TrainingConfig

    @property
    def config_hash(self) -> str:
        return self.config.identity()


@dataclass(frozen=True)
class ExperimentConfig:
    name: str
    members: tuple[Member, ...]
    out: str | None = None
    rank_by: str = "reef.f1"
    tile: int = 1024  #: tile of the validation maps (px)
    pictures: bool = True  #: PNGs in the comparison report


def dotted_keys(cls=TrainingConfig, prefix: str = "") -> list[str]:
    """The dotted keys a variation may set (``sampling.patch``, ...; not ``name`` and ``out``, which the
    experiment sets); a mapping-valued key ends in ``.*`` (any parameter below it); a list (``data.scenes``) is
    replaced whole."""
    out = []
    for f in dataclasses.fields(cls):
        if cls is TrainingConfig and f.name in ("name", "out"):
            continue
        hint = typing.get_type_hints(cls)[f.name]
        inner = [a for a in (typing.get_args(hint) or (hint,)) if a is not type(None)]
        sub = next((a for a in inner if dataclasses.is_dataclass(a)), None)
        if sub is not None and typing.get_origin(hint) is not tuple:
            out += dotted_keys(sub, f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}" + (".*" if dict in inner else ""))
    return out


def check_dotted(keys, where: str) -> None:
    """Refuse (one error, listing the known keys) dotted keys that name nothing in a training config."""
    known = dotted_keys()
    exact = {k for k in known if not k.endswith(".*")}
    open_ = [k[:-2] for k in known if k.endswith(".*")]
    unknown = [k for k in keys if k not in exact and k not in open_ and not any(k.startswith(o + ".") for o in open_)
               and not any(e.startswith(k + ".") for e in exact)]  # a whole section (validation.blocks) is fine
    if unknown:
        raise InvalidParameter(f"{where} has unknown keys {unknown}; known dotted keys of the training config: "
                               f"{known} (a key ending in .* takes any parameter below it, e.g. model.architecture.base)")


def set_dotted(d: dict, key: str, value) -> None:
    *path, last = key.split(".")
    for part in path:
        if not isinstance(d.get(part), dict):
            d[part] = {}
        d = d[part]
    d[last] = value


def slug(text: str) -> str:
    return re.sub(r"[^\w.=,+-]+", "_", text).strip("_") or "member"


def load_experiment(config) -> ExperimentConfig:
    """An ``ExperimentConfig`` from a YAML path, a dict or itself; relative paths (base, out and the base's own)
    are taken from the YAML file's folder (the base YAML's folder for the base's paths)."""
    if isinstance(config, ExperimentConfig):
        return config
    where = Path.cwd()
    if not isinstance(config, dict):
        config, where = load_yaml(config, f"an experiment config ({', '.join(KNOWN_KEYS)})")
    unknown = sorted(set(config) - set(KNOWN_KEYS))
    if unknown:
        raise InvalidParameter(f"the experiment config has unknown keys {unknown}; known keys: {list(KNOWN_KEYS)}")
    base, base_dir = config.get("base"), where
    if isinstance(base, (str, os.PathLike)):
        base, base_dir = load_yaml(resolve_path(base, where), "the experiment's base training config")
    if not isinstance(base, dict):
        raise InvalidParameter("experiment: base must be a training config (a YAML path or a mapping of its "
                               f"sections), got {base!r}")
    variations = variations_of(config)
    check_dotted(sorted({k for _, o in variations for k in o}), "the experiment's variations")
    base_name = str(config.get("name") or base.get("name") or "experiment")
    members = []
    for name, overrides in variations:
        d = copy.deepcopy(base)
        for k, v in overrides.items():
            set_dotted(d, k, v)
        d["name"], d["out"] = f"{base_name}-{slug(name)}", None
        cfg = resolve_paths(build(TrainingConfig, d, f"experiment member {name!r}"), base_dir)
        members.append(Member(name, overrides, cfg))
    out = config.get("out")
    if out is not None and not Path(out).is_absolute() and "://" not in str(out):
        out = os.path.normpath(where / out)
    kw = {k: config[k] for k in ("rank_by", "tile", "pictures") if config.get(k) is not None}
    if not isinstance(kw.get("tile", 1), int) or kw.get("tile", 1) <= 0:
        raise InvalidParameter(f"experiment tile {kw['tile']!r} must be a whole number of pixels > 0")
    return ExperimentConfig(base_name, tuple(members), out, **kw)


def variations_of(config: dict) -> list[tuple[str, dict]]:
    """(name, overrides) of each member: the grid's cartesian product, or the explicit members."""
    grid, listed = config.get("grid"), config.get("members")
    if (grid is None) == (listed is None):
        raise InvalidParameter("experiment: give either grid: {dotted.key: [values, ...]} or members: "
                               "[{name, overrides: {dotted.key: value}}, ...]")
    if grid is not None:
        if not isinstance(grid, dict) or not grid or not all(isinstance(v, list) and v for v in grid.values()):
            raise InvalidParameter(f"experiment grid must map dotted keys to non-empty lists of values, got {grid!r}")
        keys = list(grid)
        short = [k.split(".")[-1] for k in keys]
        labels = short if len(set(short)) == len(short) else keys
        return [(",".join(f"{lab}={json.dumps(v, separators=(',', ':')) if isinstance(v, (list, dict)) else v}" for lab, v in zip(labels, combo)),
                 dict(zip(keys, combo))) for combo in itertools.product(*grid.values())]
    if not isinstance(listed, list) or not listed:
        raise InvalidParameter(f"experiment members must be a non-empty list of {{name, overrides}}, got {listed!r}")
    out = []
    for i, m in enumerate(listed):
        if not isinstance(m, dict) or set(m) - {"name", "overrides"} or not isinstance(m.get("overrides", {}), dict):
            raise InvalidParameter(f"experiment member {i + 1} must be {{name, overrides: {{dotted.key: value}}}}, "
                                   f"got {m!r}")
        out.append((str(m.get("name", f"member{i + 1}")), dict(m.get("overrides") or {})))
    names = [n for n, _ in out]
    if len({slug(n) for n in names}) != len(names):
        raise InvalidParameter(f"experiment member names {names} repeat: give each member its own name")
    return out


# --- one member -------------------------------------------------------------------------------------------------

def member_dir(out: Path, member: Member) -> Path:
    return out / "members" / slug(member.name)


def finished(out: Path, member: Member) -> dict | None:
    """The member's record when it is finished with this config (bundle and validation report on disk)."""
    from reefmap.model.bundle import ITEM_FILE
    from reefmap.model.training import BUNDLE_DIR

    d = member_dir(out, member)
    try:
        rec = json.loads((d / MEMBER_FILE).read_text())
    except (OSError, ValueError):
        return None
    if rec.get("config_hash") != member.config_hash:
        raise InvalidParameter(f"{d} holds member {member.name!r} of another config (its hash {rec.get('config_hash')!r}"
                               f" is not {member.config_hash!r}): give the experiment a new out, or delete {d}")
    ok = rec.get("metrics") is not None and (d / "train" / BUNDLE_DIR / ITEM_FILE).is_file() \
        and (d / "validation" / "report.json").is_file()
    return rec if ok else None


def validation_sites(cfg: TrainingConfig, bundle, folder: Path, name: str, *, tile: int = 1024,
                     map_it: bool = True, progress: bool = False) -> list:
    """Map ``bundle`` over the validation regions of ``cfg``'s training data (in this process: one map per
    scene, ``folder/map-<k>.zarr``, only the tiles touching the regions; ``map_it=False``: the maps are there)
    and return the calval ``Site``s: each
    scene's map (as product ``name``), its truth (the synthetic world's, or the scene's label raster or polygons)
    and its validation windows as lon/lat polygon regions (pixel centres inside: the windows' pixels)."""
    import shapely

    from reefmap.execute.runner import run
    from reefmap.geometry.grid import Window
    from reefmap.geometry.vector import LONLAT, to_crs
    from reefmap.model.bundle import read_bundle
    from reefmap.model.training import SceneData, validation_regions
    from reefmap.products.calval import Region, Site, Truth

    meta = read_bundle(bundle)
    scenes = [SceneData(s, i, meta.scheme) for i, s in enumerate(cfg.data.scenes)]
    sites = []
    for sd, wins in zip(scenes, validation_regions(cfg, scenes)):
        gb = sd.geobox
        union = Window(min(w.row_start for w in wins), max(w.row_stop for w in wins),
                       min(w.col_start for w in wins), max(w.col_stop for w in wins))
        store = folder / f"map-{sd.index + 1}.zarr"
        if map_it:
            run(sd.image, meta.path, str(store), bbox=gb.window(union).bounds, bbox_crs=gb.crs, tile=tile,
                client="inprocess", progress=progress)
        regions = []
        for w in wins:
            box = shapely.segmentize(shapely.box(*gb.window(w).bounds), abs(gb.transform.a))
            regions.append(Region(f"rows{w.row_start}-{w.row_stop},cols{w.col_start}-{w.col_stop}",
                                  geometry=to_crs([box], gb.crs, LONLAT)[0]))
        s = sd.scene
        if s.synthetic is not None:
            from reefmap.synthetic.reader import synthetic_truth

            truth = Truth(synthetic_truth(geobox=gb, world=sd.image.world), nodata=sd.label_nodata)
        else:
            truth = Truth(s.label, s.label_attribute, sd.label_nodata)
        sites.append(Site(f"scene{sd.index + 1}", {name: str(store)}, truth, tuple(regions)))
    return sites


def validate_bundle(bundle, out_dir, *, tile: int = 1024, rank_by: str = "reef.f1", pictures: bool = True) -> dict:
    """``reefmap calval --bundle``: validate a bundle trained by reefmap on the held-out regions of its own training
    data (the training config it records), mapping them first into ``out_dir/maps/`` (the experiment's member
    validation); returns calval's report, written into ``out_dir``."""
    from reefmap.model.bundle import read_bundle
    from reefmap.model.training_config import load_config
    from reefmap.products.calval import calval_sites

    meta = read_bundle(bundle)
    recorded = (meta.training or {}).get("config")
    if not isinstance(recorded, dict):
        raise InvalidParameter(f"bundle {str(meta.path)!r} records no training config (it was not trained by reefmap "
                               "train): map it with reefmap run, then give calval --map STORE --truth PATH")
    cfg = load_config(recorded)
    maps = Path(out_dir) / "maps"
    maps.mkdir(parents=True, exist_ok=True)
    sites = validation_sites(cfg, meta.path, maps, meta.name, tile=tile)
    return calval_sites(sites, out_dir, rank_by=rank_by, pictures=pictures)


def run_member(member: Member, out: str, tile: int = 1024, rank_by: str = "reef.f1") -> dict:
    """Train, map and validate one member into ``out/members/NAME`` (resuming what is there); returns its record
    (also written to ``member.json``). Runs where it is called: in this process or on a dask worker."""
    from reefmap.model.training import BUNDLE_DIR, train
    from reefmap.products.calval import calval_sites

    d = member_dir(Path(out), member)
    d.mkdir(parents=True, exist_ok=True)
    rec = {"name": member.name, "overrides": member.overrides, "config_hash": member.config_hash,
           "bundle": str(d / "train" / BUNDLE_DIR), "metrics": None}
    (d / MEMBER_FILE).write_text(json.dumps(rec, indent=1) + "\n")
    lines = open(d / "member.log", "a")
    try:
        def say(*a):
            print(*a, file=lines, flush=True)

        t0 = time.perf_counter()
        meta = train(member.config, d / "train", log=say)
        t1 = time.perf_counter()
        sites = validation_sites(member.config, meta.path, d, member.name, tile=tile)
        report = calval_sites(sites, d / "validation", rank_by=rank_by, pictures=False)
        t2 = time.perf_counter()
    finally:
        lines.close()
    m = report["all_regions"][member.name]
    rec.update(bundle=str(meta.path), bundle_sha256=meta.sha256, metrics=summary_metrics(m),
               training_validation=meta.training.get("validation", {}).get("reef_f1"),
               seconds={"train": round(t1 - t0, 2), "validate": round(t2 - t1, 2)},
               sites=[{"name": s.name, "map": next(iter(s.maps.values())), "regions": [r.name for r in s.regions]}
                      for s in sites])
    (d / MEMBER_FILE).write_text(json.dumps(rec, indent=1) + "\n")
    return rec


def summary_metrics(m: dict) -> dict:
    """The headline numbers of a member (calval's pooled metrics over its validation regions)."""
    r = m["reef"]
    return {"reef_f1": r["f1"], "reef_precision": r["precision"], "reef_recall": r["recall"], "reef_iou": r["iou"],
            "area_weighted_f": r["area_weighted_f"], "overall_accuracy": m["overall_accuracy"],
            "macro_f1": m["macro_f1"], "ece": (m["calibration"] or {}).get("ece"),
            "per_class_f1": {k: v["f1"] for k, v in m["per_class"].items()}, "evaluated_pixels": m["pixels"].get("evaluated")}


# --- the experiment -----------------------------------------------------------------------------------------------

def experiment(config, out=None, *, client: Any = None, workers: int | None = None, log=print) -> dict:
    """Run an experiment (a YAML path, a dict or an ``ExperimentConfig``) into ``out`` (default: the config's
    ``out``, else ``<name>-experiment``): train and validate the members not finished yet (in parallel, one per
    dask worker; ``client`` as in ``reefmap.run``: None launches the ``local`` profile with ``workers`` workers,
    ``"inprocess"`` runs them one after the other here), then write the comparison report (``out/comparison/``)
    and ``out/experiment.json``. Returns the experiment.json content; each member's ``status`` says whether it
    was ``trained`` in this call or ``skipped`` (finished before)."""
    from reefmap.products.calval import Site, calval_sites

    cfg = load_experiment(config)
    out = Path(out or cfg.out or f"{cfg.name}-experiment")
    out.mkdir(parents=True, exist_ok=True)
    records, todo = {}, []
    for m in cfg.members:
        rec = finished(out, m)
        if rec is not None:
            records[m.name] = {**rec, "status": "skipped"}
            log(f"member {m.name}: finished before (reef F1 {fmt(rec['metrics']['reef_f1'])}), skipped")
        else:
            todo.append(m)
    if todo:
        log(f"{len(todo)} of {len(cfg.members)} members to train and validate")
        for rec in run_members(todo, str(out), cfg, client, workers):
            records[rec["name"]] = {**rec, "status": "trained"}
            log(f"member {rec['name']}: reef F1 {fmt(rec['metrics']['reef_f1'])} (train {rec['seconds']['train']} s, "
                f"validate {rec['seconds']['validate']} s)")
    sites: dict[tuple, Site] = {}  # per scene and held-out split; the members validated there share it
    for m in cfg.members:
        for site in validation_sites(m.config, records[m.name]["bundle"], member_dir(out, m), m.name, map_it=False):
            key = (site.name, tuple(r.name for r in site.regions))
            if key in sites:
                sites[key].maps[m.name] = site.maps[m.name]
            else:
                sites[key] = site
    splits = {}
    for scene, _ in sites:
        splits[scene] = splits.get(scene, 0) + 1
    listed = [site if splits[scene] == 1 else dataclasses.replace(site, name=f"{scene}.split{k + 1}")
              for k, ((scene, _), site) in enumerate(sites.items())]
    report = calval_sites(listed, out / "comparison", rank_by=cfg.rank_by, pictures=cfg.pictures)
    summary = {"name": cfg.name, "out": str(out), "rank_by": cfg.rank_by, "ranking": report["ranking"],
               "comparison": str(out / "comparison" / "report.md"),
               "members": {n: {k: records[n][k] for k in ("status", "overrides", "config_hash", "bundle", "metrics",
                                                           "training_validation")} for n in records}}
    (out / EXPERIMENT_FILE).write_text(json.dumps(summary, indent=1) + "\n")
    log(f"wrote {out / EXPERIMENT_FILE} and the comparison report {out / 'comparison' / 'report.md'}")
    return summary


def run_members(members: list[Member], out: str, cfg: ExperimentConfig, client: Any, workers: int | None) -> list[dict]:
    """``run_member`` for each member: here one after the other (``client="inprocess"``), or on the dask cluster
    with one member per worker (a member is submitted to a worker only when it has none running)."""
    from reefmap.execute.executors import Distributed, open_executor

    if client is None and workers is None:
        workers = min(len(members), os.cpu_count() or 1)
    with open_executor(client, jobs=workers) as ex:
        if not isinstance(ex, Distributed):
            return [run_member(m, out, cfg.tile, cfg.rank_by) for m in members]
        from distributed import wait

        from reefmap.cluster.local import connected_workers

        free, pending, running, done = list(connected_workers(ex.client)), list(members), {}, []
        if not free:
            ex.client.wait_for_workers(1)
            free = list(connected_workers(ex.client))
        while pending or running:
            while pending and free:
                m, w = pending.pop(0), free.pop(0)
                f = ex.client.submit(run_member, m, out, cfg.tile, cfg.rank_by, workers=[w], allow_other_workers=False,
                                     pure=False, key=f"experiment-{cfg.name}-{slug(m.name)}")
                running[f] = w
            finished_now = wait(list(running), return_when="FIRST_COMPLETED").done
            for f in finished_now:
                free.append(running.pop(f))
                done.append(f.result())
        return done


def fmt(v) -> str:
    return "undefined" if v is None else f"{v:.3f}"


__all__ = ["ExperimentConfig", "Member", "experiment", "load_experiment", "run_member", "validate_bundle",
           "validation_sites"]
