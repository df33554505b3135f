"""Global runs on the command line: ``reefmap plan`` and the batch job of ``pipelines/global_run.py``.

``reefmap plan CONFIG.yaml [--mask M] [--json]``: what a global run would compute, without computing anything.
Wired into ``reefmap.cli.main`` by ``add_commands(sub)``. Imports neither torch nor the mosaic: planning is the
grid arithmetic plus one tile-resolution rasterization of the candidate mask.

``global_run_main(argv)``: one batch job (``python pipelines/global_run.py CONFIG ...``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys


def add_commands(subparsers) -> None:
    """Register ``plan`` on the ``reefmap`` sub-command parser."""
    p = subparsers.add_parser(
        "plan", help="show the tile grid and how many tiles a global-run config plans (computes nothing)",
        description="Print the grid (CRS, pixel size, tile size, tiles wide x tall), the tiles in it, the tiles that "
                    "survive the candidate mask (and region), and how long planning took. Nothing is computed: no "
                    "store is created, no mosaic opened, no model loaded.")
    p.add_argument("config", help="a global-run YAML (e.g. pipelines/configs/global-l15.yaml)")
    p.add_argument("--mask", help="candidate mask file (overrides the config's mask: and $REEFMAP_MASK); 'none' for "
                                  "no mask")
    p.add_argument("--buffer-km", type=float, help="buffer around vector mask features, km (overrides buffer_km:)")
    p.add_argument("--json", action="store_true", help="print a JSON object (tiles_total, tiles_planned, grid, mask, ...)")
    p.set_defaults(fn=cmd_plan)


def cmd_plan(a: argparse.Namespace) -> int:
    from reefmap.config import GlobalRunConfig
    from reefmap.execute.batch import format_plan, plan_report

    d = plan_report(GlobalRunConfig.from_yaml(a.config, mask=a.mask, buffer_km=a.buffer_km))
    print(json.dumps(d, indent=2) if a.json else format_plan(d))
    return 0


def global_run_main(argv: list[str] | None = None) -> int:
    """``python pipelines/global_run.py CONFIG [--mask M] [--out S] [--profile P] [--jobs N] ...``"""
    from reefmap.errors import ReefmapError
    from reefmap.config import GlobalRunConfig
    from reefmap.errors import AbandonRun
    from reefmap.execute.batch import EXIT_STOPPED, EXIT_USAGE, run_job

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
        s = run_job(cfg, order_seed=a.order_seed)
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
        logging.getLogger("reefmap.execute.batch").warning(
            f"stopped with {s.remaining} tiles left: resubmit the same job to continue")
    return s.exit_code


def _abs(p: str | None) -> str | None:
    """A path flag is relative to the working directory (config keys are relative to the config file)."""
    if p is None or "://" in p:
        return p
    return os.path.abspath(p)
