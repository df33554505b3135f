"""Execute a tile plan: create or reopen the map, compute only what is not finished, in bounded batches.

``run(mosaic, model, out)`` is the whole job on one line; each step is a library call of its own:
``read_bundle`` (no torch) → ``plan_tiles`` → ``MapStore.create_or_open`` (refuses a store made by another
model/grid) → ``execute`` (submits small independent per-tile tasks, never more than ``max_in_flight`` at
once, to a dask client or an in-process thread pool) → a ``RunSummary``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from reefmap.cluster.local import connected_workers
from reefmap.errors import BandMismatch, InvalidParameter, ReefmapError, TileFailures
from reefmap.compute.tiles import TileJob, TileOutcome, predict_tiles, read_tiles, run_tiles, write_tiles
from reefmap.planning.plan import Plan, plan_tiles
from reefmap.store.status import ProgressBar
from reefmap.store.format import FINISHED_STATES, TileState
from reefmap.store.mapstore import MapStore, code_version


@dataclass(frozen=True)
class RunSummary:
    store: str
    planned: int
    already_finished: int
    computed: int
    done: int
    skipped: int
    failed: int
    seconds: float
    megapixels: float
    failures: dict = field(default_factory=dict)
    stopped: bool = False

    @property
    def mpx_per_s(self) -> float:
        return self.megapixels / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict:
        d = asdict(self)
        d["failures"] = {f"{k[0]},{k[1]}": v for k, v in self.failures.items()}
        d["mpx_per_s"] = round(self.mpx_per_s, 3)
        return d

    def __str__(self) -> str:
        return (f"{self.store}: {self.planned} tiles planned, {self.already_finished} already finished; "
                f"computed {self.computed}: done {self.done}, skipped {self.skipped}, failed {self.failed} "
                f"in {self.seconds:.1f}s ({self.mpx_per_s:.2f} Mpx/s)")


def prepare(mosaic, model=None, out=None, *, bbox=None, bbox_crs="EPSG:4326", tile: int = 1024,
            halo: int | None = None, screen: bool = True, storage_options: dict | None = None,
            tile_mask: np.ndarray | None = None) -> tuple[Plan, TileJob, MapStore]:
    """Plan a run and open (or create) its store — metadata only: no pixels, no torch."""
    from reefmap.model.bundle import read_bundle
    from reefmap.sources.base import public_spec, reader_of

    if out is None:
        raise InvalidParameter("no output store given; pass out= (a path or URL ending in .zarr)")
    reader = reader_of(mosaic)
    meta = read_bundle(model)
    if len(reader.band_names) != len(meta.bands):
        raise BandMismatch(
            f"the mosaic has {len(reader.band_names)} bands ({', '.join(map(str, reader.band_names))}) but model "
            f"{meta.name!r} expects {len(meta.bands)} ({', '.join(meta.bands)}); give a mosaic with those bands or a matching model"
        )
    halo = meta.halo if halo is None else int(halo)
    if halo < meta.receptive_radius:
        raise InvalidParameter(
            f"halo {halo} px is smaller than model {meta.name!r}'s receptive radius {meta.receptive_radius} px: tiles "
            f"would show seams; use --halo {meta.halo} (the bundle's default)"
        )
    plan = plan_tiles(reader.geobox, tile, halo, bbox=bbox, bbox_crs=bbox_crs, size_multiple=meta.size_multiple, mask=tile_mask)
    identity = {"model": meta.sha256, "halo": halo, "screen": bool(screen), "bands": list(meta.bands)}
    provenance = {
        "model": meta.provenance(),
        "reefmap_version": code_version(),
        "sources": [public_spec(reader.spec())],  # never credentials: the store's attributes are public
        "parameters": {"tile": int(tile), "halo": halo, "screen": bool(screen), "bbox": None if bbox is None else list(map(float, _bbox_list(bbox)))},
    }
    store = MapStore.create_or_open(out, plan.grid, identity, provenance, storage_options)
    store.record_plan(plan)
    job = TileJob(reader_spec=reader.spec(), bundle=meta.path, store=store, screen=bool(screen))
    return plan, job, store


def _bbox_list(bbox):
    from reefmap.geometry.grid import BBox

    return bbox if isinstance(bbox, BBox) else BBox.parse(bbox)


def execute(plan: Plan, job: TileJob, store: MapStore, *, client=None, batch: int = 1, max_in_flight: int | None = None,
            progress: bool = True, retry_failed: bool = True, stop=None, on_outcome=None,
            states: np.ndarray | None = None) -> RunSummary:
    """Compute the plan's unfinished tiles on ``client`` (a distributed Client, or None for an in-process
    thread pool) and record each tile's state in the store. Finished tiles are never recomputed.

    Tiles stream to the client: at most ``max_in_flight`` tasks exist at once, so a plan of any size never
    becomes one big graph. ``stop`` (a ``threading.Event``) ends the run early and cleanly: nothing new is
    submitted, tiles in flight finish (their writes are idempotent, so an abandoned one is simply redone by
    the next run), and the summary says ``stopped``. ``on_outcome`` is called with each ``TileOutcome``.
    ``states``: the store's tile states when the caller has just read them (else they are read here).
    """
    t0 = time.perf_counter()
    states = store.states() if states is None else states
    finished = np.isin(states, FINISHED_STATES) if retry_failed else (states != TileState.PENDING)
    todo = plan.remaining(finished)
    tiles = np.argwhere(todo)
    n_already = plan.count - len(tiles)
    groups = [tiles[i:i + batch] for i in range(0, len(tiles), max(1, batch))]
    bar = ProgressBar(len(tiles), enabled=progress)
    outcomes: list[TileOutcome] = []

    def record(o: TileOutcome) -> None:
        outcomes.append(o)
        bar.update(o.state, o.pixels)
        if on_outcome is not None:
            on_outcome(o)

    def submit_all(submit, wait_one, limit):
        pending: dict = {}  # future -> its tile indices
        it = iter(groups)

        def top_up():
            while len(pending) < limit and not (stop is not None and stop.is_set()):
                g = next(it, None)
                if g is None:
                    return
                pending[submit(g)] = g

        top_up()
        while pending:
            fut = wait_one(set(pending))
            g = pending.pop(fut)
            try:
                results = fut.result()
            except ReefmapError:  # a configuration error (e.g. band mismatch): every tile would fail alike
                for f in pending:
                    f.cancel()
                raise
            except Exception as e:  # the task itself was lost (worker killed, cancelled): its tiles failed
                msg = f"task lost: {type(e).__name__}: {e}"
                results = []
                for t in g:
                    store.mark(t, TileState.FAILED, msg)
                    results.append(TileOutcome((int(t[0]), int(t[1])), int(TileState.FAILED), 0, 0.0, msg))
            for o in results:
                record(o)
            top_up()

    if client is None:
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

        with ThreadPoolExecutor(1) as pool:
            def wait_one(pending):
                return next(iter(wait(pending, return_when=FIRST_COMPLETED).done))

            submit_all(lambda g: pool.submit(run_tiles, job, [plan.task(t) for t in g]), wait_one, max_in_flight or 2)
    else:
        from distributed import wait

        workers = connected_workers(client)
        gpu = _GpuPinning(client, workers)
        n_workers = max(1, len(workers))
        # GPU workers take more groups at once: the next ones read while one predicts and others write
        limit = max_in_flight or max(4, (4 if gpu.pinned else 2) * n_workers)
        token = plan.token

        def submit(g):
            key = f"reefmap-tile-{token}-{int(g[0][0])}-{int(g[0][1])}"
            tasks = [plan.task(t) for t in g]
            resources = gpu.resources()
            if resources is None:
                return client.submit(run_tiles, job, tasks, key=key, pure=False)
            # GPU workers: only the model step holds the GPU; reads and writes run on the worker's other
            # threads meanwhile (the scheduler keeps the three steps on one worker: the data is there)
            read = client.submit(read_tiles, job, tasks, key=key + "-read", pure=False)
            pred = client.submit(predict_tiles, job, read, key=key + "-predict", pure=False, resources=resources)
            return client.submit(write_tiles, job, pred, key=key, pure=False)

        def wait_one(pending):
            return next(iter(wait(pending, return_when="FIRST_COMPLETED").done))

        submit_all(submit, wait_one, limit)
    bar.close()
    seconds = time.perf_counter() - t0
    failures = {o.index: o.error for o in outcomes if o.state == TileState.FAILED}
    return RunSummary(
        store=store.url, planned=plan.count, already_finished=n_already, computed=len(outcomes),
        done=sum(o.state == TileState.DONE for o in outcomes),
        skipped=sum(o.state not in (TileState.DONE, TileState.FAILED) for o in outcomes),
        failed=len(failures), seconds=seconds, megapixels=sum(o.pixels for o in outcomes) / 1e6, failures=failures,
        stopped=bool(stop is not None and stop.is_set() and len(outcomes) < len(tiles)),
    )


def _gpu_resources(workers: dict) -> dict | None:
    """Pin tile tasks to GPU workers when the cluster advertises any (``--resources GPU=1``)."""
    if any(w.get("resources", {}).get("GPU") for w in workers.values()):
        return {"GPU": 1}
    return None


class _GpuPinning:
    """``_gpu_resources``, re-asked at most every ``every`` seconds until a GPU worker shows up, then kept:
    an adaptive cluster may start with no workers, and its GPU workers join while the run is going."""

    def __init__(self, client, workers: dict, every: float = 5.0):
        self.client, self.every = client, every
        self.pinned = _gpu_resources(workers)
        self.checked = time.monotonic()

    def resources(self) -> dict | None:
        if self.pinned is None and time.monotonic() - self.checked > self.every:
            self.pinned, self.checked = _gpu_resources(connected_workers(self.client)), time.monotonic()
        return self.pinned


def run(mosaic, model=None, out=None, *, bbox=None, bbox_crs="EPSG:4326", tile: int = 1024, halo: int | None = None,
        screen: bool = True, client: Any = "local", workers: int | None = None, batch: int = 1,
        max_in_flight: int | None = None, progress: bool = True, storage_options: dict | None = None,
        raise_on_failure: bool = True) -> RunSummary:
    """Map ``mosaic`` with ``model`` into the Zarr store ``out``; resumable and idempotent.

    ``client``: a ``distributed.Client``; ``"local"`` (default) starts a LocalCluster of ``workers`` processes
    for this call; ``None`` runs in this process. Raises ``TileFailures`` (after finishing every other tile)
    when some tiles failed; each is recorded in the store with its reason.
    """
    plan, job, store = prepare(mosaic, model, out, bbox=bbox, bbox_crs=bbox_crs, tile=tile, halo=halo, screen=screen,
                               storage_options=storage_options)
    if client == "local":
        from reefmap.cluster.local import local_client
        from reefmap.compute.kernels import compile_all

        compile_all()  # here once, not in every worker at the same time
        with local_client(workers) as c:
            summary = execute(plan, job, store, client=c, batch=batch, max_in_flight=max_in_flight, progress=progress)
    else:
        summary = execute(plan, job, store, client=client, batch=batch, max_in_flight=max_in_flight, progress=progress)
    if summary.failed and raise_on_failure:
        listed = "; ".join(f"tile {k}: {v}" for k, v in list(summary.failures.items())[:5])
        more = f" (and {summary.failed - 5} more)" if summary.failed > 5 else ""
        raise TileFailures(
            f"{summary.failed} of {summary.computed} tiles failed ({listed}{more}); the others are written. "
            f"Fix the input and re-run the same command: only unfinished tiles are computed", summary.failures)
    return summary


def summary_json(summary: RunSummary) -> str:
    return json.dumps(summary.to_json(), indent=2)
