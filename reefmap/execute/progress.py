"""The one outcome counter of a run, and its two renderings: a live bar, or a log line every so often."""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Callable

from reefmap.store.format import TileState

log = logging.getLogger("reefmap.execute")


class RunProgress:
    """Counts one run's tile outcomes (done, skipped, failed; pixels; each failure's reason) as they arrive.

    ``planned`` tiles in the plan, ``finished`` of them finished in the store before this run: the run computes the
    other ``planned - finished``. Shown (``show``) as

    - ``"bar"``: ``[#####-----] 12/40 tiles · done 10 · skipped 2 · failed 0 · 3.2 Mpx/s · ETA 12s`` on ``stream``
      (stderr), redrawn in place on a terminal, else a line every 5 s;
    - ``"log"``: ``job: 10 tiles this job (done ...) · tiles/s · Mpx/s · store 30/100 finished (30.0%) · ETA 70s``
      to ``logger`` every ``every_s`` seconds (store-wide: :meth:`store_update` gives fresh counts of the store);
    - ``None``: nothing (the counts are still kept).
    """

    def __init__(self, planned: int, finished: int = 0, *, show: str | None = "log", every_s: float = 60.0,
                 job: str = "", logger=None, stream=None, clock: Callable[[], float] = time.perf_counter,
                 width: int = 30):
        self.planned, self.show, self.every_s, self.job, self.width = planned, show, every_s, job, width
        self.log = logger or log
        self.stream = stream or sys.stderr
        self.clock = clock
        self.total = max(0, planned - finished)  # what this run computes
        self.counts = {"done": 0, "skipped": 0, "failed": 0}
        self.pixels = 0
        self.failures: dict[tuple[int, int], str] = {}
        self.store_finished = finished  # planned tiles finished in the store at the last read (any job)
        self._since_read = 0
        self._store_t0, self._store_f0, self._store_rate = 0.0, finished, 0.0
        self._tty = show == "bar" and getattr(self.stream, "isatty", lambda: False)()
        self.start()

    @property
    def n(self) -> int:
        return sum(self.counts.values())

    def start(self) -> None:
        """Start the clock for the rates (call when the first tile is submitted, after the cluster is up)."""
        self.t0 = self._store_t0 = self.clock()
        self._last = self.t0 if self.show == "log" else -math.inf  # the bar shows the first outcome at once

    def on_outcome(self, o) -> None:
        """Count one ``TileOutcome``, and show the progress when it is time to."""
        key = "done" if o.state == TileState.DONE else "failed" if o.state == TileState.FAILED else "skipped"
        self.counts[key] += 1
        self.pixels += int(o.pixels)
        if key == "failed":
            self.failures[o.index] = o.error
        else:
            self._since_read += 1
        now = self.clock()
        if self.show == "log" and now - self._last >= self.every_s:
            self._last = now
            self.log.info(self.line())
        elif self.show == "bar" and (now - self._last > (0.2 if self._tty else 5.0) or self.n == self.total):
            self._last = now
            self.stream.write(("\r" if self._tty else "") + self.bar() + ("" if self._tty else "\n"))
            self.stream.flush()

    def store_update(self, finished: int) -> None:
        """A fresh count of the plan's finished tiles, read from the store (all jobs together)."""
        now = self.clock()
        if now > self._store_t0 and finished > self._store_f0:
            self._store_rate = (finished - self._store_f0) / (now - self._store_t0)
        self.store_finished, self._since_read = finished, 0

    def rates(self) -> tuple[float, float]:
        """Tiles/s and Mpx/s of this run since :meth:`start`."""
        el = max(self.clock() - self.t0, 1e-9)
        return self.n / el, self.pixels / el / 1e6

    def eta_s(self) -> float:
        """Seconds until the store is finished, at the faster of the store-wide rate and this run's."""
        left = max(0, self.planned - self.store_finished - self._since_read)
        rate = max(self._store_rate, self.rates()[0])
        return left / rate if rate > 0 else float("nan")

    def line(self) -> str:
        """The log rendering: this job's counts and rates, the store's progress and the ETA."""
        tps, mps = self.rates()
        fin = min(self.planned, self.store_finished + self._since_read)
        pct = 100.0 * fin / self.planned if self.planned else 100.0
        return (f"{self.job}: {self.n} tiles this job (done {self.counts['done']}, skipped {self.counts['skipped']}, "
                f"failed {self.counts['failed']}) · {tps:.2f} tiles/s · {mps:.2f} Mpx/s · store {fin}/{self.planned} "
                f"finished ({pct:.1f}%) · ETA {format_duration(self.eta_s())}")

    def bar(self) -> str:
        """The bar rendering: this run's tiles out of what it computes, rate and ETA."""
        el = self.clock() - self.t0
        frac = self.n / self.total if self.total else 1.0
        fill = int(round(frac * self.width))
        rate = self.pixels / el / 1e6 if el > 0 else 0.0
        eta = el / self.n * (self.total - self.n) if self.n else float("nan")
        return (f"[{'#' * fill}{'-' * (self.width - fill)}] {self.n}/{self.total} tiles · done {self.counts['done']} · "
                f"skipped {self.counts['skipped']} · failed {self.counts['failed']} · {rate:.2f} Mpx/s · "
                f"ETA {eta:.0f}s ")

    def close(self) -> None:
        """End the bar's line on a terminal."""
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()


def format_duration(s: float) -> str:
    """``45s``, ``12m05s``, ``3h07m``; ``?`` when unknown."""
    if not math.isfinite(s):
        return "?"
    s = int(round(s))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"
