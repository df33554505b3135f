"""The map's fast write path (issue 11, item 5): chunks encoded here with the array's own codecs are the very bytes
zarr writes (edge tiles padded, all-fill chunks stored as none), proofs are those bytes' size and CRC32C, and a
task's tiles go to the store in one round of data, one of proofs, one of states (on gs:// too)."""

from __future__ import annotations

import os

try:  # must come before anything imports gcsfs: it sets the emulator's environment
    from gcs_emulator import STORAGE_OPTIONS, gcs_emulator, gcs_fs  # noqa: F401  (pytest fixtures)
except ImportError:  # tests/ collected as a package
    from tests.gcs_emulator import STORAGE_OPTIONS, gcs_emulator, gcs_fs  # noqa: F401

import google_crc32c
import numpy as np
import zarr
from affine import Affine

from reefmap.geometry.grid import GeoBox, Shape
from reefmap.planning.plan import plan_tiles
from reefmap.store.format import DATA_VARS, TileState
from reefmap.store.mapstore import MapStore
from reefmap.zarrchunks import raw_layout

PLAN = plan_tiles(GeoBox(Shape(150, 100), Affine(10.0, 0, 0, 0, -10.0, 0), "EPSG:32618"), 64, 0)  # 3 x 2, edges


def layers(k: int, shape) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(k)
    prob = (rng.integers(0, 4, shape) * 60 + np.arange(shape[1]) % 7).astype(np.uint8)
    cls = rng.integers(1, 6, shape).astype(np.uint8)
    if k == 1:
        prob[:] = 255  # the fill value: no chunk
    return prob, cls


def write_all(url, storage_options=None) -> tuple[MapStore, dict]:
    store = MapStore.create_or_open(url, PLAN.grid, {"t": 1}, {}, storage_options)
    items, data = [], {}
    for k, t in enumerate(PLAN.tiles()):
        w = PLAN.task(t).write
        data[tuple(t)] = layers(k, tuple(w.shape))
        items.append((w, *data[tuple(t)]))
    store.write_tiles(items)
    store.mark_many([(t, TileState.DONE, None) for t in PLAN.tiles()])
    return store, data


def check_like_zarr(store: MapStore, data: dict, tmp_path) -> None:
    ref = zarr.open_group(str(tmp_path / "ref.zarr"), mode="w")
    for j, name in enumerate(DATA_VARS):
        a = store.array(name)
        assert raw_layout(a, a.chunks, np.uint8, compressed=True)  # the fast path was taken
        r = ref.create_array(name, shape=a.shape, chunks=a.chunks, dtype="uint8", fill_value=a.metadata.fill_value,
                             compressors=a.metadata.codecs[1:])
        for t, layer in data.items():
            w = PLAN.task(t).write
            r[w.slices] = layer[j]
            np.testing.assert_array_equal(a[w.slices], layer[j])  # zarr reads back what was written
            p = tmp_path / "ref.zarr" / name / "c" / str(t[0]) / str(t[1])
            theirs = p.read_bytes() if p.exists() else None
            mine = store.chunk_bytes(name, t)
            assert mine == theirs, (name, t)
            proof = store.proofs()[t]
            size, crc = proof[1 + 2 * j], proof[2 + 2 * j]
            assert (size, crc) == ((len(mine), google_crc32c.value(mine)) if mine is not None else (0, 0))
    assert store.chunk_bytes("reef_probability", (0, 1)) is None  # the all-fill tile
    assert (store.states() == TileState.DONE).all()


def test_fast_writes_are_the_bytes_zarr_writes(tmp_path):
    store, data = write_all(str(tmp_path / "m.zarr"))
    check_like_zarr(store, data, tmp_path)
    leftovers = [f for _, _, fs in os.walk(tmp_path / "m.zarr") for f in fs if f.endswith(".partial")]
    assert leftovers == []
    again, _ = write_all(str(tmp_path / "m.zarr"))  # idempotent: the same bytes again
    assert again.chunk_bytes("classification", (2, 1)) == store.chunk_bytes("classification", (2, 1))


def test_fast_writes_on_gcs_take_one_round_per_task(gcs_fs, tmp_path, monkeypatch):
    from zarr.storage import FsspecStore

    fs, bucket = gcs_fs
    url = f"gs://{bucket}/m.zarr"
    store = MapStore.create_or_open(url, PLAN.grid, {"t": 1}, {}, STORAGE_OPTIONS)
    rounds = []
    orig = MapStore.put_raw
    monkeypatch.setattr(MapStore, "put_raw", lambda self, blobs: rounds.append(sorted(blobs)) or orig(self, blobs))
    sets = []
    orig_set = FsspecStore.set

    async def set_(self, key, value, *a, **kw):
        sets.append(key)
        return await orig_set(self, key, value, *a, **kw)

    monkeypatch.setattr(FsspecStore, "set", set_)
    store, data = write_all(url, STORAGE_OPTIONS)
    assert len(rounds) == 3  # the data chunks of all 6 tiles, then their proofs, then their states
    assert all(k.startswith(("reef_probability/", "classification/")) for k in rounds[0])
    assert all(k.startswith("tiles/proof/") for k in rounds[1]) and len(rounds[1]) == 6
    assert all(k.startswith("tiles/status/") for k in rounds[2]) and len(rounds[2]) == 6
    assert len(sets) == 11 + 6 + 6  # 12 data chunks less the all-fill one
    check_like_zarr(MapStore(url, STORAGE_OPTIONS), data, tmp_path)


def test_a_run_on_a_remote_store_records_states_a_few_tiles_per_write(gcs_fs, memory_mosaic, random_bundle,
                                                                       monkeypatch):
    """On gs:// the default task holds REMOTE_BATCH tiles: their states go up in one write, not one per tile; on local
    disk a task is one tile. (The map itself does not depend on the batch: tests/test_device_path.py.)"""
    from reefmap.execute.runner import REMOTE_BATCH, run

    fs, bucket = gcs_fs
    rounds = []
    orig = MapStore.put_raw
    monkeypatch.setattr(MapStore, "put_raw", lambda self, blobs: rounds.append(sorted(blobs)) or orig(self, blobs))
    da, _ = memory_mosaic
    s = run(da, random_bundle.path, f"gs://{bucket}/batch.zarr", tile=128, client="inprocess", progress=False,
            storage_options=STORAGE_OPTIONS)
    states = [r for r in rounds if r and r[0].startswith("tiles/status/")]
    assert s.computed == 48 and sum(len(r) for r in states) == 48
    assert len(states) == -(-48 // REMOTE_BATCH) and max(len(r) for r in states) == REMOTE_BATCH
