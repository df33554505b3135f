"""One rule for per-process caches: bounded LRU, thread-safe, keyed by what determines the value, all cleared
by ``clear_caches``."""

from __future__ import annotations

import threading

import numpy as np

from reefmap.caching import LRUCache, caches, clear_caches


def test_lru_drops_the_least_recently_used_and_keeps_the_first_of_a_race():
    c = LRUCache("test-lru", 2)
    c.put("a", 1)
    c.put("b", 2)
    assert c.get("a") == 1  # a is now the most recent
    c.put("c", 3)
    assert c.get("b") is None and c.get("a") == 1 and c.get("c") == 3 and len(c) == 2
    made = []

    def make():
        made.append(1)
        return object()

    got = []
    threads = [threading.Thread(target=lambda: got.append(c.get_or_create("k", make))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(g) for g in got}) == 1 and len(made) == 1  # one thread made it, every caller got that one


def test_one_thread_makes_a_key_while_other_keys_are_made_meanwhile():
    """Threads asking for a key being made wait for it (a source chunk is decoded once, not by every reader
    thread that needs it); a key of its own is not held up."""
    c = LRUCache("test-single-flight", 10)
    started, release = threading.Event(), threading.Event()
    calls = []

    def slow():
        calls.append("slow")
        started.set()
        release.wait(5)
        return "chunk"

    results = []
    first = threading.Thread(target=lambda: results.append(c.get_or_make("k", slow)))
    first.start()
    started.wait(5)
    others = [threading.Thread(target=lambda: results.append(c.get_or_make("k", slow))) for _ in range(3)]
    for t in others:
        t.start()
    assert c.get_or_make("other", lambda: "x") == ("x", True)  # not blocked by the key being made
    release.set()
    for t in (first, *others):
        t.join()
    assert calls == ["slow"] and sorted(results) == [("chunk", False)] * 3 + [("chunk", True)]


def test_a_cache_bounded_in_bytes_keeps_what_fits():
    c = LRUCache("test-lru-bytes", 100, weight=lambda a: a.nbytes)
    a, b, big = np.zeros(60, np.uint8), np.zeros(30, np.uint8), np.zeros(101, np.uint8)
    c.put("a", a), c.put("b", b)
    assert len(c) == 2
    c.put("c", np.zeros(20, np.uint8))  # 110 bytes: the least recently used (a) goes
    assert c.get("a") is None and c.get("b") is b and len(c) == 2
    assert c.put("big", big) is big and c.get("big") is None  # heavier than the whole budget: not kept
    c.put("b", np.zeros(80, np.uint8))  # replacing a value counts its new size once
    assert len(c) == 2 and c.get("c") is not None
    c.resize(50)
    assert c.get("b") is None and len(c) == 1


def test_every_package_cache_is_registered_and_cleared_together():
    import reefmap.model.bundle  # noqa: F401
    import reefmap.model.segmenter  # noqa: F401
    import reefmap.planning.masks  # noqa: F401
    import reefmap.sources.base  # noqa: F401
    from affine import Affine

    from reefmap.geometry.grid import GeoBox, Shape
    from reefmap.sources import memory_reader, open_reader

    assert {"readers", "bundle metadata", "models", "masks"} <= set(caches())
    r = memory_reader(np.zeros((3, 4, 4), np.uint8), GeoBox(Shape(4, 4), Affine(1, 0, 0, 0, -1, 4), "EPSG:32618"))
    assert open_reader(r.spec()) is r
    reefmap.model.bundle.read_bundle(None)
    assert len(caches()["readers"]) and len(caches()["bundle metadata"])
    clear_caches()
    assert all(len(c) == 0 for c in caches().values())


def test_a_bundle_changed_in_place_is_read_again(tmp_path, random_bundle):
    import shutil

    from reefmap.model.bundle import read_bundle

    b = tmp_path / "b"
    shutil.copytree(random_bundle.path, b)
    first = read_bundle(b)
    import json

    d = json.loads((b / "bundle.json").read_text())
    d["meta"]["name"] = "renamed"
    d.pop("sha256", None)  # no recorded hash: the changed metadata is accepted as is
    (b / "bundle.json").write_text(json.dumps(d) + "\n" * 3)  # another size: a new cache key
    assert read_bundle(b).name == "renamed" and read_bundle(b).sha256 != first.sha256
