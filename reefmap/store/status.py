"""Progress read from the store itself, and a one-line live progress bar. No torch, no pixels."""

from __future__ import annotations

import sys
import time

import numpy as np

from reefmap.store.format import FINISHED_STATES, SKIPPED_STATES, TileState
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
    finished_in_plan = int((planned & np.isin(states, FINISHED_STATES)).sum())
    failed_in_plan = int((planned & (states == TileState.FAILED)).sum())
    pending = n_planned - finished_in_plan - failed_in_plan
    return {
        "store": store.url,
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


class ProgressBar:
    """``[#####-----] 12/40 tiles · done 10 · skipped 2 · failed 0 · 3.2 Mpx/s · ETA 12s`` on stderr."""

    def __init__(self, total: int, enabled: bool = True, stream=None, width: int = 30):
        self.total, self.enabled, self.width = total, enabled, width
        self.stream = stream or sys.stderr
        self.counts = {"done": 0, "skipped": 0, "failed": 0}
        self.pixels = 0
        self.t0 = time.perf_counter()
        self._last = 0.0
        self._tty = getattr(self.stream, "isatty", lambda: False)()

    @property
    def n(self) -> int:
        return sum(self.counts.values())

    def update(self, state: int, pixels: int) -> None:
        key = "done" if state == TileState.DONE else "failed" if state == TileState.FAILED else "skipped"
        self.counts[key] += 1
        self.pixels += pixels
        now = time.perf_counter()
        if self.enabled and (now - self._last > (0.2 if self._tty else 5.0) or self.n == self.total):
            self._last = now
            self.stream.write(("\r" if self._tty else "") + self.line() + ("" if self._tty else "\n"))
            self.stream.flush()

    def line(self) -> str:
        el = time.perf_counter() - self.t0
        frac = self.n / self.total if self.total else 1.0
        fill = int(round(frac * self.width))
        rate = self.pixels / el / 1e6 if el > 0 else 0.0
        eta = el / self.n * (self.total - self.n) if self.n else float("nan")
        return (f"[{'#' * fill}{'-' * (self.width - fill)}] {self.n}/{self.total} tiles · done {self.counts['done']} · "
                f"skipped {self.counts['skipped']} · failed {self.counts['failed']} · {rate:.2f} Mpx/s · "
                f"ETA {eta:.0f}s ")

    def close(self) -> None:
        if self.enabled and self._tty:
            self.stream.write("\n")
            self.stream.flush()
