"""``reefmap experiment CONFIG.yaml [--out DIR] [--client inprocess|local|PROFILE|ADDRESS] [--workers N]``: train,
validate and compare the members of an experiment (``reefmap.execute.experiment``)."""

from __future__ import annotations

import json


def cmd_experiment(a) -> int:
    from reefmap.execute.experiment import experiment

    s = experiment(a.config, a.out, client=a.client, workers=a.workers, log=(lambda *_: None) if a.json else print)
    if a.json:
        print(json.dumps({k: s[k] for k in ("out", "rank_by", "ranking", "comparison")}, indent=2))
        return 0
    for row in s["ranking"]:
        m = s["members"][row["product"]]
        v = "undefined" if row["value"] is None else f"{row['value']:.3f}"
        print(f"  {row['rank']}. {row['product']} ({m['status']}): {s['rank_by']} {v}  {json.dumps(m['overrides'])}")
    return 0


def add_commands(sub) -> None:
    e = sub.add_parser("experiment", help="train, validate and compare many models from one base training config "
                                          "(resumable: finished members are skipped)")
    e.add_argument("config", help="experiment YAML: name, base (training config path or mapping), grid "
                                  "{dotted.key: [values]} or members [{name, overrides}], out, rank_by, tile, pictures")
    e.add_argument("--out", help="experiment folder (default: the config's out)")
    e.add_argument("--client", help="where members run, one per worker: inprocess (one after the other here), a "
                                    "cluster profile (default local) or a scheduler address")
    e.add_argument("--workers", type=int, help="workers (members at once) of a launched cluster")
    e.add_argument("--json", action="store_true", help="print the ranking as JSON")
    e.set_defaults(fn=cmd_experiment)
