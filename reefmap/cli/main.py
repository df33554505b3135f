"""The ``reefmap`` command line: argument parsing and printing only; every step is a library call."""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

from reefmap.errors import ReefmapError, TileFailures


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="a YAML run config (keys as the flags); flags override it")
    p.add_argument("--mosaic", nargs="+", action="extend", metavar="PATH_OR_URL",
                   help="input mosaic: path or URL (Zarr, GeoTIFF/COG); several files: --mosaic a.tif b.tif")
    p.add_argument("--model", help="model bundle directory (default: the shipped demo bundle)")
    p.add_argument("--out", help="output Zarr store (path or URL)")
    p.add_argument("--bbox", help="lon/lat box W,S,E,N to map, e.g. --bbox -78.5,24,-77.5,25 (default: the whole mosaic)")
    p.add_argument("--tile", type=int, help="tile = Zarr chunk size in pixels (default 1024)")
    p.add_argument("--halo", type=int, help="halo in pixels (default: what the model bundle needs)")
    p.add_argument("--workers", type=int, help="LocalCluster worker processes (default: one per core)")
    p.add_argument("--crs", help="target CRS when mosaic files differ in CRS")
    p.add_argument("--bands", help="the mosaic's bands for the model's when their names differ: model=mosaic pairs "
                   "(--bands red=3,green=2,blue=1) or mosaic bands in the model's order (--bands B04,B03,B02,B08); "
                   "names or 1-based numbers")
    p.add_argument("--no-screen", dest="screen", action="store_false", default=None, help="infer every tile (no empty-tile screen)")
    p.add_argument("--batch", type=int, help="tiles per task: their same-shaped blocks go to the device together and their states are written at once (default 1 on local disk, 4 on a remote store)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"),
                   help="the model's precision: fp32 (default) or bf16/fp16 autocast; recorded in the map, never mixed")
    p.add_argument("--compile", dest="compile", action="store_true", default=None,
                   help="run the network through torch.compile (compiles once per tile shape; recorded in the map)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--allow-new-sources", action="store_true",
                   help="extend an existing map made from another input with this mosaic (else refused)")
    p.add_argument("--verify", action="store_true", help="check the finished tiles' chunks by checksum before skipping them")


def cmd_run(a) -> int:
    from reefmap.config import RunConfig
    from reefmap.execute.runner import run_config

    over = {"mosaic": tuple(a.mosaic) if a.mosaic else None, "out": a.out, "model": a.model, "bbox": a.bbox,
            "tile": a.tile, "halo": a.halo, "workers": a.workers, "crs": a.crs, "screen": a.screen, "batch": a.batch,
            "bands": a.bands, "precision": a.precision, "compile": a.compile}
    if a.config:
        cfg = RunConfig.from_yaml(a.config, **over)
    else:
        cfg = RunConfig(**{k: v for k, v in over.items() if v is not None})
    summary = run_config(cfg, progress=not a.json, raise_on_failure=False, allow_new_sources=a.allow_new_sources,
                         verify=a.verify)
    print(json.dumps(summary.to_json(), indent=2) if a.json else summary)
    summary.raise_for_failures()
    return 0


def cmd_demo(a) -> int:
    from reefmap.execute.demo import run_demo

    result = run_demo(a.out, size=a.size, workers=a.workers, seed=a.seed)
    print(result["summary"])
    print(f"map: {result['store']}\nquick-look: {result['png']}\nopen it: reefmap.open_map({result['store']!r})")
    return 0


def cmd_status(a) -> int:
    from reefmap.store.status import format_status, status

    s = status(a.store)
    if a.map:
        from reefmap.viz.progress_map import progress_png

        s["map"] = str(progress_png(a.store, a.map))
    print(json.dumps(s, indent=2) if a.json else format_status(s) + (f"\n  map: {s['map']}" if a.map else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from reefmap.execute.demo import DEMO_SEED

    p = argparse.ArgumentParser(prog="reefmap", description="Map coral reefs from satellite imagery into a Zarr store.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="map a synthetic mosaic on the embedded default (in-process when small; a minute or two)")
    d.add_argument("--out", default=str(Path.cwd() / "out" / "demo"), help="output folder (default: ./out/demo)")
    d.add_argument("--size", type=int, default=3072, help="mosaic size in pixels (square)")
    d.add_argument("--workers", type=int, default=None)
    d.add_argument("--seed", type=int, default=DEMO_SEED,
                   help=f"the synthetic world (default {DEMO_SEED}: one the demo model never saw in training)")
    d.set_defaults(fn=cmd_demo)
    r = sub.add_parser("run", help="map a mosaic into a Zarr store (resumes an existing one)")
    _add_run_args(r)
    r.set_defaults(fn=cmd_run)
    s = sub.add_parser("status", help="tile counts of a map: planned, done, skipped, failed, pending")
    s.add_argument("store")
    s.add_argument("--json", action="store_true")
    s.add_argument("--map", metavar="PNG", help="also draw a world map of tile states into this PNG")
    s.set_defaults(fn=cmd_status)
    from reefmap.cli import bundle_cmds as cli_bundle
    from reefmap.cli import calval_cmds as cli_calval
    from reefmap.cli import experiment_cmds as cli_experiment
    from reefmap.cli import global_cmds as cli_global
    from reefmap.cli import query_cmds as cli_query
    from reefmap.cli import train_cmds as cli_train
    from reefmap.cli import verify_cmds as cli_verify

    cli_global.add_commands(sub)  # plan
    cli_query.add_commands(sub)  # query, stats, overviews
    cli_bundle.add_commands(sub)  # bundle create|inspect|validate|convert
    cli_verify.add_commands(sub)  # verify
    cli_calval.add_commands(sub)  # calval
    cli_train.add_commands(sub)  # train
    cli_experiment.add_commands(sub)  # experiment
    return p


#: flags whose value may start with "-" (a western or southern box): ``--bbox -78.5,24,-77.5,25``
VALUE_FLAGS = ("--bbox",)


def attach_values(argv: list[str]) -> list[str]:
    """``--bbox -78.5,24,...`` → ``--bbox=-78.5,24,...``: argparse takes a word starting with "-" for an option."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] in VALUE_FLAGS and i + 1 < len(argv) and re.match(r"-[0-9.]", argv[i + 1]):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


class StderrLines(logging.Handler):
    """Each log record as one line on the current ``sys.stderr``: reefmap's own, or every library's with ``debug``."""

    debug = False

    def filter(self, record: logging.LogRecord) -> bool:
        return self.debug or record.name.split(".")[0] == "reefmap"

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr)


def quiet_logging(debug: bool) -> None:
    """reefmap's own warnings, one line each, on stderr; other libraries' log records only with ``--debug`` (gcsfs
    logs a whole traceback for every request it gives up on, before reefmap says what went wrong in one line)."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, StderrLines)), None)
    if handler is None:
        handler = StderrLines()
        root.addHandler(handler)
    handler.debug = debug
    logging.getLogger("reefmap").setLevel(logging.DEBUG if debug else logging.NOTSET)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(attach_values(sys.argv[1:] if argv is None else argv))
    quiet_logging(a.debug)
    try:
        return a.fn(a) or 0
    except TileFailures as e:
        print(f"reefmap: error: {e}", file=sys.stderr)
        return 1
    except ReefmapError as e:
        if a.debug:
            raise
        print(f"reefmap: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("reefmap: interrupted; re-run the same command to resume (finished tiles are kept)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
