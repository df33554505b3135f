"""Halo'd tiled inference: the block kernel and the tile runner's steps.

``predict_block`` turns a raw halo'd block into the encoded layers of its core (normalise → screen →
model → encode; on a CUDA model the normalisation and encoding run on the device too, see ``uses_device_path``).
``run_tiles`` is the per-tile task of the tile runner: it reads its own halo'd window (``read_tiles``), predicts
and trims (``predict_tiles``) and writes (``write_tiles``). The notebook face, ``reefmap.compute.segment``, runs
the same kernel with ``map_overlap``; with ``halo >= the model's receptive radius`` both give the same pixels
whatever the tile size. torch is imported only when the model runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from reefmap.classes import class_key
from reefmap.compute import kernels
from reefmap.errors import BandMismatch, DeviceOutOfMemory
from reefmap.geometry.grid import Window
from reefmap.model.segmenter import StepClock, load_model
from reefmap.redaction import redact_text
from reefmap.sources.base import open_reader
from reefmap.store.format import SCREEN_STATES, TileState

def screen_block(block: np.ndarray, meta, nodata) -> tuple[TileState, int] | None:
    """Cheap emptiness test of a raw block: all nodata, or every valid pixel inside one class's colour box
    (``meta.screen``, measured on the training data; it names classes of the bundle's scheme, each a deep-water or
    land class: ``SCREEN_STATES``). Returns ``(state, class code)`` or None to infer."""
    if kernels.all_nodata(block, nodata):  # the common empty tile (collars, gaps, ocean outside a scene): one pass
        return TileState.SKIPPED_NODATA, 0
    names = list(meta.screen)
    boxes = np.array([meta.screen[n] for n in names], dtype=np.float64).reshape(len(names), block.shape[0], 2) \
        if names else np.zeros((0, block.shape[0], 2))
    counts = kernels.screen_counts(block, boxes, nodata, meta.valid_range)
    n_valid = counts[-1]
    if n_valid == 0:
        return TileState.SKIPPED_NODATA, 0
    for name, n in zip(names, counts[:-1]):
        if n == n_valid:
            return SCREEN_STATES[class_key(name)], meta.scheme.code_of(name)
    return None


def predict_block(block: np.ndarray, model, nodata, core: Window | None = None, screen: bool = True,
                  device_path: bool | None = None):
    """Raw ``(band, y, x)`` block → ``(reef_probability u8, classification u8, TileState)`` of its ``core``."""
    return predict_blocks([block], model, nodata, [core], screen, device_path)[0]


def uses_device_path(model, device_path: bool | None = None) -> bool:
    """Whether ``predict_blocks`` runs the device path (``model.predict_encoded``: raw values to the model's device,
    two uint8 layers back) rather than the numba kernels around ``model.predict``: ``device_path`` when given (tests
    run the device path on CPU tensors), else when the model runs on a CUDA device."""
    if device_path is not None:
        return bool(device_path)
    device = getattr(model, "device", None)
    return getattr(device, "type", None) == "cuda"


def predict_blocks(blocks, model, nodata, cores, screen: bool = True, device_path: bool | None = None,
                   timings: dict | None = None):
    """``predict_block`` over several blocks, same-shaped blocks together (one copy and one per-pixel pass per
    group on the device path; the network still sees one block at a time, see ``TorchSegmenter``).

    ``device_path``: see ``uses_device_path``. ``timings`` (optional) gets the seconds of each step added (screen,
    normalize, model, encode; h2d and d2h on the device path)."""
    meta = model.meta
    on_device = uses_device_path(model, device_path)
    results: list = [None] * len(blocks)
    todo: dict[tuple, list[int]] = {}
    prepared = {}
    clock = StepClock(timings)
    for i, (block, core) in enumerate(zip(blocks, cores)):
        if block.shape[0] != len(meta.bands):
            raise BandMismatch(
                f"the mosaic has {block.shape[0]} bands but model {meta.name!r} expects {len(meta.bands)} "
                f"({', '.join(meta.bands)}); select those bands (e.g. mosaic.sel(band=[...])) or use a matching model"
            )
        core = core or Window(0, block.shape[1], 0, block.shape[2])
        hit = screen_block(block, meta, nodata) if screen else None
        clock.lap("screen")
        if hit is not None and hit[0] == TileState.SKIPPED_NODATA:
            results[i] = (*kernels.encode_nodata(core.shape), hit[0])
            continue
        if hit is not None:
            _, valid = kernels.normalize(block[(slice(None), *core.slices)], meta.kernel_scaling(), nodata, meta.valid_range)
            results[i] = (*kernels.encode_constant(valid, hit[1]), hit[0])
            continue
        if on_device:
            prepared[i] = (block, None, core)
        else:
            x, valid = kernels.normalize(block, meta.kernel_scaling(), nodata, meta.valid_range)
            prepared[i] = (x, valid, core)
            clock.lap("normalize")
        todo.setdefault(block.shape, []).append(i)
    value, has_nodata = kernels.nodata_args(nodata)
    for shape, idxs in todo.items():
        if on_device:  # the raw blocks go to the device as they are (one copy, into pinned memory on CUDA)
            layers = model.predict_encoded([prepared[i][0] for i in idxs], value if has_nodata else None,
                                           [prepared[i][2].slices for i in idxs], timings)
            for i, (prob, cls) in zip(idxs, layers):
                results[i] = (prob, cls, TileState.DONE)
            clock.lap(None)
            continue
        probs = model.predict(np.stack([prepared[i][0] for i in idxs]))
        clock.lap("model")
        for j, i in enumerate(idxs):
            _, valid, core = prepared[i]
            rs, cs = core.slices
            results[i] = (*kernels.encode(probs[j][:, rs, cs], valid[rs, cs], meta.reef_channels, meta.class_values),
                          TileState.DONE)
        clock.lap("encode")
    return results


# --- the tile-runner face -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TileJob:
    """Everything a worker needs to compute tiles: small, picklable, no open handles or weights."""

    reader_spec: dict = field(repr=False)  # may hold credentials: never shown
    bundle: str
    store: object  # MapStore (pickles as its URL)
    screen: bool = True
    device: str | None = None
    precision: str = "fp32"  #: the model's precision (``reefmap.checks.PRECISIONS``)
    compile: bool = False  #: the network through ``torch.compile``
    device_path: bool | None = None  #: see ``uses_device_path`` (None: on a CUDA model)


@dataclass(frozen=True)
class TileOutcome:
    index: tuple[int, int]
    state: int
    pixels: int
    seconds: float
    error: str | None = None
    #: seconds per step of the tile's group: read, screen, normalize, h2d, model, d2h, encode, predict_other, write, mark
    timings: dict = field(default_factory=dict)


@dataclass
class TileBatch:
    """A group of tiles between the steps of ``run_tiles``: per tile, the raw block (after ``read_tiles``), the
    encoded ``(prob, cls, state)`` (after ``predict_tiles``), or the error message of a failed tile."""

    tasks: list
    items: list
    timings: dict = field(default_factory=dict)


class _Failed(str):
    """A tile's error message, carried through the steps in place of its pixels."""


def _failure(error: BaseException) -> _Failed:
    """The error message of a failed tile, its URLs redacted (it is recorded in the store and shown)."""
    return _Failed(redact_text(f"{type(error).__name__}: {error}"))


def read_tiles(job: TileJob, tasks) -> TileBatch:
    """Step 1 (I/O): each tile's halo'd window; a corrupt/unreadable input fails that tile only."""
    t0 = time.perf_counter()
    reader = open_reader(job.reader_spec)
    items = []
    for task in tasks:
        try:
            items.append(reader.read(task.read))
        except Exception as e:
            items.append(_failure(e))
    return TileBatch(list(tasks), items, {"read": time.perf_counter() - t0})


def predict_tiles(job: TileJob, batch: TileBatch) -> TileBatch:
    """Step 2 (the model; the only step that needs the GPU): screen, normalise, predict, trim, encode."""
    t0 = time.perf_counter()
    ok = [i for i, it in enumerate(batch.items) if not isinstance(it, _Failed)]
    items = list(batch.items)
    steps: dict = {}
    if ok:
        model = load_model(job.bundle, device=job.device, precision=job.precision, compile=job.compile)
        nodata = open_reader(job.reader_spec).nodata
        try:
            results = predict_blocks([items[i] for i in ok], model, nodata, [batch.tasks[i].core for i in ok],
                                     job.screen, job.device_path, steps)
        except (BandMismatch, DeviceOutOfMemory):  # the run's configuration is wrong, not this tile
            raise
        except Exception as e:
            results = [_failure(e)] * len(ok)
        for i, r in zip(ok, results):
            items[i] = r
    steps["predict_other"] = time.perf_counter() - t0 - sum(steps.values())  # model loading, opening the reader
    return TileBatch(batch.tasks, items, {**batch.timings, **steps})


def write_tiles(job: TileJob, batch: TileBatch) -> list[TileOutcome]:
    """Step 3 (I/O): write each tile's layers and their proof, then its state (FAILED with the reason for a failed
    tile)."""
    store = job.store
    done, writes, marks = [], [], []
    for task, item in zip(batch.tasks, batch.items):
        if isinstance(item, _Failed):
            marks.append((task.index, TileState.FAILED, str(item)))
            done.append((task, int(TileState.FAILED), 0, str(item)))
            continue
        prob, cls, state = item
        writes.append((task.write, prob, cls))  # every finished tile: its chunks (nodata ones too), then its proof
        marks.append((task.index, state, None))
        done.append((task, int(state), task.write.shape.y * task.write.shape.x, None))
    steps: dict = {}
    clock = StepClock(steps)
    store.write_tiles(writes)
    clock.lap("write")
    store.mark_many(marks)  # the states of the task's tiles, all at once, after their data and proofs
    clock.lap("mark")
    timings = {**batch.timings, **steps}
    seconds = sum(timings.values())
    return [TileOutcome(tuple(task.index), state, px, seconds, err, timings) for task, state, px, err in done]


def run_tiles(job: TileJob, tasks) -> list[TileOutcome]:
    """Read, predict, trim, write and mark each tile of ``tasks`` (one model forward per same-shaped batch).

    A tile whose read or prediction fails is recorded FAILED with the reason (other tiles go on); the
    state of every tile is written only after its pixels. On GPU workers ``execute`` submits the three
    steps as separate tasks instead, so that only ``predict_tiles`` holds the GPU.
    """
    return write_tiles(job, predict_tiles(job, read_tiles(job, tasks)))
