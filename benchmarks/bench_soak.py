"""Soak: does memory stay flat over a long run? RSS of every process of a run (client, scheduler, each worker) at
the start, the middle and the end, and the growth per tile.

A synthetic mosaic (``reefmap.synthetic_mosaic``, generated on the workers: no input I/O) is mapped tile by tile on
a LocalCluster of ``--workers`` single-threaded workers, through the same calls as ``reefmap.run`` (``prepare``,
``open_executor``, ``execute``). RSS (resident set size, psutil when installed, else /proc) is sampled per process
when 10% of the tiles are done (the start: the cluster is up and each worker has loaded the model), at 55% and at
100%; growth per tile = (RSS at the end - RSS at the start) / tiles in between, per process and for the whole tree.
The LocalCluster's scheduler runs in the client process (its event loop thread), so "client" holds both; the
scheduler's own state is also printed (tasks, task groups, transition log length) to tell what grows there.

    .venv/bin/python benchmarks/bench_soak.py [--size 12288] [--tile 256] [--workers 2] [--no-screen]

The default (2,304 tiles of 256 px, screen on) runs in about 4 minutes on 2 CPU cores; the issue's run (20,736
tiles) is ``--size 36864``. Measured (``--size 16384``, 4,096 tiles, 2 shared CPU cores): with dask's worker
profiler on, the tree grew 39 KB per tile (workers 12.7 and 24.1 KB, client+scheduler 2.6 KB), and still 35 KB
per tile over the second half of the run; with it off (``reefmap.cluster.nanny``), 10.3 KB per tile from start to
end (mostly one worker's first half) and 3.6 KB per tile over the second half.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def rss(pid: int) -> int:
    """Resident set size of a process (bytes): psutil when installed, else /proc/PID/status."""
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss
    except ImportError:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    return 0


def processes(client) -> dict[str, int]:
    """name -> pid of the run's processes: the client (with the LocalCluster's scheduler and nannies) and each
    worker."""
    pids = client.run(os.getpid) if client is not None else {}
    return {"client+scheduler": os.getpid(), **{f"worker {i}": int(p) for i, (_, p) in enumerate(sorted(pids.items()))}}


def scheduler_state(client) -> str:
    def state(dask_scheduler):
        s = dask_scheduler
        return {"tasks": len(s.tasks), "task_groups": len(s.task_groups), "task_prefixes": len(s.task_prefixes),
                "transition_log": len(s.transition_log)}

    return ", ".join(f"{k} {v}" for k, v in client.run_on_scheduler(state).items())


def worker_state(client) -> str:
    def state(dask_worker):
        s = dask_worker.state
        return {"tasks": len(s.tasks), "log": len(s.log), "stimulus_log": len(s.stimulus_log)}

    return "; ".join(f"{k.split(':')[-1]}: " + ", ".join(f"{a} {b}" for a, b in v.items())
                     for k, v in client.run(state).items())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=12288, help="mosaic side (px)")
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-screen", action="store_true", help="run the model on every tile (no skipping)")
    a = ap.parse_args(argv)

    import reefmap
    from reefmap.execute.executors import open_executor
    from reefmap.execute.runner import RunOptions, execute, prepare

    cmd = "python benchmarks/bench_soak.py " + " ".join(sys.argv[1:] if argv is None else argv)
    mosaic = reefmap.synthetic_mosaic(a.size, seed=1)
    with tempfile.TemporaryDirectory(prefix="reefmap-soak-") as tmp:
        plan, job, store = prepare(mosaic, None, str(Path(tmp) / "soak.zarr"), tile=a.tile, screen=not a.no_screen)
        n = plan.count
        marks = {max(1, n // 10): "start", max(2, (n * 55) // 100): "middle", n: "end"}
        samples: dict[str, tuple[int, float, dict[str, int]]] = {}
        state_lines: list[str] = []
        with open_executor(None, jobs=a.workers) as ex:
            client = getattr(ex, "client", None)
            procs = processes(client)
            done = 0

            def on_outcome(o):
                nonlocal done
                done += 1
                if done in marks:
                    samples[marks[done]] = (done, time.perf_counter(), {k: rss(p) for k, p in procs.items()})
                    state_lines.append(f"  {marks[done]:6s} scheduler: {scheduler_state(client)}")
                    state_lines.append(f"  {marks[done]:6s} workers: {worker_state(client)}")

            summary = execute(plan, job, store, ex, RunOptions(progress=False), on_outcome=on_outcome)
    print(f"{cmd}\n{summary}")
    t0, s0, r0 = samples["start"][0], samples["start"][1], samples["start"][2]
    print(f"{'process':18s} " + " ".join(f"{k:>9s}" for k in ("start", "middle", "end")) + "   growth/tile")
    for name in procs:
        row = [samples[k][2][name] / 2**20 for k in ("start", "middle", "end")]
        per = (samples["end"][2][name] - r0[name]) / max(1, samples["end"][0] - t0)
        print(f"{name:18s} " + " ".join(f"{v:7.1f}MB" for v in row) + f"   {per / 1024:+8.2f} KB")
    tot = [sum(samples[k][2].values()) for k in ("start", "middle", "end")]
    per = (tot[2] - tot[0]) / max(1, samples["end"][0] - t0)
    print(f"{'all':18s} " + " ".join(f"{v / 2**20:7.1f}MB" for v in tot) + f"   {per / 1024:+8.2f} KB"
          f"   ({samples['end'][0] - t0} tiles between start and end, {samples['end'][1] - s0:.0f} s)")
    print("\n".join(state_lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
