"""The one rule for reefmap's per-process caches.

Every cache that outlives a call is an ``LRUCache``: bounded (least recently used entries are dropped first),
thread-safe, keyed by everything that determines the value (a file's size and modification time when the value
is read from a local file), and registered here by name so that ``clear_caches()`` empties them all (tests,
notebooks after files changed in place). The caches (see ``caches()``):

- ``readers`` (sources): mosaic readers by spec JSON; a reader holds open file handles;
- ``mosaic credentials`` (sources): the real specs of mosaics whose ``attrs`` show them redacted, by a random reference
  (cleared, such a mosaic must be opened again);
- ``bundle metadata`` (model): bundle metadata by path + (mtime, size) of its files;
- ``models`` (model): loaded torch segmenters by (content hash, device), one per worker in practice;
- ``masks`` (planning): tile-selection masks by grid + local file path, size, mtime, buffer, CRS;
- ``source chunks`` (sources): decoded blocks of mosaics by (source, block), bounded in bytes (option
  ``chunk_cache_mb``), so that the halo'd windows of neighbouring tiles decode each source chunk once.

Pure functions of immutable values use ``functools.lru_cache`` (CRS parsing, synthetic-world tables); values of
immutable objects use ``functools.cached_property``. Nothing else is cached across calls.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable, Generic, Hashable, TypeVar

V = TypeVar("V")

_REGISTRY: dict[str, "LRUCache"] = {}


class LRUCache(Generic[V]):
    """A bounded, thread-safe least-recently-used cache, registered under ``name``.

    Bounded to ``maxsize`` entries, or, with ``weight`` (a value's size, e.g. its bytes), to a total weight of
    ``maxsize`` (a value heavier than that on its own is returned but not kept)."""

    def __init__(self, name: str, maxsize: int, *, weight: Callable[[V], int] | None = None):
        self.name, self.maxsize, self.weight = name, maxsize, weight
        self._data: OrderedDict[Hashable, V] = OrderedDict()
        self._total = 0
        self._lock = threading.Lock()
        self._making: dict[Hashable, list] = {}  # key -> [its lock, threads using it]: one maker per key
        _REGISTRY[name] = self

    def _weigh(self, value: V) -> int:
        return 1 if self.weight is None else int(self.weight(value))

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            v = self._data.get(key)
            if v is not None:
                self._data.move_to_end(key)
            return v

    def put(self, key: Hashable, value: V, *, keep_first: bool = False) -> V:
        """Store ``value`` (or, with ``keep_first``, keep a value another thread stored meanwhile); returns the
        value now cached."""
        with self._lock:
            if keep_first and key in self._data:
                value = self._data[key]
            if key in self._data:
                self._total -= self._weigh(self._data.pop(key))
            if self._weigh(value) > self.maxsize:
                return value
            self._data[key] = value
            self._total += self._weigh(value)
            while self._total > self.maxsize:
                self._total -= self._weigh(self._data.popitem(last=False)[1])
            return value

    def get_or_create(self, key: Hashable, make: Callable[[], V]) -> V:
        """The cached value, or ``make()`` stored. One thread makes a given key at a time: the others asking for it
        meanwhile wait and take its value (threads reading neighbouring tiles decode a shared source chunk once;
        two model steps load a model once); other keys are made meanwhile."""
        return self.get_or_make(key, make)[0]

    def get_or_make(self, key: Hashable, make: Callable[[], V]) -> tuple[V, bool]:
        """``get_or_create``, and whether this call made the value."""
        v = self.get(key)
        if v is not None:
            return v, False
        with self._lock:
            making = self._making.setdefault(key, [threading.Lock(), 0])
            making[1] += 1
        try:
            with making[0]:
                v = self.get(key)
                if v is not None:
                    return v, False
                return self.put(key, make(), keep_first=True), True
        finally:
            with self._lock:
                making[1] -= 1
                if not making[1]:
                    self._making.pop(key, None)

    def pop(self, key: Hashable) -> None:
        with self._lock:
            if key in self._data:
                self._total -= self._weigh(self._data.pop(key))

    def resize(self, maxsize: int) -> None:
        """A new bound (entries are dropped, least recently used first, until they fit)."""
        with self._lock:
            self.maxsize = maxsize
            while self._total > self.maxsize:
                self._total -= self._weigh(self._data.popitem(last=False)[1])

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._total = 0

    def __len__(self) -> int:
        return len(self._data)


def caches() -> dict[str, Any]:
    """{name: the cache} of every registered per-process cache."""
    return dict(_REGISTRY)


def clear_caches() -> None:
    """Empty every per-process cache of reefmap (readers, bundle metadata, models, masks)."""
    for c in _REGISTRY.values():
        c.clear()
