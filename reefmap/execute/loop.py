"""The one execution loop: tile groups from an iterator, submitted with a bounded number in flight."""

from __future__ import annotations

import threading
from typing import Callable, Iterable

import numpy as np

from reefmap.compute.tiles import TileJob, TileOutcome
from reefmap.errors import ReefmapError
from reefmap.planning.plan import Plan
from reefmap.sources import urls
from reefmap.store.format import TileState


def submit_bounded(groups: Iterable[np.ndarray], plan: Plan, job: TileJob, executor, *, limit: int,
                   stop: threading.Event | None = None, on_outcome: Callable[[TileOutcome], None]) -> None:
    """Compute ``groups`` (``(n, 2)`` arrays of ``plan``'s tile indices, one task each) on ``executor``, never more
    than ``limit`` tasks at once, calling ``on_outcome`` with each tile's ``TileOutcome``.

    The iterator is read lazily, one group whenever a task is done: a plan of any size never becomes one big graph,
    and an iterator may look at the store again between groups while the others are computing (nothing drains).
    ``stop`` (a ``threading.Event``) is checked before each submit: once set, nothing new is submitted and the tasks
    in flight finish. A task that is lost (worker killed, cancelled: any exception other than a tile's own failure,
    which the task records itself) fails its tiles only, each marked FAILED in the store with the reason. A
    ``ReefmapError`` (a configuration error: every tile would fail alike) cancels the tasks in flight and is raised.
    """
    pending: dict = {}  # future -> its tile indices
    it = iter(groups)
    token = plan.token

    def top_up():
        while len(pending) < limit and not (stop is not None and stop.is_set()):
            g = next(it, None)
            if g is None:
                return
            key = f"reefmap-tile-{token}-{int(g[0][0])}-{int(g[0][1])}"
            pending[executor.submit(job, [plan.task(t) for t in g], key)] = g

    top_up()
    while pending:
        fut = executor.wait_one(set(pending))
        g = pending.pop(fut)
        try:
            results = fut.result()
        except ReefmapError:
            for f in pending:
                f.cancel()
            raise
        except Exception as e:
            msg = urls.redact_text(f"task lost: {type(e).__name__}: {e}")
            results = []
            for t in g:
                job.store.mark(t, TileState.FAILED, msg)
                results.append(TileOutcome((int(t[0]), int(t[1])), int(TileState.FAILED), 0, 0.0, msg))
        for o in results:
            on_outcome(o)
        top_up()


def chain(*fns: Callable | None) -> Callable:
    """One callback calling each of ``fns`` (None entries left out) in order."""
    fns = tuple(f for f in fns if f is not None)

    def call(o):
        for f in fns:
            f(o)

    return call
