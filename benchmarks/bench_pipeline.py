"""Pipeline vs device ceiling vs bare model, in one run on the device this machine has (issue 11 item 7).

For each model (``--models``: the demo bundle; a ResNet-34 UNet with random weights, bundled in a temporary folder;
``fast``, a tiny_unet b4 l1 with random weights, far cheaper than its I/O: it shows the pipeline's own cost) it prints:
- the device ceiling: synthetic uint8 halo'd blocks in pinned host memory (on CUDA), batch ``--ceiling-batch``:
  copy in → normalise → forward → softmax → reef probability + argmax → two uint8 layers copied out, all on the device;
- the bare model as reefmap calls it (``predict_blocks`` on in-memory halo'd blocks, ``--batch`` per call: the device
  path on CUDA, the numba kernels around the network on CPU);
- the pipeline (a synthetic mosaic read from a Zarr store, written to a Zarr map, screen off) in-process and on the
  embedded default cluster (the ``local`` profile ``reefmap run`` launches, warm workers);
- their ratios to the ceiling; milliseconds per tile of each step (read, screen, normalize, h2d, model, d2h, encode,
  write, mark: ``TileOutcome.timings``); the read amplification (source bytes decoded / bytes needed, measured by
  ``reefmap.sources.read_stats`` in each pipeline run with the per-worker chunk cache, and, for reference, what it
  would be without the cache: each tile decoding every source chunk its halo'd window touches).
Every Mpx/s counts output (map) pixels; each tile computes its halo'd block. For the demo model it also prints the
halo's cost, the empty-tile screen, and a skipped empty tile vs an inferred one.

    .venv/bin/python benchmarks/bench_pipeline.py [--size 4096] [--tile 1024] [--workers N] [--device cuda|cpu]
        [--batch 4] [--precision fp32|bf16|fp16] [--models demo,resnet34_unet,fast] [--resnet-width 64] [--json]

On a GPU machine: ``benchmarks/device_check.sh`` (the wheels it needs, the device-path tests, then this on CUDA).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from timing import best_of

STEPS = ("read", "screen", "normalize", "h2d", "model", "d2h", "encode", "predict_other", "write", "mark")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--tile", type=int, default=1024)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="on a CPU: LocalCluster workers, and torch threads in-process (on a GPU host the cluster is "
                         "the embedded default: one worker per GPU)")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when torch sees one)")
    ap.add_argument("--batch", type=int, default=4, help="tiles per task / per predict_blocks call")
    ap.add_argument("--ceiling-batch", type=int, default=16)
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    ap.add_argument("--models", default="demo,resnet34_unet",
                    help="any of demo, resnet34_unet, fast (a model much cheaper than its I/O: the pipeline's own cost)")
    ap.add_argument("--resnet-width", type=int, default=64, help="the ResNet-34 UNet's width (64: 24.4 M parameters)")
    ap.add_argument("--rounds", type=int, default=2, help="best of this many timed runs")
    ap.add_argument("--no-cluster", action="store_true", help="skip the LocalCluster pipeline")
    ap.add_argument("--json", action="store_true", help="print one JSON object (the demo model's figures at the top level)")
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args(argv)

    import torch

    torch.set_num_threads(a.workers)
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    work = Path(a.workdir or tempfile.mkdtemp(prefix="reefmap-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    say = (lambda *s, **k: print(*s, file=sys.stderr, **k)) if a.json else print
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else f"{os.cpu_count()} CPU cores"
    say(f"# reefmap pipeline benchmark: {a.size}x{a.size} px synthetic mosaic (Zarr, chunks {a.tile}), tile {a.tile}, "
        f"device {device} ({name}), {a.workers} threads/workers, batch {a.batch}, {a.precision}, torch {torch.__version__}")
    say(f"# reproduce: .venv/bin/python benchmarks/bench_pipeline.py --size {a.size} --tile {a.tile} --workers "
        f"{a.workers} --device {device} --batch {a.batch} --precision {a.precision} --models {a.models} "
        f"--resnet-width {a.resnet_width} --ceiling-batch {a.ceiling_batch} --rounds {a.rounds}"
        + (" --no-cluster" if a.no_cluster else ""))
    say(f"# load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; OMP_WAIT_POLICY="
        f"{os.environ.get('OMP_WAIT_POLICY', '(unset)')} (on a shared, loaded CPU set it to PASSIVE: spinning OpenMP "
        "threads made forward passes 5-9x slower and the figures erratic)")
    src = synthetic_source(work / "mosaic.zarr", a.size, a.tile)
    makers = {"demo": lambda: None, "resnet34_unet": lambda: resnet_bundle(work / "resnet34_unet", a.resnet_width),
              "fast": lambda: fast_bundle(work / "fast")}
    bundles = {m: makers[m]() for m in a.models.split(",")}
    results = {}
    for model_name in a.models.split(","):
        results[model_name] = bench_model(model_name, bundles[model_name], src, device, a, work, say)
    out = {"device": device, "device_name": name, "torch": torch.__version__, "size": a.size, "tile": a.tile,
           "batch": a.batch, "precision": a.precision, "workers": a.workers, "load_average": os.getloadavg()[0]}
    first = results.get("demo") or next(iter(results.values()))
    out.update(first)
    out["models"] = results
    if a.json:
        print(json.dumps(out, indent=2))
    say(f"# inputs and maps under {work}")
    return 0


# --- inputs --------------------------------------------------------------------------------------------------------

def synthetic_source(path: Path, size: int, tile: int) -> Path:
    """A synthetic reef mosaic written once to a Zarr store, chunked by ``tile`` (the pipeline reads it back)."""
    from reefmap.synthetic.reader import synthetic_mosaic

    if not path.exists():
        m = synthetic_mosaic(size, seed=7, chunks=tile)
        ds = m.drop_attrs().drop_vars("band").to_dataset(name="image").rio.write_crs(m.rio.crs)
        ds["image"].attrs["_FillValue"] = 0
        ds.to_zarr(path, consolidated=False, zarr_format=3)
    return path


def resnet_bundle(path: Path, width: int) -> Path:
    """A ResNet-34 UNet bundle with seeded random weights, the demo model's bands and classes."""
    return random_bundle(path, {"name": "resnet34_unet", "width": width}, f"resnet34-unet-w{width}-random", 32)


def fast_bundle(path: Path) -> Path:
    """A model far cheaper than the I/O around it (tiny_unet b4 l1, random weights): on a CPU it stands in for a fast
    device, so that the pipeline's own cost shows (how close it gets to the bare model when the model is not the
    bottleneck)."""
    return random_bundle(path, {"name": "tiny_unet", "base": 4, "levels": 1}, "tiny-unet-b4-l1-random", 2)


def random_bundle(path: Path, arch: dict, name: str, multiple: int) -> Path:
    """A bundle of ``arch`` with seeded random weights and the demo model's bands and classes."""
    if path.exists():
        return path
    import torch

    from reefmap.model.architectures import analytic_receptive_radius, build_network
    from reefmap.model.bundle import read_bundle
    from reefmap.model.segmenter import save_bundle

    demo = read_bundle(None)
    arch = {**arch, "in_channels": len(demo.bands), "classes": len(demo.classes)}
    torch.manual_seed(0)
    radius = analytic_receptive_radius(arch)
    save_bundle(path, build_network(arch).eval(), {
        "name": name, "architecture": arch, "bands": list(demo.bands),
        "mean": [s["mean"] for s in demo.scaling], "std": [s["stddev"] for s in demo.scaling],
        "valid_range": list(demo.valid_range), "classes": list(demo.classes), "receptive_radius": radius,
        "halo": -(-radius // 16) * 16, "size_multiple": multiple,
        "training": {"data": "none (random weights, benchmark)"}})
    return path


# --- one model -----------------------------------------------------------------------------------------------------

def bench_model(model_name, bundle, src, device, a, work, say) -> dict:
    from reefmap.compute.tiles import predict_blocks, uses_device_path
    from reefmap.model.segmenter import load_model
    from reefmap.planning.plan import plan_tiles
    from reefmap.sources import open_mosaic
    from reefmap.sources.base import reader_of

    model = load_model(bundle, device=device, threads=a.workers, precision=a.precision)
    meta = model.meta
    mosaic = open_mosaic(str(src), chunks=a.tile)
    geobox = reader_of(mosaic).geobox
    plan = plan_tiles(geobox, a.tile, meta.halo, size_multiple=meta.size_multiple)
    tasks = list(plan.tasks())
    raw = mosaic.values
    params = sum(p.numel() for p in model.net.parameters())
    mpx = a.size * a.size / 1e6
    say(f"\n## {model_name}: {meta.name} ({params / 1e6:.2f} M parameters), halo {meta.halo}, "
        f"{len(tasks)} tiles, path: {'device' if uses_device_path(model) else 'numba kernels + model.predict'}")

    window = Counter((t.read.shape.y, t.read.shape.x) for t in tasks).most_common(1)[0][0]
    ceil = in_thread(ceiling, model, a.tile, window, a.ceiling_batch, a.rounds)
    # the bare model as reefmap calls it: in-memory halo'd blocks, --batch per call, screen off
    blocks = [np.ascontiguousarray(raw[(slice(None), *t.read.slices)]) for t in tasks]
    groups = [range(i, min(i + a.batch, len(tasks))) for i in range(0, len(tasks), a.batch)]
    bare_steps: dict = {}

    def bare_run(timings=None):
        for g in groups:
            predict_blocks([blocks[i] for i in g], model, 0, [tasks[i].core for i in g], False, timings=timings)

    in_thread(bare_run)  # warm-up (kernels, allocator)
    t_bare = in_thread(best_of, bare_run, a.rounds)
    in_thread(bare_run, bare_steps)
    bare = mpx / t_bare

    s_ip, t_ip, steps_ip, reads_ip = pipeline("inprocess", mosaic, bundle, device, a, work / f"{model_name}-inprocess")
    uncached = read_amplification(plan, src)
    res = {"ceiling_mpx_s": round(ceil, 3), "bare_mpx_s": round(bare, 3),
           "pipeline_inprocess_mpx_s": round(mpx / t_ip, 3), "pipeline_cluster_mpx_s": None,
           "read_amplification": reads_ip["read_amplification"], "read_amplification_cluster": None,
           "read_amplification_without_cache": uncached["ratio"], "reads": {"inprocess": reads_ip},
           "tiles": len(tasks), "halo": meta.halo,
           "parameters": params, "ceiling_window": list(window)}
    lines = [(f"device ceiling (batch {a.ceiling_batch} of {window[0]}x{window[1]}, uint8 in/out)", ceil, ""),
             ("bare model as reefmap calls it (in-memory blocks)", bare, ""),
             (f"pipeline in-process ({a.workers} threads, Zarr → Zarr)", mpx / t_ip, f"{s_ip.done} tiles")]
    if not a.no_cluster:
        s_lc, t_lc, steps_lc, reads_lc = pipeline("cluster", mosaic, bundle, device, a, work / f"{model_name}-cluster")
        res["pipeline_cluster_mpx_s"] = round(mpx / t_lc, 3)
        res["read_amplification_cluster"] = reads_lc["read_amplification"]
        res["reads"]["cluster"] = reads_lc
        layout = "one worker per GPU" if device.startswith("cuda") else f"{a.workers} workers"
        lines.append((f"pipeline, embedded default LocalCluster ({layout})", mpx / t_lc, f"{s_lc.done} tiles"))
    for label, v, note in lines:
        say(f"  {label:58s} {v:9.3f} Mpx/s  {v / ceil:6.2f} × ceiling  {v / bare:5.2f} × bare  {note}")
    if device == "cpu":
        say("  (on a CPU the 'ceiling' is the device path's torch arithmetic on batches, not an upper bound: the CPU "
            "path's numba kernels and one-block forward passes can beat it; compare with the bare model)")
    res["ratios_to_ceiling"] = {k[:-6]: round(res[k] / ceil, 3) for k in
                                ("bare_mpx_s", "pipeline_inprocess_mpx_s", "pipeline_cluster_mpx_s") if res[k]}
    res["ms_per_tile"] = {"bare": per_tile_ms(bare_steps, len(tasks)), "inprocess": steps_ip}
    if not a.no_cluster:
        res["ms_per_tile"]["cluster"] = steps_lc
    say("  ms per tile   " + "".join(f"{k:>9s}" for k in STEPS))
    for where, st in res["ms_per_tile"].items():
        say(f"  {where:12s}" + "".join(f"{st.get(k, 0.0):9.2f}" for k in STEPS))
    say(f"  read amplification of the tiles' reads (source bytes decoded / bytes needed, measured): in-process "
        f"{res['read_amplification']}, LocalCluster {res['read_amplification_cluster']}; without the chunk cache "
        f"{uncached['ratio']:.2f} (halo'd window / tile {uncached['window_ratio']:.2f}; source chunks "
        f"{uncached['source_chunks']}). Before them the values check decoded "
        f"{reads_ip['values_check_decoded_bytes'] / reads_ip['needed_bytes']:.3f} × the bytes needed (fixed: "
        "the source chunks of up to 4 sampled windows, whatever the job's size)")
    if model_name == "demo":
        res.update(demo_extras(model, mosaic, raw, blocks, plan, a, work, say))
    return res


def in_thread(fn, *args):
    """``fn(*args)`` in a new thread, as the in-process runner computes: on a CPU shared with other processes, torch's
    OpenMP threads spin-waiting made the same forward pass 5-9x slower in the main thread than in a worker thread
    (2 loaded cores; OMP_WAIT_POLICY=PASSIVE removed the difference), which would skew the comparison."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as ex:
        return ex.submit(fn, *args).result()


def ceiling(model, tile: int, window: tuple[int, int], batch: int, rounds: int) -> float:
    """Output Mpx/s of the whole per-tile computation on the device for synthetic uint8 halo'd blocks of shape
    ``window`` (the plan's commonest read window; a tile x tile core of each is the output): pinned host input (on
    CUDA) → device → normalise + mask → forward (one batch) → softmax → encode → uint8 layers to the host."""
    import torch

    from reefmap.model.segmenter import device_encode, device_normalize

    meta, dev = model.meta, model.device
    cuda = dev.type == "cuda"
    ny, nx = window
    oy, ox = (ny - tile) // 2, (nx - tile) // 2
    m = meta.size_multiple
    x = torch.randint(1, 256, (batch, len(meta.bands), ny, nx), dtype=torch.uint8)
    x = x.pin_memory() if cuda else x
    out = torch.empty((batch, 2, tile, tile), dtype=torch.uint8, pin_memory=cuda)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(model.precision)

    def step():
        with torch.inference_mode():
            xx, valid = device_normalize(x.to(dev, non_blocking=cuda), meta.kernel_scaling(), 0, meta.valid_range)
            xx = torch.nn.functional.pad(xx, (0, (-nx) % m, 0, (-ny) % m)).contiguous(memory_format=torch.channels_last)
            with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                logits = model.net(xx)
            probs = torch.softmax(logits.float(), dim=1)[:, :, :ny, :nx]
            prob, cls = device_encode(probs, valid, meta.reef_channels, meta.class_values)
            out.copy_(torch.stack([prob, cls], 1)[:, :, oy:oy + tile, ox:ox + tile], non_blocking=cuda)
            if cuda:
                torch.cuda.synchronize(dev)

    step()
    return batch * tile * tile / best_of(step, rounds) / 1e6


def pipeline(kind, mosaic, bundle, device, a, base: Path):
    """Best of ``a.rounds`` runs of the tile runner (after a warm-up run): its summary, seconds and ms per tile of
    each step. ``kind``: "inprocess" (a thread here) or "cluster" (the ``local`` profile, as ``reefmap run`` launches)."""
    import dataclasses

    from reefmap.execute.executors import Distributed, InProcess
    from reefmap.execute.runner import RunOptions, execute, prepare
    from reefmap.sources import read_stats, reset_read_stats

    client = None

    def once(executor, k):
        out = base.with_name(f"{base.name}-{k}.zarr")
        shutil.rmtree(out, ignore_errors=True)
        outcomes = []
        reset_read_stats(client)  # and empty chunk caches: each run reads its source afresh
        t = time.perf_counter()
        plan, job, store = prepare(mosaic, bundle, out, tile=a.tile, screen=False, precision=a.precision)
        check = read_stats()["decoded_bytes"]  # prepare's values check: up to 4 sampled windows, in this process
        reset_read_stats(client)  # the tiles' reads on their own
        job = dataclasses.replace(job, device=device)
        s = execute(plan, job, store, executor, RunOptions(batch=a.batch, progress=False), on_outcome=outcomes.append)
        return s, time.perf_counter() - t, outcomes, {**read_stats(client), "values_check_decoded_bytes": check}

    def rounds(executor):
        once(executor, "warm")  # model loading, kernel compilation
        runs = [once(executor, k) for k in range(a.rounds)]
        s, t, outcomes, reads = min(runs, key=lambda r: r[1])
        # a group's tiles share one timings dict (equal copies, once pickled from a worker): counted once
        groups = {tuple(sorted(o.timings.items())): o.timings for o in outcomes}
        total: dict = {}
        for tm in groups.values():
            for k, v in tm.items():
                total[k] = total.get(k, 0.0) + v
        return s, t, per_tile_ms(total, len(outcomes)), reads

    if kind == "inprocess":
        with InProcess() as ex:
            return rounds(ex)
    from reefmap.cluster import launch

    gpu = device.startswith("cuda")
    if not gpu:  # workers inherit it: workers x 1 thread = the bare model's threads
        os.environ["REEFMAP_INFERENCE_THREADS"] = "1"
    with contextlib.redirect_stdout(sys.stderr):  # its dashboard line: stdout is for --json
        # on a GPU host exactly what `reefmap run` launches (one worker per GPU fed by threads); on a CPU --workers
        client = launch("local") if gpu else launch("local", a.workers)
    try:
        return rounds(Distributed(client))
    finally:
        client.shutdown()
        os.environ.pop("REEFMAP_INFERENCE_THREADS", None)


def per_tile_ms(seconds: dict, tiles: int) -> dict:
    return {k: round(1e3 * v / max(tiles, 1), 3) for k, v in seconds.items()}


def read_amplification(plan, src: Path) -> dict:
    """Source bytes decoded / source bytes needed when each tile reads its halo'd window on its own: every source chunk
    the window touches is decoded whole (``source_chunks``: the Zarr chunk shape); needed: each planned source pixel
    once. ``window_ratio``: halo'd window pixels / tile pixels."""
    import zarr

    arr = zarr.open_array(str(src / "image"), mode="r")
    cb, cy, cx = arr.chunks
    ny, nx = arr.shape[1:]
    decoded = needed = window = 0
    for t in plan.tasks():
        r, w = t.read, t.write
        rows = range(r.row_start // cy, -(-r.row_stop // cy))
        cols = range(r.col_start // cx, -(-r.col_stop // cx))
        decoded += sum((min(ny, (i + 1) * cy) - i * cy) for i in rows) * sum((min(nx, (j + 1) * cx) - j * cx) for j in cols)
        needed += w.shape.y * w.shape.x
        window += r.shape.y * r.shape.x
    return {"ratio": round(decoded / needed, 3), "window_ratio": round(window / needed, 3),
            "source_chunks": [cy, cx], "bytes_decoded": decoded * arr.shape[0] * arr.dtype.itemsize,
            "bytes_needed": needed * arr.shape[0] * arr.dtype.itemsize, "measure": "from the plan and the source chunking"}


def demo_extras(model, mosaic, raw, blocks, plan, a, work, say) -> dict:
    """The halo's cost, the screen, and a skipped empty tile vs an inferred tile (same reader, model and store)."""
    from reefmap.compute.tiles import TileJob, predict_blocks, run_tiles
    from reefmap.execute.runner import run
    from reefmap.geometry.grid import GeoBox, Shape, Window
    from reefmap.planning.plan import plan_tiles
    from reefmap.sources import memory_reader
    from reefmap.store.format import TileState
    from reefmap.store.mapstore import MapStore

    meta, tile, halo = model.meta, a.tile, model.meta.halo
    tasks = list(plan.tasks())
    inner = [b for b, t in zip(blocks, tasks) if t.read.shape.y == tile + 2 * halo and t.read.shape.x == tile + 2 * halo][:4]
    cores = [Window(halo, halo + tile, halo, halo + tile)] * len(inner)
    t_halo = t_core = float("nan")
    if inner:
        t_halo = in_thread(best_of, lambda: predict_blocks(inner, model, 0, cores, False), a.rounds)
        bare_cores = [np.ascontiguousarray(b[:, halo:halo + tile, halo:halo + tile]) for b in inner]
        t_core = in_thread(best_of, lambda: predict_blocks(bare_cores, model, 0, [None] * len(inner), False), a.rounds)
        say(f"  halo overhead: pixels computed per output pixel {((tile + 2 * halo) / tile) ** 2:.3f}; measured time "
            f"ratio {t_halo / t_core:.3f}")
    out = work / "demo-screened.zarr"
    shutil.rmtree(out, ignore_errors=True)
    s_sc = run(mosaic, None, out, tile=tile, screen=True, client="inprocess", batch=a.batch, progress=False,
               precision=a.precision)
    say(f"  pipeline in-process, empty-tile screen on: {s_sc.mpx_per_s:.3f} Mpx/s ({s_sc.skipped} of {s_sc.computed} "
        "tiles skipped)")
    g = GeoBox(Shape(tile * 3, tile * 2), mosaic.rio.transform(), str(mosaic.rio.crs))
    arr = np.zeros((3, tile * 3, tile * 2), np.uint8)
    arr[:, 2 * tile:, :] = raw[:, :tile, : tile * 2]
    rd = memory_reader(arr, g, nodata=0, band_names=meta.bands)
    skip_plan = plan_tiles(g, tile, halo, size_multiple=meta.size_multiple)
    shutil.rmtree(work / "skip.zarr", ignore_errors=True)
    st = MapStore.create_or_open(work / "skip.zarr", skip_plan.grid, {"model": meta.sha256, "halo": halo}, {})
    job = TileJob(rd.spec(), meta.path, st, screen=True, device=str(model.device), precision=model.precision)
    empty, full = skip_plan.task((0, 0)), skip_plan.task((2, 0))
    in_thread(lambda: (run_tiles(job, [empty]), run_tiles(job, [full])))
    t_empty = in_thread(best_of, lambda: run_tiles(job, [empty]), 5)
    t_full = in_thread(best_of, lambda: run_tiles(job, [full]), a.rounds)
    state = TileState(run_tiles(job, [empty])[0].state).name
    say(f"  skipped empty tile: {t_empty * 1e3:.2f} ms vs inferred tile {t_full * 1e3:.1f} ms = "
        f"{100 * t_empty / t_full:.2f}% ({state})")
    cpu = in_thread(cpu_per_mpx, model, mosaic, plan, work)
    say(f"  CPU ms per output Mpx outside the model, one core (process time, best of 3, {len(tasks)} tiles): "
        + " + ".join(f"{k} {v:.2f}" for k, v in cpu.items() if k != "total") + f" = {cpu['total']:.2f}")
    return {"halo_time_ratio": round(t_halo / t_core, 3), "screened_inprocess_mpx_s": round(s_sc.mpx_per_s, 3),
            "skipped_tile_ms": round(t_empty * 1e3, 3), "inferred_tile_ms": round(t_full * 1e3, 3),
            "cpu_ms_per_mpx": cpu}


def cpu_per_mpx(model, mosaic, plan, work) -> dict:
    """CPU milliseconds per output Mpx of the steps around the model, on one core (numba at one thread): reading each
    tile's halo'd window (chunk cache emptied first: each source chunk decoded once), encoding the model's real
    probabilities of a tile into the two layers, writing them and marking the tile (a fresh map)."""
    import numba

    from reefmap.compute import kernels
    from reefmap.compute.tiles import TileBatch, TileJob, read_tiles, write_tiles
    from reefmap.sources import clear_chunk_cache
    from reefmap.sources.base import reader_of
    from reefmap.store.format import TileState
    from reefmap.store.mapstore import MapStore

    meta, reader = model.meta, reader_of(mosaic)
    tasks = list(plan.tasks())
    shutil.rmtree(work / "cpu.zarr", ignore_errors=True)
    store = MapStore.create_or_open(work / "cpu.zarr", plan.grid, {"model": meta.sha256, "halo": meta.halo}, {})
    job = TileJob(reader.spec(), meta.path, store, screen=False)
    task = max(tasks, key=lambda t: t.read.shape.y * t.read.shape.x)
    x, valid = kernels.normalize(reader.read(task.read), meta.kernel_scaling(), reader.nodata, meta.valid_range)
    rs, cs = task.core.slices
    probs, valid = model.predict(x[None])[0][:, rs, cs], valid[rs, cs]
    layers = kernels.encode(probs, valid, meta.reef_channels, meta.class_values)
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        def cpu_ms(step) -> float:
            best = float("inf")
            for _ in range(3):
                clear_chunk_cache()
                t = time.process_time()
                for task in tasks:
                    step(task)
                best = min(best, time.process_time() - t)
            return 1e3 * best

        ms = {"read": cpu_ms(lambda t: read_tiles(job, [t])),
              "encode": cpu_ms(lambda t: kernels.encode(probs, valid, meta.reef_channels, meta.class_values)),
              "write+mark": cpu_ms(lambda t: write_tiles(job, TileBatch([t], [(*layers, TileState.DONE)])))}
    finally:
        numba.set_num_threads(threads)
    mpx = sum(t.write.shape.y * t.write.shape.x for t in tasks) / 1e6
    out = {k: round(v / mpx, 2) for k, v in ms.items()}
    out["total"] = round(sum(ms.values()) / mpx, 2)
    return out


if __name__ == "__main__":
    sys.exit(main())
