"""Is every finished tile's data really there? ``verify`` (``reefmap verify``) and the check a run makes first.

Each tile records, after writing its data chunks and before its state, a proof (``tiles/proof``): the stored size
and CRC32C of each chunk, or size 0 where the layer equals the fill value and no chunk is written. A finished tile
is *intact* when every chunk matches its proof. The cheap check (a run, before it skips the finished tiles) lists
each data array's chunks once, with their sizes, and compares sizes; the full check (``verify``, ``run(verify=True)``)
also reads every chunk and compares its CRC32C. Tiles finished before proofs existed (format-1 maps) are
*unproven*: reported, not judged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from reefmap.store.format import DATA_VARS, PROOF_PATH, TileState, is_finished
from reefmap.store.mapstore import MapStore


@dataclass
class Check:
    """What ``check_finished`` found: how many finished tiles were judged and found intact, ``{tile: problem}`` of
    the damaged ones, the unproven ones."""

    checked: int = 0
    intact: int = 0
    damaged: dict = field(default_factory=dict)
    unproven: list = field(default_factory=list)


def check_finished(store: MapStore, states: np.ndarray, *, full: bool = False) -> Check:
    """Check the finished tiles of ``states`` against their proofs (module docstring). A finished tile without a
    proof is damaged in a format-2 map (its proof is written before its state) and unproven in a format-1 one."""
    out = Check()
    fin = [tuple(t) for t in np.argwhere(is_finished(states)).tolist()]
    if not fin:
        return out
    proofs = store.proofs()
    sizes = {name: store.chunk_sizes(name) for name in DATA_VARS}
    to_hash: dict[str, dict] = {name: {} for name in DATA_VARS}  # layer -> {tile: recorded crc}
    for t in fin:
        if t not in proofs:
            if store.version >= 2:
                out.damaged[t] = "no proof recorded"
            else:
                out.unproven.append(t)
            continue
        p = proofs[t]
        if p is None:
            out.damaged[t] = "its proof is unreadable"
            continue
        problems = []
        for j, name in enumerate(DATA_VARS):
            want, crc, have = int(p[1 + 2 * j]), int(p[2 + 2 * j]), sizes[name].get(t)
            if want == 0 and have is not None:
                problems.append(f"{name} chunk present ({have} bytes) where none was written")
            elif want and have is None:
                problems.append(f"{name} chunk missing")
            elif want and have != want:
                problems.append(f"{name} chunk is {have} bytes, {want} were written")
            elif want:
                to_hash[name][t] = crc
        if problems:
            out.damaged[t] = "; ".join(problems)
    if full:
        for name, want in to_hash.items():
            got = store.chunk_digests(name, list(want))
            for t, crc in want.items():
                if t in got and got[t][1] == crc:
                    continue
                msg = f"{name} chunk {'missing' if t not in got else 'checksum differs from the one recorded'}"
                out.damaged[t] = f"{out.damaged[t]}; {msg}" if t in out.damaged else msg
    out.checked = len(fin) - len(out.unproven)
    out.intact = out.checked - len(out.damaged)
    return out


def states_for_run(store: MapStore, *, full: bool = False) -> tuple[np.ndarray, dict]:
    """The tile states a run starts from, and ``{tile: problem}`` of the tiles it found damaged: unreadable states,
    missing data (``MapStore.scan_states``) and finished tiles whose chunks fail the check (cheap, or ``full``).
    Those finished tiles are marked pending in the store first, so that even an interrupted run leaves them
    unfinished; all of them are recomputed. Writes nothing when nothing is damaged."""
    scan = store.scan_states()
    states = scan.states
    found = check_finished(store, states, full=full)
    damaged = {tuple(t): "its state is unreadable" for t in scan.unreadable.tolist()}
    damaged.update({tuple(t): "classification chunk missing" for t in scan.missing.tolist()})
    for t in found.damaged:
        store.mark(t, TileState.PENDING)
        states[t] = TileState.PENDING
    damaged.update(found.damaged)
    return states, damaged


def verify(store, repair: bool = False, storage_options: dict | None = None) -> dict:
    """Check every finished tile of the map ``store`` (a path, URL or ``MapStore``): each data chunk exists and
    matches the size and CRC32C recorded when it was written. ``repair``: mark the damaged tiles (and the tiles
    whose state is unreadable) pending and remove their chunks, so the next ``run`` recomputes them.

    Returns a report: ``clean`` (nothing damaged), ``finished``/``checked``/``intact`` counts, ``damaged`` and
    ``damaged_tiles`` (``{"tile": [iy, ix], "problem": ...}``), ``unreadable_states`` and their tiles, ``unproven``
    (finished before proofs existed), ``repaired``, ``seconds``.
    """
    t0 = time.perf_counter()
    if not isinstance(store, MapStore):
        store = MapStore(store, storage_options, mode="r+" if repair else "r")
    elif repair and store.mode == "r":
        store = MapStore(store.url, store.storage_options)
    scan = store.scan_states()
    found = check_finished(store, scan.states, full=True)
    damaged = {tuple(t): "classification chunk missing" for t in scan.missing.tolist()}
    damaged.update(found.damaged)
    unreadable = [tuple(t) for t in scan.unreadable.tolist()]
    repaired = 0
    if repair:
        for t in unreadable:
            store.mark(t, TileState.PENDING)
        for t in damaged:
            store.mark(t, TileState.PENDING)  # first: an interrupted repair leaves the tile unfinished
            for name in (*DATA_VARS, PROOF_PATH):
                store.delete_chunk(name, t)
        repaired = len(unreadable) + len(damaged)
    n_fin = int(is_finished(scan.states).sum()) + len(scan.missing)
    return {
        "store": store.url, "format": store.version, "clean": not damaged and not unreadable,
        "finished": n_fin, "checked": found.checked + len(scan.missing), "intact": found.intact,
        "damaged": len(damaged),
        "damaged_tiles": [{"tile": list(t), "problem": p} for t, p in sorted(damaged.items())],
        "unreadable_states": len(unreadable), "unreadable_state_tiles": [list(t) for t in sorted(unreadable)],
        "unproven": len(found.unproven), "repaired": repaired,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def format_verify(r: dict, n: int = 20) -> str:
    """The report of ``verify`` as text (at most ``n`` damaged tiles listed)."""
    lines = [f"{r['store']}: {r['finished']} finished tiles, {r['checked']} checked (every chunk's size and CRC32C): "
             f"{r['intact']} intact, {r['damaged']} damaged, {r['unreadable_states']} unreadable tile states"
             + (f", {r['unproven']} unproven (finished before proofs were recorded)" if r["unproven"] else "")
             + f" ({r['seconds']:.2f}s)"]
    for d in r["damaged_tiles"][:n]:
        lines.append(f"  tile {d['tile'][0]},{d['tile'][1]}: {d['problem']}")
    if r["unreadable_state_tiles"]:
        lines.append("  unreadable states: " + ", ".join(f"{t[0]},{t[1]}" for t in r["unreadable_state_tiles"][:n]))
    more = r["damaged"] - n
    if more > 0:
        lines.append(f"  ... and {more} more damaged tiles (--json lists them all)")
    if r["repaired"]:
        lines.append(f"  repaired: {r['repaired']} tiles marked pending; run the same `reefmap run` again to "
                     "recompute them")
    elif not r["clean"]:
        lines.append(f"  run `reefmap verify {r['store']} --repair`, then the same `reefmap run` again, to recompute "
                     "them")
    return "\n".join(lines)
