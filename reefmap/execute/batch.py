"""Global batch runs: plan the globe with a candidate mask, stream the unfinished tiles to a cluster, stop cleanly.

``plan_global(cfg)`` is metadata only (a tile-resolution mask; no store, no mosaic, no torch).
``run_batch(cfg, stop=...)`` is one batch job::

    plan_global → open the mosaic (real, or the lazy synthetic world over the grid) → prepare (create/open the
    store, record the plan) → launch the cluster profile → rounds of execute() over random blocks of the
    tiles that are still unfinished *in the store* → a summary JSON.

Rounds: each round re-reads the tile states from the store and runs ``execute`` on one block of the remaining
tiles (``pick_block``: a run of consecutive tiles from a random start, per-job seed). So a job resubmitted
after a walltime stop continues where the store says, and several jobs on one store at once mostly work on
different blocks (a tile computed twice is harmless: tile writes are whole chunks with identical bytes). A
tile that fails in this job is not retried by it (the next job retries it once).

Stopping: ``install_stop_signals(stop)`` makes SIGUSR1 (sbatch ``--signal=B:USR1@120``), SIGTERM and SIGINT set
``stop``: nothing new is submitted, tiles in flight finish and are recorded, the summary says ``stopped``. A
second signal abandons the tiles in flight (their state is not written, so the next run redoes them).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from reefmap.cluster.local import connected_workers
from reefmap.errors import AbandonRun, InvalidParameter, ReefmapError
from reefmap.geometry.grid import TileGrid
from reefmap.config import GlobalRunConfig, describe_grid

log = logging.getLogger("reefmap.execute.batch")

#: exit codes of a batch job (pipelines/global_run.py)
EXIT_COMPLETE = 0  #: every planned tile is finished (done or skipped)
EXIT_FAILURES = 1  #: nothing left to try in this job, but some tiles failed (recorded in the store)
EXIT_USAGE = 2  #: a configuration/user error (nothing was computed)
EXIT_STOPPED = 3  #: stopped by a signal with work left: resubmit the same job to continue
INPROCESS = ("inprocess", "none")  #: cluster profiles meaning "no dask cluster: a thread in this process"


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


# -- progress -------------------------------------------------------------------------------------------------
class RunProgress:
    """Counts this job's tile outcomes; logs tiles/s, Mpx/s, store-wide progress and ETA every ``every_s``."""

    def __init__(self, planned: int, finished: int, *, every_s: float = 60.0, job: str = "", logger=None,
                 clock: Callable[[], float] = time.perf_counter):
        self.planned, self.every_s, self.job = planned, every_s, job
        self.log = logger or log
        self.clock = clock
        self.t0 = self._last = clock()
        self.counts = {"done": 0, "skipped": 0, "failed": 0}
        self.pixels = 0
        self.store_finished = finished  # planned tiles finished in the store at the last read (any job)
        self._since_read = 0
        self._store_t0, self._store_f0 = self.t0, finished
        self._store_rate = 0.0

    @property
    def n(self) -> int:
        return sum(self.counts.values())

    def on_outcome(self, o) -> None:
        from reefmap.store.format import TileState

        key = "done" if o.state == TileState.DONE else "failed" if o.state == TileState.FAILED else "skipped"
        self.counts[key] += 1
        self.pixels += int(o.pixels)
        if key != "failed":
            self._since_read += 1
        now = self.clock()
        if now - self._last >= self.every_s:
            self._last = now
            self.log.info(self.line())

    def start(self) -> None:
        """Start the clock for the rates (call when the first tile is submitted, after the cluster is up)."""
        self.t0 = self._last = self._store_t0 = self.clock()

    def store_update(self, finished: int) -> None:
        """A fresh count of the plan's finished tiles, read from the store (all jobs together)."""
        now = self.clock()
        if now > self._store_t0 and finished > self._store_f0:
            self._store_rate = (finished - self._store_f0) / (now - self._store_t0)
        self.store_finished, self._since_read = finished, 0

    def rates(self) -> tuple[float, float]:
        el = max(self.clock() - self.t0, 1e-9)
        return self.n / el, self.pixels / el / 1e6

    def eta_s(self) -> float:
        left = max(0, self.planned - self.store_finished - self._since_read)
        rate = max(self._store_rate, self.rates()[0])
        return left / rate if rate > 0 else float("nan")

    def line(self) -> str:
        tps, mps = self.rates()
        fin = min(self.planned, self.store_finished + self._since_read)
        pct = 100.0 * fin / self.planned if self.planned else 100.0
        return (f"{self.job}: {self.n} tiles this job (done {self.counts['done']}, skipped {self.counts['skipped']}, "
                f"failed {self.counts['failed']}) · {tps:.2f} tiles/s · {mps:.2f} Mpx/s · store {fin}/{self.planned} "
                f"finished ({pct:.1f}%) · ETA {_fmt_s(self.eta_s())}")


def _fmt_s(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(round(s))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


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
    rounds: int = 0
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

    ``client``: a ``distributed.Client`` to use (not closed here); None launches ``cfg``'s cluster profile (and
    shuts it down at the end); profile ``inprocess`` (or ``client="inprocess"``) computes in a thread here.
    """
    from reefmap.planning.plan import Plan
    from reefmap.execute.runner import execute, prepare
    from reefmap.store.format import FINISHED_STATES

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
                                tile_mask=gplan.selection)
    summary.store = store.url
    sel = plan.selection
    n_planned = plan.count
    max_in_flight = cfg.max_in_flight
    own_client = False
    abandoned = False
    progress = None
    rng = np.random.default_rng(order_seed)
    failed_here = np.zeros(sel.shape, bool)
    try:
        states = store.states()
        finished = np.isin(states, FINISHED_STATES) & sel
        summary.finished_before = int(finished.sum())
        progress = RunProgress(n_planned, summary.finished_before, every_s=cfg.log_every_s, job=job, logger=lg)
        lg.info(f"{job}: store {store.url}: {summary.finished_before}/{n_planned} planned tiles already finished")
        todo = sel & ~finished
        if isinstance(client, str):
            if client not in INPROCESS:
                raise InvalidParameter(f"client {client!r} is not a distributed.Client; pass one, None (launch the "
                                       f"config's cluster profile) or 'inprocess'")
            client = None
        elif client is None and todo.any() and not stop.is_set():
            client, own_client = _launch(cfg, lg)
        n_workers = 1 if client is None else max(1, len(connected_workers(client)))
        limit = max_in_flight or (2 if client is None else max(4, 2 * n_workers))
        block = cfg.block or max(64, 16 * limit)
        progress.start()
        t_compute = time.perf_counter()
        while todo.any() and not stop.is_set():
            tiles = np.argwhere(todo)
            part = pick_block(tiles, block, limit, rng)
            bsel = np.zeros(sel.shape, bool)
            bsel[part[:, 0], part[:, 1]] = True
            try:
                res = execute(Plan(plan.grid, plan.halo, bsel), tjob, store, client=client, batch=cfg.batch,
                              max_in_flight=limit, progress=False, stop=stop, states=states,
                              on_outcome=_chain(progress.on_outcome, on_outcome))
            except Exception as e:
                if not stop.is_set():
                    raise
                # stopping at walltime: SLURM may already be killing the workers; what was in flight is redone later
                lg.warning(f"{job}: tiles in flight were lost while stopping ({type(e).__name__}: {e}); the next "
                           "run redoes them")
                abandoned = True
                break
            summary.rounds += 1
            for (iy, ix), err in res.failures.items():
                failed_here[iy, ix] = True
                if len(summary.failures) < 50:
                    summary.failures[f"{iy},{ix}"] = err
            states = store.states()
            finished = np.isin(states, FINISHED_STATES) & sel
            progress.store_update(int(finished.sum()))
            todo = sel & ~finished & ~failed_here
            if lg.isEnabledFor(logging.DEBUG):
                lg.debug(progress.line())
        summary.compute_seconds = time.perf_counter() - t_compute
    except AbandonRun:
        abandoned = True
        lg.warning(f"{job}: abandoned the tiles in flight; they stay pending and the next run redoes them")
    except Exception as e:
        summary.error = f"{type(e).__name__}: {e}"
        lg.error(f"{job}: run failed: {summary.error}")
        raise
    finally:
        if own_client and client is not None:
            _close(client, cfg, lg)
        if summary.error:
            try:
                _finish(summary, store, sel, stop, abandoned, t_start, progress, cfg, job, lg, write_summary)
            except Exception as e2:  # never hide the original error
                lg.error(f"{job}: could not finish the summary: {type(e2).__name__}: {e2}")
    return _finish(summary, store, sel, stop, abandoned, t_start, progress, cfg, job, lg, write_summary)


def _finish(summary, store, sel, stop, abandoned, t_start, progress, cfg, job, lg, write_summary) -> BatchSummary:
    from reefmap.store.format import FINISHED_STATES, TileState

    if progress is not None:  # counted per outcome, so tiles of an abandoned round are included
        summary.computed, summary.megapixels = progress.n, progress.pixels / 1e6
        summary.done, summary.skipped, summary.failed = (progress.counts[k] for k in ("done", "skipped", "failed"))
    states = store.states()
    summary.remaining = int((sel & ~np.isin(states, FINISHED_STATES)).sum())
    summary.failed_in_store = int((sel & (states == TileState.FAILED)).sum())
    summary.stopped = bool(stop.is_set() or abandoned) and summary.remaining > 0
    summary.abandoned = abandoned
    summary.seconds = time.perf_counter() - t_start
    summary.ended = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    if progress is not None:
        lg.info(progress.line())
    if write_summary:
        path = summary_path(cfg, job)
        summary.summary_path = path
        try:
            _write_json(path, summary.to_json())
        except OSError as e:  # the run's work is in the store; a summary that cannot be written is not fatal
            lg.error(f"{job}: could not write the summary {path}: {e}")
    lg.info(str(summary))
    return summary


def pick_block(tiles: np.ndarray, block: int, in_flight: int, rng) -> np.ndarray:
    """The next round's tiles: a run of consecutive remaining tiles (row-major, so neighbours share reads)
    starting at a random one, wrapping. Its length shrinks with what is left (a sixteenth of it, at least two
    rounds of tiles in flight, at most ``block``), so concurrent jobs — which cannot see each other's tiles in
    flight — rarely pick the same tiles, and near the end duplicate at most a few."""
    n = len(tiles)
    size = int(min(block, n, max(2 * in_flight, -(-n // 16))))
    start = int(rng.integers(n))
    return tiles[(start + np.arange(size)) % n]


def _chain(*fns):
    fns = [f for f in fns if f is not None]

    def call(o):
        for f in fns:
            f(o)

    return call


def _launch(cfg: GlobalRunConfig, lg):
    if cfg.cluster_profile in INPROCESS:
        lg.info("cluster profile inprocess: computing in this process (no dask cluster)")
        return None, False
    from reefmap.cluster.launcher import _is_address, launch

    lg.info(f"launching cluster profile {cfg.cluster_profile!r}" + (f" with {cfg.cluster_jobs} jobs" if cfg.cluster_jobs else ""))
    if _is_address(cfg.cluster_profile):
        return launch(cfg.cluster_profile), False  # a shared scheduler: connect, never shut it down
    return launch(cfg.cluster_profile, cfg.cluster_jobs), True


def _close(client, cfg, lg) -> None:
    try:
        client.shutdown()  # stops the cluster this job launched (and cancels its SLURM jobs)
    except Exception as e:  # a cluster that is already gone
        lg.debug(f"closing the cluster: {type(e).__name__}: {e}")
        try:
            client.close()
        except Exception:
            pass


# -- the command line of pipelines/global_run.py ------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """``python pipelines/global_run.py CONFIG [--mask M] [--out S] [--profile P] [--jobs N] ...``"""
    import argparse

    p = argparse.ArgumentParser(prog="global_run", description="One batch job of a global reefmap run (resumable; "
                                "SIGUSR1/SIGTERM stop it cleanly; exit 0 complete, 3 stopped with work left, 1 failures)")
    p.add_argument("config", help="global-run YAML (e.g. pipelines/configs/global-l15.yaml)")
    p.add_argument("--mask", help="candidate mask file (overrides the config and $REEFMAP_MASK); 'none' for no mask")
    p.add_argument("--out", help="output store (overrides out:)")
    p.add_argument("--model", help="model bundle directory (overrides model:)")
    p.add_argument("--profile", help="cluster profile (overrides cluster.profile): local, slurm-gpu, ..., "
                   "a scheduler address, or inprocess")
    p.add_argument("--jobs", type=int, help="cluster jobs/workers (overrides cluster.jobs)")
    p.add_argument("--max-in-flight", type=int, help="tiles in flight at once (overrides max_in_flight:)")
    p.add_argument("--summary", help="summary JSON path (overrides summary:; {job} = the job tag)")
    p.add_argument("--order-seed", type=int, help="seed of the block order (default: random per job)")
    p.add_argument("--log-every", type=float, help="seconds between progress lines (overrides log_every_s:)")
    p.add_argument("--debug", action="store_true", help="full tracebacks and debug logging")
    a = p.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if a.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%Y-%m-%dT%H:%M:%S")
    if not a.debug:  # dask's own INFO chatter (scheduler/nanny start-up) drowns the progress lines
        for name in ("distributed", "dask"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        cfg = GlobalRunConfig.from_yaml(a.config, mask=a.mask, out=_abs(a.out), model=_abs(a.model), cluster_profile=a.profile,
                                        cluster_jobs=a.jobs, max_in_flight=a.max_in_flight, summary=_abs(a.summary),
                                        log_every_s=a.log_every)
        stop = threading.Event()
        restore = install_stop_signals(stop)
        try:
            s = run_batch(cfg, stop=stop, order_seed=a.order_seed)
        finally:
            restore()
    except AbandonRun:
        return EXIT_STOPPED
    except ReefmapError as e:
        if a.debug:
            raise
        print(f"global_run: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps({"summary": s.summary_path, "exit_code": s.exit_code, "complete": s.complete,
                      "stopped": s.stopped, "computed": s.computed, "remaining": s.remaining}), flush=True)
    if s.stopped:
        log.warning(f"stopped with {s.remaining} tiles left: resubmit the same job to continue")
    return s.exit_code


def _abs(p: str | None) -> str | None:
    if p is None or "://" in p:
        return p
    return os.path.abspath(p)
