"""Global batch runs: plan the globe with a candidate mask, stream the unfinished tiles to a cluster, stop cleanly.

``plan_global(cfg)`` is metadata only (a tile-resolution mask; no store, no mosaic, no torch).
``run_batch(cfg, stop=...)`` is one batch job::

    plan_global → open the mosaic (real, or the lazy synthetic world over the grid) → prepare (create/open the
    store, record the plan) → open the executor (the config's cluster profile) → the tiles still unfinished *in the
    store*, block after block, through the one bounded-submit loop → a summary JSON.

Blocks (:class:`Blocks`): whenever the loop asks for more tiles and the current block is used up, the tile states
are read from the store again and the next block is picked among the remaining tiles (``pick_block``: a run of
consecutive tiles from a random start, per-job seed), while the tiles of the previous block are still computing.
So a job resubmitted after a walltime stop continues where the store says, and several jobs on one store at once
mostly work on different blocks (a tile computed twice is harmless: tile writes are whole chunks with identical
bytes). A tile this job submitted is not submitted again by it (a failed one is retried by the next job).

Stopping: ``install_stop_signals(stop)`` makes SIGUSR1 (sbatch ``--signal=B:USR1@120``), SIGTERM and SIGINT set
``stop``: nothing new is submitted, tiles in flight finish and are recorded, the summary says ``stopped``. A
second signal abandons the tiles in flight (their state is not written, so the next run redoes them).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from reefmap.errors import AbandonRun, InvalidParameter
from reefmap.geometry.grid import TileGrid
from reefmap.config import GlobalRunConfig, describe_grid
from reefmap.sources import urls

log = logging.getLogger("reefmap.execute.batch")

#: exit codes of a batch job (pipelines/global_run.py)
EXIT_COMPLETE = 0  #: every planned tile is finished (done or skipped)
EXIT_FAILURES = 1  #: nothing left to try in this job, but some tiles failed (recorded in the store)
EXIT_USAGE = 2  #: a configuration/user error (nothing was computed)
EXIT_STOPPED = 3  #: stopped by a signal with work left: resubmit the same job to continue


# -- planning -------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class GlobalPlan:
    """The tiles a global run computes: the grid, the selection (mask ∧ region), and how it was made."""

    grid: TileGrid
    selection: np.ndarray
    tiles_in_region: int
    mask: Any  # MaskInfo | None
    seconds: float

    @property
    def tiles_total(self) -> int:
        return self.grid.count

    @property
    def tiles_planned(self) -> int:
        return int(self.selection.sum())

    def to_json(self) -> dict:
        return {"grid": describe_grid(self.grid), "tiles_total": self.tiles_total, "tiles_in_region": self.tiles_in_region,
                "tiles_planned": self.tiles_planned, "mask": None if self.mask is None else self.mask.to_json(),
                "seconds": round(self.seconds, 3)}


def plan_global(cfg: GlobalRunConfig) -> GlobalPlan:
    """The tile selection of ``cfg``: its grid, restricted to ``region`` and to the tiles the mask keeps."""
    from reefmap.planning.masks import tile_mask

    t0 = time.perf_counter()
    grid = cfg.grid
    sel = np.ones(tuple(grid.shape), bool)
    if cfg.region is not None:
        sel &= grid.tiles_touching(cfg.region)
    in_region = int(sel.sum())
    info = None
    if cfg.mask is not None:
        m, info = tile_mask(grid, cfg.mask, buffer_km=cfg.buffer_km, crs=cfg.mask_crs, info=True)
        sel &= m
    return GlobalPlan(grid, sel, in_region, info, time.perf_counter() - t0)


def plan_report(cfg: GlobalRunConfig) -> dict:
    """What ``reefmap plan`` shows: ``plan_global(cfg)`` as JSON, with the config's region and output store."""
    gp = plan_global(cfg)
    return {"config": cfg.source, **gp.to_json(), "region": None if cfg.region is None else list(cfg.region),
            "out": cfg.out, "computed": False}


def format_plan(d: dict) -> str:
    g = d["grid"]
    kind = f" ({g['kind']} zoom {g['zoom']})" if g.get("kind") else ""
    lon0, lat0, lon1, lat1 = g["lonlat_bounds"]
    lines = [
        f"config   {d['config']}",
        f"grid     {g['crs']}{kind} · pixel {g['pixel_size']:.4f} · tile {g['tile_px']} px ({g['tile_size']:.1f} CRS units)"
        f" · {g['tiles_wide']} x {g['tiles_tall']} tiles ({g['pixels_wide']} x {g['pixels_tall']} px)",
        f"extent   lon {lon0:.3f} .. {lon1:.3f}, lat {lat0:.3f} .. {lat1:.3f}",
        f"tiles    {d['tiles_total']} in the grid"
        + (f" · {d['tiles_in_region']} in region {d['region']}" if d.get("region") else ""),
    ]
    m = d.get("mask")
    pct = 100.0 * d["tiles_planned"] / d["tiles_total"] if d["tiles_total"] else 0.0
    if m:
        what = f"vector, {m['features']} features, buffer {m['buffer_km']:g} km" if m["kind"] == "vector" else "raster"
        lines.append(f"mask     {m['source']} ({what}, {m['crs']})")
    else:
        lines.append("mask     none (every tile of the grid/region is planned)")
    lines.append(f"planned  {d['tiles_planned']} tiles ({pct:.3f}% of the grid)")
    if d["tiles_planned"] == 0:
        lines.append("warning  no tile survives: check mask:, mask_crs: and region:")
    lines.append(f"took     {d['seconds']:.2f}s (nothing computed; output would go to {d['out']})")
    return "\n".join(lines)


def open_global_mosaic(cfg: GlobalRunConfig):
    """The run's mosaic as a ``Reader`` on ``cfg.grid``: the synthetic world, or a real mosaic that must be on
    exactly that grid (the store is written on the config's grid).

    A Reader, not a DataArray: ``prepare``/``execute`` need only the reader, and wrapping a global grid in a
    dask array costs minutes (one block_info entry per chunk: 737k chunks at zoom 15).
    """
    grid = cfg.grid
    syn = cfg.synthetic
    if syn is not None:
        from reefmap.synthetic.reader import SyntheticReader
        from reefmap.synthetic.world import SyntheticWorld

        return SyntheticReader(grid.geobox, SyntheticWorld.from_json({"seed": 0, **syn}))
    from reefmap.sources import open_source

    path = cfg.mosaic["path"]
    if path is None:
        raise InvalidParameter(f"config {cfg.source}: mosaic.path is empty; give the mosaic on the run's grid, "
                               "or `mosaic: {synthetic: {seed: 0}}` for a simulated run")
    extra = {k: v for k, v in cfg.mosaic.items() if k != "path"}
    reader = open_source(path, **extra)
    gb = reader.geobox
    if not gb.same_grid(grid.geobox):
        raise InvalidParameter(
            f"mosaic {path!r} is on a {tuple(gb.shape)} grid in {gb.crs} with transform {tuple(gb.transform)[:6]}, "
            f"but the config's grid is {tuple(grid.geobox.shape)} in {grid.geobox.crs} with transform "
            f"{tuple(grid.geobox.transform)[:6]}; a global run writes the config's grid: give a mosaic on that grid "
            "(e.g. the basemap quads as one Zarr) or change grid: to the mosaic's"
        )
    return reader


# -- stopping -------------------------------------------------------------------------------------------------
STOP_SIGNALS = tuple(s for s in (getattr(signal, "SIGUSR1", None), signal.SIGTERM, signal.SIGINT) if s is not None)


def install_stop_signals(stop: threading.Event, signals=STOP_SIGNALS, *, logger=None) -> Callable[[], None]:
    """First signal: ``stop.set()`` (finish what is in flight, submit nothing new). Second: raise ``AbandonRun``.

    Must be called from the main thread. Returns a function restoring the previous handlers.
    """
    lg = logger or log
    previous = {}

    def handler(signum, frame):
        name = signal.Signals(signum).name
        if not stop.is_set():
            stop.set()
            lg.warning(f"{name} received: stopping — no new tiles are submitted, tiles in flight finish and are "
                       "recorded; resubmit the same job to continue (a second signal abandons the tiles in flight)")
        else:
            lg.warning(f"{name} received again: abandoning the tiles in flight (the next run redoes them)")
            raise AbandonRun(name)

    for s in signals:
        previous[s] = signal.signal(s, handler)

    def restore():
        for s, h in previous.items():
            signal.signal(s, h)

    return restore


# -- the run ----------------------------------------------------------------------------------------------------
@dataclass
class BatchSummary:
    """What one batch job did, and where the store stands (machine-readable: ``to_json``)."""

    config: str | None
    store: str
    job: str
    host: str
    started: str
    ended: str = ""
    seconds: float = 0.0
    grid: dict = field(default_factory=dict)
    mask: dict | None = None
    tiles_total: int = 0
    tiles_planned: int = 0
    finished_before: int = 0
    computed: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    megapixels: float = 0.0
    rounds: int = 0  #: blocks of tiles picked (the store was read before each)
    remaining: int = 0  #: planned tiles not finished in the store at the end (all jobs)
    failed_in_store: int = 0
    compute_seconds: float = 0.0  #: from the first submitted tile to the last (no planning, no cluster start-up)
    stopped: bool = False
    abandoned: bool = False
    plan_seconds: float = 0.0
    summary_path: str | None = None
    error: str | None = None
    failures: dict = field(default_factory=dict)

    @property
    def tiles_per_s(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else 0.0

    @property
    def mpx_per_s(self) -> float:
        return self.megapixels / self.seconds if self.seconds > 0 else 0.0

    @property
    def compute_tiles_per_s(self) -> float:
        return self.computed / self.compute_seconds if self.compute_seconds > 0 else 0.0

    @property
    def complete(self) -> bool:
        return self.remaining == 0

    @property
    def exit_code(self) -> int:
        if self.error:
            return EXIT_FAILURES
        if self.complete:
            return EXIT_COMPLETE
        if self.stopped:
            return EXIT_STOPPED
        return EXIT_FAILURES

    def finish(self, progress, states: np.ndarray, selection: np.ndarray, stop_set: bool, t_start: float) -> None:
        """Fill in this job's counts (from its outcome counter, a ``RunProgress``; None when the job ended before
        counting) and where the store stands (``states``, just read, of the ``selection`` planned)."""
        from reefmap.store.format import TileState, is_finished

        if progress is not None:  # counted per outcome, so tiles of an abandoned stream are included
            self.computed, self.megapixels = progress.n, progress.pixels / 1e6
            self.done, self.skipped, self.failed = (progress.counts[k] for k in ("done", "skipped", "failed"))
            self.failures = {f"{iy},{ix}": err for (iy, ix), err in list(progress.failures.items())[:50]}
        self.remaining = int((selection & ~is_finished(states)).sum())
        self.failed_in_store = int((selection & (states == TileState.FAILED)).sum())
        self.stopped = bool(stop_set or self.abandoned) and self.remaining > 0
        self.seconds = time.perf_counter() - t_start
        self.ended = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

    def to_json(self) -> dict:
        d = asdict(self)
        d.update(tiles_per_s=round(self.tiles_per_s, 4), mpx_per_s=round(self.mpx_per_s, 4),
                 compute_tiles_per_s=round(self.compute_tiles_per_s, 4),
                 compute_mpx_per_s=round(self.megapixels / self.compute_seconds, 4) if self.compute_seconds > 0 else 0.0,
                 compute_seconds=round(self.compute_seconds, 3), complete=self.complete,
                 exit_code=self.exit_code, megapixels=round(self.megapixels, 3), seconds=round(self.seconds, 3))
        return d

    def __str__(self) -> str:
        state = "complete" if self.complete else "stopped" if self.stopped else f"{self.remaining} tiles left"
        return (f"{self.job}: {self.store}: computed {self.computed} tiles (done {self.done}, skipped {self.skipped}, "
                f"failed {self.failed}) in {self.seconds:.1f}s · {self.tiles_per_s:.2f} tiles/s · "
                f"{self.mpx_per_s:.2f} Mpx/s · {self.tiles_planned - self.remaining}/{self.tiles_planned} planned "
                f"tiles finished · {state}")


def job_tag() -> str:
    """This job's name in logs and file names: the SLURM job (and array task) id, else host-pid."""
    jid = os.environ.get("SLURM_JOB_ID")
    if jid:
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        return f"slurm-{jid}" + (f"_{task}" if task else "")
    return f"{socket.gethostname()}-{os.getpid()}"


def summary_path(cfg: GlobalRunConfig, job: str) -> str:
    """``cfg.summary`` (``{job}`` is replaced by the job tag), else ``<out>.summary-<job>.json`` beside the store."""
    if cfg.summary:
        return cfg.summary.replace("{job}", job)
    return cfg.out.rstrip("/") + f".summary-{job}.json"


def _write_json(path: str, obj: dict) -> None:
    import fsspec

    if "://" not in path:
        os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
        os.replace(tmp, path)
        return
    with fsspec.open(path, "w") as f:
        json.dump(obj, f, indent=2)


def run_batch(cfg: GlobalRunConfig, *, client: Any = None, stop: threading.Event | None = None,
              order_seed: int | None = None, logger=None, write_summary: bool = True,
              on_outcome: Callable | None = None) -> BatchSummary:
    """One batch job of a global run (see the module docstring). Resumable, safe to run several at once.

    ``client`` (the same meaning as in ``run``, see :func:`~reefmap.execute.executors.open_executor`): None
    launches ``cfg``'s cluster profile (``cluster: {profile:, jobs:}``, default ``local``) and shuts it down at the
    end; ``"inprocess"`` (as a profile too) computes in a thread here; a profile name, a scheduler address or a
    ``distributed.Client`` is used instead of the config's profile.
    """
    from reefmap.execute.executors import InProcess, open_executor
    from reefmap.execute.loop import chain, submit_bounded
    from reefmap.execute.progress import RunProgress
    from reefmap.execute.runner import prepare, refresh_store_overviews
    from reefmap.store.format import is_finished
    from reefmap.store.integrity import states_for_run

    lg = logger or log
    stop = stop or threading.Event()
    job = job_tag()
    t_start = time.perf_counter()
    summary = BatchSummary(config=cfg.source, store=cfg.out, job=job, host=socket.gethostname(),
                           started=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    gplan = plan_global(cfg)
    summary.grid, summary.plan_seconds = describe_grid(gplan.grid), round(gplan.seconds, 3)
    summary.mask = None if gplan.mask is None else gplan.mask.to_json()
    summary.tiles_total, summary.tiles_planned = gplan.tiles_total, gplan.tiles_planned
    lg.info(f"{job}: planned {gplan.tiles_planned} of {gplan.tiles_total} tiles ({gplan.grid.shape.x} x "
            f"{gplan.grid.shape.y} tiles of {gplan.grid.tile} px, {gplan.grid.geobox.crs}) in {gplan.seconds:.2f}s"
            + (f"; mask {gplan.mask}" if gplan.mask is not None else ""))
    if gplan.tiles_planned == 0:
        lg.warning(f"{job}: the mask and region keep no tile: nothing to do (check mask:, mask_crs: and region:)")
    mosaic = open_global_mosaic(cfg)
    plan, tjob, store = prepare(mosaic, cfg.model, cfg.out, tile=gplan.grid.tile, halo=cfg.halo, screen=cfg.screen,
                                tile_mask=gplan.selection, precision=cfg.precision, compile=cfg.compile)
    summary.store = urls.redact(store.url)
    progress = None

    def finish():  # this job's counts and where the store stands, into the summary; logged and written
        if progress is not None:
            lg.info(progress.line())
        summary.finish(progress, store.states(), plan.selection, stop.is_set(), t_start)
        report(summary, cfg, lg, write_summary)

    try:
        states, damaged = states_for_run(store)  # finished tiles whose chunks are not there are recomputed
        if damaged:
            lg.warning(f"{job}: {len(damaged)} finished tile(s) were damaged and will be recomputed: "
                       + "; ".join(f"{k[0]},{k[1]}: {v}" for k, v in list(damaged.items())[:5]))
        summary.finished_before = int((is_finished(states) & plan.selection).sum())
        progress = RunProgress(plan.count, summary.finished_before, every_s=cfg.log_every_s, job=job, logger=lg)
        lg.info(f"{job}: store {summary.store}: {summary.finished_before}/{plan.count} planned tiles already finished")
        work = summary.finished_before < plan.count and not stop.is_set()  # else no cluster is launched
        executor_cm = open_executor(client, profile=cfg.cluster_profile, jobs=cfg.cluster_jobs, logger=lg) if work \
            else InProcess()
        with executor_cm as executor:
            limit = executor.depth(cfg.max_in_flight)
            blocks = Blocks(store, plan.selection, block=cfg.block or max(64, 16 * limit), in_flight=limit,
                            batch=cfg.batch, rng=np.random.default_rng(order_seed), progress=progress, states=states)
            progress.start()
            t_compute = time.perf_counter()
            try:
                submit_bounded(blocks, plan, tjob, executor, limit=limit, stop=stop,
                               on_outcome=chain(progress.on_outcome, on_outcome))
            except Exception as e:
                if not stop.is_set():
                    raise
                # stopping at walltime: SLURM may already be killing the workers; what was in flight is redone later
                why = urls.redact_text(f"{type(e).__name__}: {e}")
                lg.warning(f"{job}: tiles in flight were lost while stopping ({why}); the next run redoes them")
                summary.abandoned = True
            summary.rounds = blocks.rounds
            summary.compute_seconds = time.perf_counter() - t_compute
        if work and not stop.is_set() and not summary.abandoned:
            refresh_store_overviews(store)  # the map's existing overview levels follow the tiles that finished
    except AbandonRun:
        summary.abandoned = True
        lg.warning(f"{job}: abandoned the tiles in flight; they stay pending and the next run redoes them")
    except Exception as e:
        summary.error = urls.redact_text(f"{type(e).__name__}: {e}")
        lg.error(f"{job}: run failed: {summary.error}")
        try:  # never hide the original error
            finish()
        except Exception as e2:
            lg.error(f"{job}: could not finish the summary: {type(e2).__name__}: {e2}")
        raise
    finish()
    return summary


class Blocks:
    """The tile groups of a batch job, block after block (an iterator for the bounded-submit loop).

    When a block is used up (and the loop asks for more), the store's tile states are read again (the counts go to
    ``progress.store_update``) and the next block is picked among the selected tiles that are neither finished in
    the store nor submitted by this job before; ``rounds`` counts the blocks. ``states``: the states just read.
    """

    def __init__(self, store, selection: np.ndarray, *, block: int, in_flight: int, batch: int, rng, progress,
                 states: np.ndarray | None = None):
        self.store, self.selection, self.block, self.in_flight = store, selection, block, in_flight
        self.batch, self.rng, self.progress, self.states = max(1, batch), rng, progress, states
        self.submitted = np.zeros(selection.shape, bool)
        self.rounds = 0

    def __iter__(self):
        from reefmap.store.format import is_finished

        while True:
            states = self.store.states() if self.states is None else self.states
            self.states = None
            finished = is_finished(states) & self.selection
            if self.rounds:
                self.progress.store_update(int(finished.sum()))
            todo = self.selection & ~finished & ~self.submitted
            if not todo.any():
                return
            part = pick_block(np.argwhere(todo), self.block, self.in_flight, self.rng)
            self.submitted[part[:, 0], part[:, 1]] = True
            self.rounds += 1
            for i in range(0, len(part), self.batch):
                yield part[i:i + self.batch]


def report(summary: BatchSummary, cfg: GlobalRunConfig, lg, write_summary: bool = True) -> None:
    """Log the summary, and write it as JSON (``summary_path``) when ``write_summary``."""
    if write_summary:
        path = summary_path(cfg, summary.job)
        summary.summary_path = path
        try:
            _write_json(path, summary.to_json())
        except OSError as e:  # the run's work is in the store; a summary that cannot be written is not fatal
            lg.error(f"{summary.job}: could not write the summary {path}: {e}")
    lg.info(str(summary))


def pick_block(tiles: np.ndarray, block: int, in_flight: int, rng) -> np.ndarray:
    """The next block of tiles: a run of consecutive remaining tiles (row-major, so neighbours share reads)
    starting at a random one, wrapping. Its length shrinks with what is left (a sixteenth of it, at least two
    rounds of tiles in flight, at most ``block``), so concurrent jobs — which cannot see each other's tiles in
    flight — rarely pick the same tiles, and near the end duplicate at most a few."""
    n = len(tiles)
    size = int(min(block, n, max(2 * in_flight, -(-n // 16))))
    start = int(rng.integers(n))
    return tiles[(start + np.arange(size)) % n]


def run_job(cfg: GlobalRunConfig, *, order_seed: int | None = None, logger=None) -> BatchSummary:
    """``run_batch`` as a batch job runs it: with the stop signals installed (``install_stop_signals``; call it from
    the main thread) for the length of the run. A second signal raises ``AbandonRun`` out of here."""
    stop = threading.Event()
    restore = install_stop_signals(stop, logger=logger)
    try:
        return run_batch(cfg, stop=stop, order_seed=order_seed, logger=logger)
    finally:
        restore()
