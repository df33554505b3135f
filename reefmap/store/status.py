"""Progress read from the store itself. No torch, no pixels."""

from __future__ import annotations

import time

import numpy as np

from reefmap.sources import urls
from reefmap.store.format import SKIPPED_STATES, TileState, is_finished
from reefmap.store.mapstore import MapStore


def status(store: MapStore | str) -> dict:
    """Counts of planned, done, skipped, failed and pending tiles (and percent done) of a map.

    Tiles whose state chunk is unreadable (``unreadable_states``) or, in a format-2 map, finished tiles whose data
    chunk is missing (``missing_data``) count as pending (the next run recomputes them) and are listed by tile
    index; ``reefmap verify`` checks every finished tile's chunks against their recorded sizes and checksums.
    """
    store = store if isinstance(store, MapStore) else MapStore.open_readonly(store)
    t0 = time.perf_counter()
    scan = store.scan_states()
    states = scan.states
    planned = store.planned()
    counts = np.bincount(states.ravel(), minlength=256)
    done = int(counts[TileState.DONE])
    skipped = int(sum(counts[s] for s in SKIPPED_STATES))
    failed = int(counts[TileState.FAILED])
    n_planned = int(planned.sum())
    finished_in_plan = int((planned & is_finished(states)).sum())
    failed_in_plan = int((planned & (states == TileState.FAILED)).sum())
    pending = n_planned - finished_in_plan - failed_in_plan
    return {
        "store": urls.redact(store.url),
        "tiles_total": int(states.size),
        "planned": n_planned,
        "done": done,
        "skipped": skipped,
        "skipped_by_reason": {s.name.lower().removeprefix("skipped_"): int(counts[s]) for s in SKIPPED_STATES},
        "failed": failed,
        "pending": pending,
        "percent_done": round(100.0 * finished_in_plan / n_planned, 2) if n_planned else 100.0,
        "unreadable_states": len(scan.unreadable),
        "unreadable_state_tiles": scan.unreadable.tolist(),
        "missing_data": len(scan.missing),
        "missing_data_tiles": scan.missing.tolist(),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def format_status(s: dict) -> str:
    sk = ", ".join(f"{k} {v}" for k, v in s["skipped_by_reason"].items() if v)
    text = (f"{s['store']}\n"
            f"  planned {s['planned']} of {s['tiles_total']} tiles · {s['percent_done']:.1f}% done\n"
            f"  done {s['done']} · skipped {s['skipped']}{f' ({sk})' if sk else ''} · failed {s['failed']} · pending {s['pending']}")
    damaged = [f"{s[k]} {what} ({_tiles_text(s[tiles])})"
               for k, tiles, what in (("unreadable_states", "unreadable_state_tiles", "unreadable tile states"),
                                      ("missing_data", "missing_data_tiles", "finished tiles with missing data chunks"))
               if s.get(k)]
    if damaged:
        text += (f"\n  damaged: {'; '.join(damaged)}: counted as pending, the next run recomputes them "
                 f"(`reefmap verify {s['store']}` checks every chunk)")
    return text


def _tiles_text(tiles: list, n: int = 5) -> str:
    shown = ", ".join(f"{t[0]},{t[1]}" for t in tiles[:n])
    return shown + (f" and {len(tiles) - n} more" if len(tiles) > n else "")
