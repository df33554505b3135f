"""Progress read from the store itself. No torch, no pixels."""

from __future__ import annotations

import time

import numpy as np

from reefmap.sources import urls
from reefmap.store.format import SKIPPED_STATES, TileState, is_finished
from reefmap.store.mapstore import MapStore


def status(store: MapStore | str) -> dict:
    """Counts of planned, done, skipped, failed and pending tiles (and percent done) of a map."""
    store = store if isinstance(store, MapStore) else MapStore.open_readonly(store)
    t0 = time.perf_counter()
    states = store.states()
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
        "seconds": round(time.perf_counter() - t0, 3),
    }


def format_status(s: dict) -> str:
    sk = ", ".join(f"{k} {v}" for k, v in s["skipped_by_reason"].items() if v)
    return (f"{s['store']}\n"
            f"  planned {s['planned']} of {s['tiles_total']} tiles · {s['percent_done']:.1f}% done\n"
            f"  done {s['done']} · skipped {s['skipped']}{f' ({sk})' if sk else ''} · failed {s['failed']} · pending {s['pending']}")
