"""Execute a tile plan: create or reopen the map, compute only what is not finished, in bounded batches.

``run(mosaic, model, out)`` is the whole job on one line; each step is a library call of its own:
``read_bundle`` (no torch) → ``plan_tiles`` → ``MapStore.create_or_open`` (refuses a store made by another
model/grid) → ``open_executor`` (the cluster, or a thread here) → ``execute`` (small independent per-tile tasks
through the one bounded-submit loop, ``reefmap.execute.loop``) → a ``RunSummary``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import numpy as np

from reefmap.checks import positive_int
from reefmap.checks import precision as check_precision
from reefmap.compute.tiles import TileJob
from reefmap.config import RunConfig
from reefmap.errors import InvalidParameter, StoreMismatch, TileFailures
from reefmap.cluster.local import runs_on_gpu
from reefmap.execute.executors import INPROCESS, Distributed, InProcess, open_executor
from reefmap.execute.loop import chain, store_writes, submit_bounded
from reefmap.execute.progress import RunProgress
from reefmap.geometry.crs import is_geographic
from reefmap.geometry.grid import BBox, Shape
from reefmap.options import get_option
from reefmap.planning.plan import Plan, cache_order, plan_tiles
from reefmap.products.overviews import refresh_overviews
from reefmap.sources import clear_chunk_cache, urls
from reefmap.store.format import SCHEME_KEY, TileState, is_finished
from reefmap.store.integrity import states_for_run
from reefmap.store.mapstore import MapStore, code_version

log = logging.getLogger("reefmap.execute")

#: the default tile (Zarr chunk) size in pixels
DEFAULT_TILE = 1024
#: tiles per task by default on a remote store (their chunks go up in one concurrent round and their states in one
#: write, instead of a round trip per tile) and on a host with GPUs (a task's model step copies its tiles to the
#: device at once, and the scheduler handles a quarter of the tasks)
REMOTE_BATCH = GPU_BATCH = 4


def default_batch(out, device: str | None = None) -> int:
    """Tiles per task when a run does not say: ``REMOTE_BATCH`` for a remote map, ``GPU_BATCH`` where the model runs
    on a GPU (``device``, or None: any GPU visible on this host), else 1."""
    return REMOTE_BATCH if not urls.is_local(out) else GPU_BATCH if runs_on_gpu(device) else 1


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
    damaged: dict = field(default_factory=dict)  #: tiles found damaged before the run (recomputed): {tile: problem}
    executor: str = INPROCESS  #: where the tiles ran: "inprocess" (a thread of this process) or "cluster"

    @property
    def mpx_per_s(self) -> float:
        return self.megapixels / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict:
        d = asdict(self)
        d["failures"] = {f"{k[0]},{k[1]}": v for k, v in self.failures.items()}
        d["damaged"] = {f"{k[0]},{k[1]}": v for k, v in self.damaged.items()}
        d["mpx_per_s"] = round(self.mpx_per_s, 3)
        return d

    def raise_for_failures(self) -> None:
        """Raise ``TileFailures`` naming the first failed tiles and their reasons, if any tile failed."""
        if not self.failed:
            return
        listed = "; ".join(f"tile {k}: {v}" for k, v in list(self.failures.items())[:5])
        more = f" (and {self.failed - 5} more)" if self.failed > 5 else ""
        written = self.computed - self.failed
        others = f"the other {written} are written" if written else "no tile was written"
        raise TileFailures(
            f"{self.failed} tile(s) failed of {self.computed} computed ({listed}{more}); {others}. "
            f"Fix the input and re-run the same command: only unfinished tiles are computed", self.failures)

    def __str__(self) -> str:
        text = (f"{self.store}: {self.planned} tiles planned, {self.already_finished} already finished; "
                f"computed {self.computed}: done {self.done}, skipped {self.skipped}, failed {self.failed} "
                f"in {self.seconds:.1f}s ({self.mpx_per_s:.2f} Mpx/s, {self.executor})")
        if self.damaged:
            listed = ", ".join(f"tile {k[0]},{k[1]}: {v}" for k, v in list(self.damaged.items())[:3])
            text += f"; {len(self.damaged)} damaged tile(s) recomputed ({listed}{' ...' if len(self.damaged) > 3 else ''})"
        return text


def prepare(mosaic, model=None, out=None, *, bbox=None, bbox_crs="EPSG:4326", tile: int = DEFAULT_TILE,
            halo: int | None = None, screen: bool = True, storage_options: dict | None = None,
            tile_mask: np.ndarray | None = None, allow_new_sources: bool = False,
            bands=None, precision: str = "fp32", compile: bool = False) -> tuple[Plan, TileJob, MapStore]:
    """Plan a run and open (or create) its store — no torch, and of the pixels only a few small windows.

    The model's input bands are picked from the mosaic by name, or as ``bands`` says (a list of mosaic bands in the
    model's order, or a mapping model band → mosaic band; ``reefmap.sources.bands``): workers read only those. Before
    the store is touched, a few windows of them are read and their type and values checked against the model's
    (``check_values``: ``InputValuesMismatch``); a band the mosaic lacks is ``BandMismatch``.

    An existing store must have been made with the same grid, model, parameters and input (its identity; paths
    without credentials plus a fingerprint of the input's metadata): another input is refused (``StoreMismatch``)
    unless ``allow_new_sources``, which extends the map with it (recorded in its provenance). ``precision`` and
    ``compile`` (the model's numerics, see ``TorchSegmenter``) are part of the identity too: a resumed run cannot mix
    precisions."""
    from reefmap.model.bundle import read_bundle
    from reefmap.sources.bands import check_values, model_input, sample_windows
    from reefmap.sources.base import public_spec, reader_of, source_identity

    if out is None:
        raise InvalidParameter("no output store given; pass out= (a path or URL ending in .zarr)")
    reader = reader_of(mosaic)
    meta = read_bundle(model)
    if bbox is not None and is_geographic(bbox_crs):
        bbox = BBox.parse_lonlat(list(bbox) if isinstance(bbox, BBox) else bbox)
    tile = fit_tile(positive_int("tile", tile), reader.geobox.shape, meta.size_multiple)
    halo = meta.halo if halo is None else int(halo)
    if halo < meta.receptive_radius:
        raise InvalidParameter(
            f"halo {halo} px is smaller than model {meta.name!r}'s receptive radius {meta.receptive_radius} px: tiles "
            f"would show seams; use --halo {meta.halo} (the bundle's default)"
        )
    plan = plan_tiles(reader.geobox, tile, halo, bbox=bbox, bbox_crs=bbox_crs, size_multiple=meta.size_multiple, mask=tile_mask)
    clear_chunk_cache()  # the values check reads the source as it is now, not blocks an earlier run decoded
    windows = sample_windows(plan.tiles(), lambda t: plan.grid.window(tuple(t)))
    reader = model_input(reader, meta.bands, bands, windows, meta.name)
    check_values(reader, windows, meta.source_data_type, meta.valid_range, meta.name)
    numerics = inference_identity(precision, compile)
    identity = {"model": meta.sha256, "halo": halo, "screen": bool(screen), "bands": list(meta.bands),
                "sources": [source_identity(reader)], **numerics}
    provenance = {
        "model": meta.provenance(),
        SCHEME_KEY: meta.scheme.to_json(),
        "reefmap_version": code_version(),
        "sources": [public_spec(reader.spec())],  # never credentials: the store's attributes are public
        "parameters": {"tile": int(tile), "halo": halo, "screen": bool(screen), "bbox": None if bbox is None else list(map(float, _bbox_list(bbox))),
                       "precision": precision, "compile": bool(compile)},
    }
    with store_writes(urls.normalize(out)):
        store = MapStore.create_or_open(out, plan.grid, identity, provenance, storage_options,
                                        allow_new_sources=allow_new_sources)
        check_inference(store, numerics)
        store.record_plan(plan)
    job = TileJob(reader_spec=reader.spec(), bundle=meta.path, store=store, screen=bool(screen), precision=precision,
                  compile=bool(compile))
    return plan, job, store


def inference_identity(precision: str = "fp32", compile: bool = False) -> dict:
    """The model's numerics as a store identity entry: ``{}`` for the default (fp32, not compiled), so that maps
    made before these options existed resume as they are; else ``{"inference": {"precision", "compile"}}``."""
    precision = check_precision(precision)
    if precision == "fp32" and not compile:
        return {}
    return {"inference": {"precision": precision, "compile": bool(compile)}}


def check_inference(store: MapStore, numerics: dict) -> None:
    """Refuse a default-numerics run into a store made with other numerics (the store's identity check compares
    only the keys a run has, and a default run has no ``inference`` entry)."""
    have = store.attrs.get("identity", {}).get("inference")
    if have is not None and not numerics:
        raise StoreMismatch(
            f"store {urls.redact(store.url)!r} was computed with precision {have['precision']!r}"
            f"{' and torch.compile' if have['compile'] else ''}; refusing to mix it with fp32: re-run with "
            f"--precision {have['precision']}{' --compile' if have['compile'] else ''}, or use a new --out")


def fit_tile(tile: int, shape: Shape, size_multiple: int = 1) -> int:
    """``tile``, or, when it is larger than both the mosaic and the default tile, the smallest tile (a multiple of
    the model's ``size_multiple``, at least the default) that holds the whole mosaic: a tile is a Zarr chunk, and a
    larger one only costs memory and time (100000 px on a 718 x 791 mosaic: 152 s and killed workers)."""
    enough = -(-max(*shape, DEFAULT_TILE) // size_multiple) * size_multiple
    if tile <= enough:
        return tile
    log.warning(f"reefmap: tile {tile} px is larger than the mosaic ({shape.y} x {shape.x} px): using tile {enough}, "
                "one tile for the whole mosaic")
    return enough


def _bbox_list(bbox):
    return bbox if isinstance(bbox, BBox) else BBox.parse(bbox)


@dataclass(frozen=True)
class RunOptions:
    """How a plan is executed (not what is computed)."""

    batch: int = 1  #: tiles per task
    max_in_flight: int | None = None  #: tasks in flight at once; None: the executor's depth (``depth()``)
    progress: bool = True  #: a progress bar on stderr
    retry_failed: bool = True  #: compute again the tiles that failed in an earlier run
    verify: bool = False  #: check the finished tiles' chunks by checksum (not only existence and size) first


def execute(plan: Plan, job: TileJob, store: MapStore, executor: InProcess | Distributed | None = None,
            options: RunOptions = RunOptions(), *, stop=None, on_outcome=None,
            states: np.ndarray | None = None, damaged: dict | None = None) -> RunSummary:
    """Compute the plan's unfinished tiles on ``executor`` (:mod:`reefmap.execute.executors`; None: a thread of this
    process) and record each tile's state in the store. Finished tiles are never recomputed.

    The tiles stream through :func:`~reefmap.execute.loop.submit_bounded` in groups of ``options.batch``:
    ``stop`` (a ``threading.Event``) ends the run early and cleanly (nothing new is submitted, tiles in flight finish;
    their writes are idempotent, so an abandoned one is simply redone by the next run) and the summary says
    ``stopped``. ``on_outcome`` is called with each ``TileOutcome``. ``states``: the store's tile states when the
    caller has just read them (else they are read here, and the finished tiles checked: existence and size of their
    chunks, or their checksums with ``options.verify``; damaged ones are recomputed and listed in ``damaged``;
    a caller passing checked ``states`` passes the ``damaged`` it found with them). At the end (unless stopped)
    the map's existing overviews are brought up to date with the tiles that finished (``refresh_store_overviews``).
    """
    if executor is None:
        with InProcess() as ex:
            return execute(plan, job, store, ex, options, stop=stop, on_outcome=on_outcome, states=states,
                           damaged=damaged)
    t0 = time.perf_counter()
    damaged = dict(damaged or {})
    if states is None:
        states, damaged = states_for_run(store, full=options.verify)
    finished = is_finished(states) if options.retry_failed else (states != TileState.PENDING)
    tiles = np.argwhere(plan.remaining(finished))
    progress = RunProgress(plan.count, plan.count - len(tiles), show="bar" if options.progress else None)
    parts = cache_order(tiles, band=cache_band(plan, job), parts=executor.parts)
    part_of_row = {int(r): p for p, part in enumerate(parts) for r in np.unique(part[:, 0])}
    submit_bounded(interleave(parts, max(1, options.batch)), plan, job, executor,
                   limit=executor.depth(options.max_in_flight), stop=stop,
                   on_outcome=chain(progress.on_outcome, on_outcome), part_of=lambda g: part_of_row[int(g[0][0])])
    progress.close()
    stopped = bool(stop is not None and stop.is_set() and progress.n < len(tiles))
    if not stopped:
        refresh_store_overviews(store)
    return RunSummary(
        store=urls.redact(store.url), planned=plan.count, already_finished=plan.count - len(tiles), computed=progress.n,
        done=progress.counts["done"], skipped=progress.counts["skipped"], failed=progress.counts["failed"],
        seconds=time.perf_counter() - t0, megapixels=progress.pixels / 1e6, failures=dict(progress.failures),
        stopped=stopped, damaged=damaged, executor=INPROCESS if isinstance(executor, InProcess) else "cluster",
    )


def cache_band(plan: Plan, job: TileJob) -> int:
    """The width (tiles) of the column bands that ``cache_order`` walks: about three tile rows of a band (the rows a
    halo'd window touches) fit in a worker's source-chunk cache (the option ``chunk_cache_mb``); 0 (the whole
    width) without a cache."""
    from reefmap.sources.base import open_reader

    budget = get_option("chunk_cache_mb") * 2**20
    reader = open_reader(job.reader_spec)
    tile_bytes = len(reader.band_names) * np.dtype(reader.dtype).itemsize * plan.grid.tile ** 2
    return 0 if budget <= 0 else max(1, int(budget // (3 * tile_bytes)) - 2)


def interleave(parts: list[np.ndarray], batch: int) -> Iterator[np.ndarray]:
    """Groups of ``batch`` tiles taken from each of ``parts`` in turn (each part keeps its order)."""
    chunks = [[part[i:i + batch] for i in range(0, len(part), batch)] for part in parts]
    for i in range(max(map(len, chunks), default=0)):
        yield from (c[i] for c in chunks if i < len(c))


def refresh_store_overviews(store: MapStore) -> None:
    """Bring the store's existing overviews up to date (``refresh_overviews``: only the chunks over tiles whose state
    changed; nothing when none did or the map has none). A failure is logged, not raised: the tiles are written, and
    a query at a stale level says how many of its tiles are stale."""
    try:
        r = refresh_overviews(store)
    except Exception as e:  # noqa: BLE001 - derived data: never fail a finished run because of it
        log.warning(f"{urls.redact(store.url)}: the map's overviews could not be refreshed ({type(e).__name__}: "
                    f"{urls.redact_text(str(e))}); refresh them with `reefmap overviews {urls.redact(store.url)}`")
        return
    if r is not None and not r["up_to_date"]:
        log.info(f"{urls.redact(store.url)}: overviews refreshed for {r['tiles_updated']} tiles "
                 f"({r['chunks_written']} chunks)")


def run(mosaic, model=None, out=None, *, bbox=None, bbox_crs="EPSG:4326", tile: int = DEFAULT_TILE, halo: int | None = None,
        screen: bool = True, client: Any = None, workers: int | None = None, batch: int | None = None,
        max_in_flight: int | None = None, progress: bool = True, storage_options: dict | None = None,
        raise_on_failure: bool = True, allow_new_sources: bool = False,
        verify: bool = False, bands=None, precision: str = "fp32", compile: bool = False) -> RunSummary:
    """Map ``mosaic`` with ``model`` into the Zarr store ``out``; resumable and idempotent.

    ``client`` (the same meaning as in ``run_batch``, see :func:`~reefmap.execute.executors.open_executor`):
    None (default) launches the embedded default profile ``"local"``, a LocalCluster of ``workers`` processes (default
    one per core), for this call; ``"inprocess"`` computes in a thread of this process (no dask); a profile name or
    file (``"slurm-gpu"``) is launched for this call with ``workers`` workers (SLURM jobs); a scheduler address is
    connected to; a ``distributed.Client`` is used as it is. A map with nothing left to compute launches no cluster
    and writes nothing; with ``client=None`` and no ``workers``, a small job (fewer output megapixels to compute than
    the option ``inprocess_below_mpx``, :func:`small_job`) computes in this process too: starting a cluster would
    cost more than it saves. The summary's ``executor`` says which ran. Raises ``TileFailures`` (after finishing every other tile) when some tiles failed; each is
    recorded in the store with its reason; ``StoreNotWritable`` when the map cannot be written (read-only, disk full).
    ``allow_new_sources``: extend an existing map made from another input with this one (else refused, see
    :func:`prepare`). Finished tiles are skipped after a cheap check that their chunks are there (existence and size;
    ``verify=True``: their checksums too, reading them): damaged ones are recomputed and listed in the summary's
    ``damaged``. ``batch``: tiles per task (their same-shaped blocks go to the device together, their states are
    recorded in one write); None: :func:`default_batch` (4 on a remote store, where each write is a round trip, and on
    a host with GPUs; else 1). ``precision``
    (``"fp32"``, ``"bf16"``, ``"fp16"``) and ``compile`` (``torch.compile``): the model's numerics, recorded in the
    map's provenance and identity (a map is never a mix of precisions). A tile's bytes do not depend on ``batch``.

    ``mosaic``: what ``open_mosaic`` returned, or a ``.sel``/``.isel`` of it (exactly that part is mapped, on its own
    grid). ``bands``: which mosaic bands feed the model, when their names are not the model's: a list in the model's
    order (``["B04", "B03", "B02"]``, or 1-based numbers) or a mapping (``{"red": 3, "green": 2, "blue": 1}``); see
    :func:`prepare` for the checks made before anything is written.
    """
    plan, job, store = prepare(mosaic, model, out, bbox=bbox, bbox_crs=bbox_crs, tile=tile, halo=halo, screen=screen,
                               storage_options=storage_options, allow_new_sources=allow_new_sources, bands=bands,
                               precision=precision, compile=compile)
    batch = positive_int("batch", batch) if batch is not None else default_batch(out, job.device)
    options = RunOptions(batch=batch, max_in_flight=max_in_flight, progress=progress, verify=verify)
    states, damaged = states_for_run(store, full=verify)  # finished tiles checked: damaged ones count as pending
    left = int(plan.remaining(is_finished(states)).sum())
    if not left:
        client = INPROCESS  # nothing left to compute: no cluster to launch
    elif client is None and workers is None and small_job(left * plan.grid.tile ** 2 / 1e6):
        client = INPROCESS
    with open_executor(client, jobs=workers) as executor:
        summary = execute(plan, job, store, executor, options, states=states, damaged=damaged)
    if raise_on_failure:
        summary.raise_for_failures()
    return summary


def small_job(megapixels: float) -> bool:
    """Whether a run of ``client=None`` computes ``megapixels`` (at most) faster in this process than on a cluster
    it would first start (seconds: worker processes, torch and the model loaded in each): fewer than the option
    ``inprocess_below_mpx``. Logged when so."""
    below = get_option("inprocess_below_mpx")
    if megapixels >= below:
        return False
    log.info(f"a small job ({megapixels:.1f} output Mpx, below the option inprocess_below_mpx = {below:g}): computing in "
             "this process, no cluster to start (pass client='local' or workers= for one)")
    return True


def run_config(cfg: RunConfig, *, client: Any = None, progress: bool = True,
               raise_on_failure: bool = True, allow_new_sources: bool = False,
               verify: bool = False) -> RunSummary:
    """:func:`run` as a ``RunConfig`` (``reefmap run`` flags or YAML) says: its mosaic files opened as one mosaic."""
    from reefmap.sources import open_mosaic

    mosaic = open_mosaic(list(cfg.mosaic) if len(cfg.mosaic) > 1 else cfg.mosaic[0], crs=cfg.crs)
    return run(mosaic, cfg.model, cfg.out, bbox=cfg.bbox, tile=cfg.tile, halo=cfg.halo, screen=cfg.screen,
               client=client, workers=cfg.workers, batch=cfg.batch, progress=progress,
               raise_on_failure=raise_on_failure, allow_new_sources=allow_new_sources, verify=verify, bands=cfg.bands,
               precision=cfg.precision, compile=cfg.compile)
