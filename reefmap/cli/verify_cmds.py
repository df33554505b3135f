"""``reefmap verify STORE [--repair] [--json]``: are the finished tiles' chunks really there (``reefmap.verify``)?

Registered into the main parser by ``add_commands(subparsers)``. Exit status 0 when every finished tile is intact
(or was repaired), 1 when some are damaged and ``--repair`` was not given.
"""

from __future__ import annotations

import json


def cmd_verify(a) -> int:
    from reefmap.store.integrity import format_verify, verify

    r = verify(a.store, repair=a.repair)
    print(json.dumps(r, indent=2) if a.json else format_verify(r))
    return 0 if r["clean"] or r["repaired"] else 1


def add_commands(subparsers) -> None:
    v = subparsers.add_parser("verify", help="check that every finished tile's chunks exist and match their "
                                             "recorded sizes and checksums")
    v.add_argument("store", help="the map (path or URL)")
    v.add_argument("--repair", action="store_true",
                   help="mark the damaged tiles pending (and remove their chunks): the next run recomputes them")
    v.add_argument("--json", action="store_true", help="print the report as JSON (every damaged tile listed)")
    v.set_defaults(fn=cmd_verify)
