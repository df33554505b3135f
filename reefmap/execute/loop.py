"""The one execution loop: tile groups from an iterator, submitted with a bounded number in flight."""

from __future__ import annotations

import contextlib
import errno
import threading
from typing import Callable, Iterable, Iterator

import numpy as np

from reefmap.compute.tiles import TileJob, TileOutcome
from reefmap.errors import ReefmapError, StoreNotWritable
from reefmap.planning.plan import Plan
from reefmap.sources import clear_chunk_cache, urls
from reefmap.store.format import TileState


def submit_bounded(groups: Iterable[np.ndarray], plan: Plan, job: TileJob, executor, *, limit: int,
                   stop: threading.Event | None = None, on_outcome: Callable[[TileOutcome], None],
                   part_of: Callable[[np.ndarray], int] | None = None) -> None:
    """Compute ``groups`` (``(n, 2)`` arrays of ``plan``'s tile indices, one task each) on ``executor``, never more
    than ``limit`` tasks at once, calling ``on_outcome`` with each tile's ``TileOutcome``.

    The iterator is read lazily, one group whenever a task is done: a plan of any size never becomes one big graph,
    and an iterator may look at the store again between groups while the others are computing (nothing drains).
    ``stop`` (a ``threading.Event``) is checked before each submit: once set, nothing new is submitted and the tasks
    in flight finish. A task that is lost (worker killed, cancelled: any exception other than a tile's own failure,
    which the task records itself) fails its tiles only, each marked FAILED in the store with the reason. A
    ``ReefmapError`` (a configuration error: every tile would fail alike) cancels the tasks in flight and is raised.
    ``part_of(group)``: the part of the plan (``cache_order``) a group belongs to: the executor keeps a part on one
    worker, whose source-chunk cache then serves the halo'd windows of neighbouring tiles. The caches start empty
    (here and on the executor's workers): a run's tiles share decoded source blocks, never an earlier run's, so a
    source rewritten in place since then is read afresh.
    """
    clear_chunk_cache(getattr(executor, "client", None))
    pending: dict = {}  # future -> its tile indices
    it = iter(groups)
    token = plan.token

    def top_up():
        while len(pending) < limit and not (stop is not None and stop.is_set()):
            g = next(it, None)
            if g is None:
                return
            key = f"reefmap-tile-{token}-{int(g[0][0])}-{int(g[0][1])}"
            where = {} if part_of is None else {"part": part_of(g)}
            pending[executor.submit(job, [plan.task(t) for t in g], key, **where)] = g

    top_up()
    try:
        while pending:
            fut = executor.wait_one(set(pending))
            g = pending.pop(fut)
            try:
                results = fut.result()
            except ReefmapError:
                raise
            except Exception as e:
                if (err := store_write_error(e, job.store.url)) is not None:
                    raise err from None  # every other tile would fail alike
                msg = urls.redact_text(f"task lost: {type(e).__name__}: {e}")
                results = []
                with store_writes(job.store.url):  # the failure record may meet the same full disk
                    for t in g:
                        job.store.mark(t, TileState.FAILED, msg)
                        results.append(TileOutcome((int(t[0]), int(t[1])), int(TileState.FAILED), 0, 0.0, msg))
            for o in results:
                on_outcome(o)
            top_up()
    except BaseException:  # a configuration error, an unwritable store, Ctrl-C: nothing more is computed
        for f in pending:
            f.cancel()
        raise


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def store_write_error(e: BaseException, url: str) -> StoreNotWritable | None:
    """The ``StoreNotWritable`` to raise when ``e`` is an ``OSError`` of writing into the map at ``url`` that no
    retry can fix (no space left, a read-only file system, no permission); None for any other error."""
    if not isinstance(e, OSError) or e.errno not in (*_NO_SPACE, *_NOT_WRITABLE):
        return None
    where = f"{url!r}" + (f" ({e.filename})" if e.filename and str(e.filename) != url else "")
    if e.errno in _NO_SPACE:
        return StoreNotWritable(
            f"no space left on the device writing the map {where}: {e.strerror}. The tiles recorded as finished are "
            "safe (a tile's state is written only after its pixels); free some space, then re-run the same command "
            "to compute the rest")
    return StoreNotWritable(
        f"the map {where} cannot be written: {e.strerror}. Make it writable, or choose another --out; the tiles "
        "recorded as finished are safe (a finished map re-runs without writing anything)")


@contextlib.contextmanager
def store_writes(url: str) -> Iterator[None]:
    """Writes into the map at ``url``: an ``OSError`` that no retry can fix becomes ``StoreNotWritable``."""
    try:
        yield
    except OSError as e:
        if (err := store_write_error(e, url)) is None:
            raise
        raise err from None


def chain(*fns: Callable | None) -> Callable:
    """One callback calling each of ``fns`` (None entries left out) in order."""
    fns = tuple(f for f in fns if f is not None)

    def call(o):
        for f in fns:
            f(o)

    return call
