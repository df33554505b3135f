"""The command line: real GeoTIFFs on disk, one clear line per bad input, nothing written lost."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from affine import Affine
from rasterio.crs import CRS

from conftest import textured
from reefmap.cli.main import main
from reefmap.store.mapstore import MapStore


def write_tif(path, arr, transform, crs="EPSG:32618", nodata=0, block=128):
    with rasterio.open(path, "w", driver="GTiff", width=arr.shape[2], height=arr.shape[1], count=arr.shape[0],
                       dtype=arr.dtype, crs=CRS.from_user_input(crs), transform=transform, nodata=nodata, tiled=True,
                       blockxsize=block, blockysize=block, compress="deflate") as dst:
        dst.write(arr)
    return path


def corrupt_block(path, row, col):
    """Overwrite one internal tile's compressed bytes with garbage (the header stays intact)."""
    with rasterio.open(path) as src:
        off = int(src.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=1))
        size = int(src.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=1))
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(b"\xff" * size)


T = Affine(30.0, 0, 200000.0, 0, -30.0, 2700000.0)


@pytest.fixture
def tif(tmp_path):
    return write_tif(tmp_path / "scene.tif", textured((512, 512), seed=11), T)


def run_cli(capsys, *args):
    code = main(list(map(str, args)))
    out, err = capsys.readouterr()
    return code, out, err


def test_run_then_status_json(tif, random_bundle, tmp_path, capsys):
    out = tmp_path / "m.zarr"
    code, stdout, err = run_cli(capsys, "run", "--mosaic", tif, "--model", random_bundle.path, "--out", out,
                                "--tile", "256", "--workers", "1", "--json")
    assert code == 0, err
    s = json.loads(stdout)
    assert s["planned"] == 4 and s["failed"] == 0
    code, stdout, _ = run_cli(capsys, "status", out, "--json")
    st = json.loads(stdout)
    assert code == 0 and {"planned", "done", "skipped", "failed", "pending"} <= set(st)
    assert st["planned"] == 4 and st["pending"] == 0 and st["done"] + st["skipped"] == 4
    code, stdout, _ = run_cli(capsys, "status", out)
    assert "100.0% done" in stdout


def test_a_corrupt_block_fails_its_tile_only_and_the_run_says_which(tmp_path, random_bundle, capsys):
    path = write_tif(tmp_path / "bad.tif", textured((512, 512), seed=12), T)
    corrupt_block(path, 3, 3)  # pixels 384..512 x 384..512 → output tile (1, 1) at tile 256
    out = tmp_path / "m.zarr"
    code, _, err = run_cli(capsys, "run", "--mosaic", path, "--model", random_bundle.path, "--out", out,
                           "--tile", "256", "--workers", "1")
    assert code == 1
    assert "1 tile(s) failed" in err and "(1, 1)" in err and "Traceback" not in err
    g = zarr.open_group(str(out), mode="r")
    st = g["tiles/status"][:]
    assert st[1, 1] == 9 and (st[0] != 0).all() and st[1, 0] != 0
    errs = {tuple(grp.attrs["tile"]): grp.attrs["error"] for _, grp in g["tile_errors"].groups()}
    assert list(errs) == [(1, 1)] and "bad.tif" in errs[(1, 1)]
    done_before = g["classification"][:256, :].copy()
    # the failed tile is retried on the next run; finished tiles are kept as they were
    code, _, err = run_cli(capsys, "run", "--mosaic", path, "--model", random_bundle.path, "--out", out,
                           "--tile", "256", "--workers", "1")
    assert code == 1
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["classification"][:256, :], done_before)


@pytest.mark.parametrize("case", ["missing", "bbox", "bands", "crs", "halo", "config"])
def test_bad_input_is_one_clear_line_and_exit_2(case, tif, random_bundle, tmp_path, capsys):
    args = ["run", "--model", random_bundle.path, "--out", tmp_path / "m.zarr", "--workers", "1"]
    if case == "missing":
        args += ["--mosaic", tmp_path / "nope.tif"]
        expect = "nope.tif"
    elif case == "bbox":
        args += ["--mosaic", tif, "--bbox", "10,10,11,11"]
        expect = "does not intersect"
    elif case == "bands":
        two = write_tif(tmp_path / "two.tif", textured((256, 256), seed=1)[:2].copy(), T)
        args += ["--mosaic", two]
        expect = "2 bands"
    elif case == "crs":
        other = write_tif(tmp_path / "other.tif", textured((256, 256), seed=2), Affine(30.0, 0, 600000.0, 0, -30.0, 2700000.0), crs="EPSG:32617")
        args += ["--mosaic", tif, "--mosaic", other]
        expect = "crs"
    elif case == "halo":
        args += ["--mosaic", tif, "--halo", "8"]
        expect = "receptive radius"
    else:
        cfg = tmp_path / "run.yaml"
        cfg.write_text("mosaic: scene.tif\nout: m.zarr\ntiles: 256\n")
        args = ["run", str(cfg)]
        expect = "unknown keys ['tiles']"
    code, out, err = run_cli(capsys, *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reefmap: error:") and expect.lower() in lines[0].lower(), err
    assert not (tmp_path / "m.zarr").exists()


def test_yaml_config_run_and_refusal_of_another_models_store(tif, random_bundle, tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"mosaic: [scene.tif]\nout: map.zarr\nmodel: {random_bundle.path}\ntile: 256\nworkers: 1\n")
    code, _, err = run_cli(capsys, "run", cfg)
    assert code == 0, err
    before = zarr.open_group(str(tmp_path / "map.zarr"), mode="r")["reef_probability"][:]
    from reefmap.model.bundle import DEMO_BUNDLE

    code, _, err = run_cli(capsys, "run", cfg, "--model", DEMO_BUNDLE)  # another model
    assert code == 2 and "refusing to mix" in err
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "map.zarr"), mode="r")["reef_probability"][:], before)


def test_cli_entry_point_prints_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "reefmap.cli.main", "status", str(tmp_path / "none.zarr")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "not a reefmap map" in r.stderr


# --- clear errors instead of tracebacks (issue 9) -----------------------------------------------------------------

def one_error_line(err: str, *expect: str) -> str:
    """The single ``reefmap: error:`` line of ``err``, holding every ``expect``; anything else printed fails, but for
    the cluster's start-up line and the progress bar of a run that had begun."""
    lines = [ln for ln in err.strip().splitlines() if ln.strip() and not ln.startswith(("reefmap: cluster '", "["))]
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("reefmap: error:"), err
    for e in expect:
        assert e.lower() in lines[0].lower(), (e, lines[0])
    return lines[0]


def cli_subprocess(*args, env=None, timeout=300):
    """``python -m reefmap ARGS`` in a fresh process, this checkout first on the path."""
    from conftest import REPO

    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "reefmap", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def lonlat_box(rows, cols, transform=T, crs="EPSG:32618") -> str:
    """The lon/lat box "W,S,E,N" of a pixel window of a GeoTIFF written with ``transform``."""
    from pyproj import Transformer

    xs = [transform.c + transform.a * c for c in cols]
    ys = [transform.f + transform.e * r for r in rows]
    lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(
        [x for x in xs for _ in ys], [y for _ in xs for y in ys])
    return f"{min(lon):.6f},{min(lat):.6f},{max(lon):.6f},{max(lat):.6f}"


def files_of(store) -> dict:
    """``{relative path: (size, mtime_ns)}`` of every file under ``store``."""
    return {str(p.relative_to(store)): (p.stat().st_size, p.stat().st_mtime_ns) for p in Path(store).rglob("*")
            if p.is_file()}


@contextlib.contextmanager
def mounted(what: list[str], where: Path):
    """``mount WHAT WHERE`` for the block (a tmpfs, a read-only bind); skipped where mounting is not allowed."""
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", *what, str(where)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount {what} here (needs root): {r.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.mark.parametrize("args, expect", [
    ([], "no mosaic given"),
    (["--out", "m.zarr"], "no mosaic given"),
    (["--mosaic", "scene.tif"], "no output store given"),
])
def test_run_without_mosaic_or_out_says_which_flag(args, expect, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "run", *args)
    assert code == 2
    one_error_line(err, expect, "--mosaic" if "mosaic" in expect else "--out")


def test_several_files_after_one_mosaic_flag(tmp_path, random_bundle, capsys):
    a = write_tif(tmp_path / "a.tif", textured((256, 256), seed=1), T)
    b = write_tif(tmp_path / "b.tif", textured((256, 256), seed=2), Affine(30.0, 0, 207680.0, 0, -30.0, 2700000.0))
    code, out, err = run_cli(capsys, "run", "--mosaic", a, b, "--model", random_bundle.path, "--out",
                             tmp_path / "m.zarr", "--tile", "256", "--workers", "1", "--json")
    assert code == 0, err
    assert json.loads(out)["planned"] == 2  # both files: 512 px wide
    sources = MapStore.open_readonly(str(tmp_path / "m.zarr")).attrs["sources"]
    assert json.dumps(sources).count(".tif") >= 2 and "a.tif" in json.dumps(sources) and "b.tif" in json.dumps(sources)
    # a mosaic file where the config file goes: refused as such, not a UnicodeDecodeError
    code, _, err = run_cli(capsys, "run", a, "--mosaic", b, "--out", tmp_path / "n.zarr")
    assert code == 2
    one_error_line(err, "a.tif", "is not a text (YAML) file", "--mosaic a.tif b.tif")
    assert not (tmp_path / "n.zarr").exists()


@pytest.mark.parametrize("case", ["directory", "mosaic 42", "screen text", "out number"])
def test_a_bad_config_file_is_one_clear_line(case, tif, tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    if case == "directory":
        cfg = tmp_path / "configs"
        cfg.mkdir()
        expect = ["configs", "is a directory"]
    elif case == "mosaic 42":
        cfg.write_text("mosaic: 42\nout: m.zarr\n")
        expect = ["mosaic must be a path or URL", "42"]
    elif case == "screen text":
        cfg.write_text(f"mosaic: {tif}\nout: m.zarr\nscreen: 'false'\n")  # a quoted 'false' is text, not false
        expect = ["screen must be true or false", "'false'"]
    else:
        cfg.write_text(f"mosaic: {tif}\nout: 7\n")
        expect = ["out must be text", "7"]
    code, _, err = run_cli(capsys, "run", cfg)
    assert code == 2
    one_error_line(err, *expect)
    assert not (tmp_path / "m.zarr").exists()


def test_a_finished_map_reruns_without_writing_anything(tif, random_bundle, tmp_path, capsys):
    out = tmp_path / "m.zarr"
    args = ["run", "--mosaic", tif, "--model", random_bundle.path, "--out", out, "--tile", "256", "--workers", "1"]
    assert run_cli(capsys, *args)[0] == 0
    before = files_of(out)
    code, stdout, err = run_cli(capsys, *args, "--json")
    assert code == 0, err
    assert json.loads(stdout)["computed"] == 0
    assert files_of(out) == before  # no file written, touched or added: it works on a read-only copy


def test_a_read_only_map(tif, random_bundle, tmp_path, capsys):
    """A finished map re-runs on a read-only mount; an unfinished one is one clear line, nothing changed."""
    base = ["--mosaic", tif, "--model", random_bundle.path, "--tile", "256", "--workers", "1"]
    ro = tmp_path / "ro"
    ro.mkdir()
    assert run_cli(capsys, "run", *base, "--out", ro / "done.zarr")[0] == 0
    assert run_cli(capsys, "run", *base, "--out", ro / "part.zarr", "--bbox=" + lonlat_box((10, 100), (10, 100)))[0] == 0
    part = files_of(ro / "part.zarr")
    with mounted(["--bind", "-o", "ro", str(ro)], ro):
        with pytest.raises(OSError):
            (ro / "probe").write_text("x")
        code, out, err = run_cli(capsys, "run", *base, "--out", ro / "done.zarr", "--json")
        assert code == 0, err
        assert json.loads(out)["computed"] == 0
        code, _, err = run_cli(capsys, "run", *base, "--out", ro / "part.zarr")
        assert code == 2
        one_error_line(err, str(ro / "part.zarr"), "cannot be written", "read-only file system", "another --out")
    assert files_of(ro / "part.zarr") == part


def test_a_full_disk_stops_the_run_with_one_line_and_loses_nothing(tif, random_bundle, tmp_path, capsys):
    base = ["--mosaic", tif, "--model", random_bundle.path, "--tile", "64", "--no-screen", "--workers", "1"]
    ref = tmp_path / "ref.zarr"
    assert run_cli(capsys, "run", *base, "--out", ref)[0] == 0
    with mounted(["-t", "tmpfs", "-o", "size=4m", "tmpfs"], tmp_path / "disk") as disk:
        out = disk / "m.zarr"
        assert run_cli(capsys, "run", *base, "--out", out, "--bbox=" + lonlat_box((0, 100), (0, 100)))[0] == 0
        states = zarr.open_group(str(out), mode="r")["tiles/status"][:]
        assert 0 < (states == 1).sum() < states.size
        done_chunks = {k: v for k, v in files_of(out).items() if k.startswith(("reef_probability/c", "classification/c"))}
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        (disk / "filler").write_bytes(b"\0" * (free - 4096))  # room for one small file at most
        code, _, err = run_cli(capsys, "run", *base, "--out", out)
        assert code == 2
        one_error_line(err, str(out), "no space left", "free some space", "re-run")
        after = zarr.open_group(str(out), mode="r")["tiles/status"][:]
        assert ((after == 1) | (after == 0)).all() and (after[states == 1] == 1).all()  # nothing finished is lost
        assert all(files_of(out).get(k, (None,))[0] == v[0] for k, v in done_chunks.items())
        (disk / "filler").unlink()
        code, _, err = run_cli(capsys, "run", *base, "--out", out)  # space again: the rest is computed
        assert code == 0, err
        g, r = zarr.open_group(str(out), mode="r"), zarr.open_group(str(ref), mode="r")
        for name in ("reef_probability", "classification", "tiles/status"):
            np.testing.assert_array_equal(g[name][:], r[name][:])


def test_disk_full_while_recording_a_lost_task_is_one_clear_error(tif, random_bundle, tmp_path):
    """The failure record of a lost task meets the full disk too: StoreNotWritable, not a raw OSError."""
    import errno
    from concurrent.futures import Future

    from reefmap.errors import StoreNotWritable
    from reefmap.execute.loop import submit_bounded
    from reefmap.execute.runner import prepare
    from reefmap.sources import open_mosaic

    plan, job, store = prepare(open_mosaic(str(tif)), random_bundle.path, tmp_path / "m.zarr", tile=256)

    class LosesEveryTask:
        def depth(self, n=None):
            return 1

        def submit(self, job, tasks, key):
            f = Future()
            f.set_exception(RuntimeError("worker killed"))
            return f

        def wait_one(self, futures):
            return next(iter(futures))

    def disk_full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    store.mark = disk_full
    job = type(job)(job.reader_spec, job.bundle, store, job.screen)
    with pytest.raises(StoreNotWritable, match="no space left on the device writing the map .*m.zarr"):
        submit_bounded(iter([np.array([[0, 0]])]), plan, job, LosesEveryTask(), limit=1, on_outcome=lambda o: None)


@pytest.mark.slow
def test_an_unreachable_gcs_url_is_one_clear_line_in_bounded_time(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    r = cli_subprocess("run", "--mosaic", "gs://bucket/scene.tif", "--out", tmp_path / "m.zarr", timeout=180,
                       env={"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"})
    assert r.returncode == 2 and time.monotonic() - t0 < 120
    one_error_line(r.stderr, "gs://bucket/scene.tif", "cannot be reached", f"127.0.0.1:{port}")
    assert not (tmp_path / "m.zarr").exists()


def test_s3_without_s3fs_names_the_package(tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("s3fs") is not None:
        pytest.skip("s3fs is installed here")
    code, _, err = run_cli(capsys, "run", "--mosaic", "s3://bucket/scene.tif", "--out", tmp_path / "m.zarr")
    assert code == 2
    one_error_line(err, "s3://", "pip install s3fs")


def test_an_http_500_is_not_called_missing(tmp_path, capsys):
    import http.server
    import threading

    class Fails(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(500)
            self.end_headers()

        do_HEAD = do_GET

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Fails)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/scene.tif"
        code, _, err = run_cli(capsys, "run", "--mosaic", url, "--out", tmp_path / "m.zarr")
    finally:
        server.shutdown()
    assert code == 2
    line = one_error_line(err, url, "cannot be reached", "500")
    assert "does not exist" not in line


def test_a_tile_larger_than_the_mosaic_is_cut_to_it_at_once(tif, random_bundle, tmp_path, capsys):
    t0 = time.monotonic()
    code, out, err = run_cli(capsys, "run", "--mosaic", tif, "--model", random_bundle.path, "--out",
                             tmp_path / "m.zarr", "--tile", "100000", "--workers", "1", "--json")
    assert code == 0, err
    assert "tile 100000 px is larger than the mosaic (512 x 512 px): using tile 1024" in err
    assert json.loads(out)["planned"] == 1 and time.monotonic() - t0 < 90
    assert zarr.open_group(str(tmp_path / "m.zarr"), mode="r")["classification"].chunks == (1024, 1024)


def test_a_negative_bbox_after_a_space_is_read_as_the_box(tif, random_bundle, tmp_path, capsys):
    box = lonlat_box((0, 200), (0, 200))
    assert box.startswith("-")
    out = tmp_path / "m.zarr"
    code, stdout, err = run_cli(capsys, "run", "--mosaic", tif, "--model", random_bundle.path, "--out", out,
                                "--tile", "256", "--workers", "1", "--bbox", box, "--json")
    assert code == 0, err
    assert json.loads(stdout)["planned"] == 1
    code, stdout, err = run_cli(capsys, "stats", out, "--bbox", box, "--json")
    assert code == 0, err
    assert json.loads(stdout)["complete_fraction"] == 1.0
    code, stdout, err = run_cli(capsys, "query", out, "--bbox", box, "--out", tmp_path / "q.tif")
    assert code == 0 and (tmp_path / "q.tif").exists(), err


def test_run_and_stats_refuse_a_latitude_of_95_alike(tif, random_bundle, tmp_path, capsys):
    out = tmp_path / "m.zarr"
    base = ["--mosaic", tif, "--model", random_bundle.path, "--tile", "256", "--workers", "1"]
    assert run_cli(capsys, "run", *base, "--out", out)[0] == 0
    code, _, run_err = run_cli(capsys, "run", *base, "--out", tmp_path / "n.zarr", "--bbox", "-78.5,24,-77.5,95")
    assert code == 2 and not (tmp_path / "n.zarr").exists()
    code, _, stats_err = run_cli(capsys, "stats", out, "--bbox", "-78.5,24,-77.5,95")
    assert code == 2
    assert one_error_line(run_err, "not in lon/lat degrees", "[-90, 90]") == one_error_line(stats_err)


def test_a_grid_mismatch_says_what_differs(tif, random_bundle, tmp_path, capsys):
    base = ["--mosaic", tif, "--model", random_bundle.path, "--out", tmp_path / "m.zarr", "--workers", "1"]
    assert run_cli(capsys, "run", *base, "--tile", "256")[0] == 0
    code, _, err = run_cli(capsys, "run", *base, "--tile", "512")
    assert code == 2
    one_error_line(err, "grid.tile: store has 256, this run has 512", "refusing to mix")


def test_when_every_tile_fails_no_tile_is_said_to_be_written(tmp_path, random_bundle, capsys):
    path = write_tif(tmp_path / "bad.tif", textured((256, 256), seed=12), T)
    for r in range(2):
        for c in range(2):
            corrupt_block(path, r, c)
    code, _, err = run_cli(capsys, "run", "--mosaic", path, "--model", random_bundle.path, "--out",
                           tmp_path / "m.zarr", "--tile", "256", "--workers", "1")
    assert code == 1
    line = one_error_line(err, "1 tile(s) failed of 1 computed", "no tile was written")
    assert "the others are written" not in line


@pytest.mark.slow
def test_ctrl_c_stops_a_local_cluster_run_quickly_and_quietly(tmp_path, random_bundle):
    """Ctrl-C at a terminal signals the whole process group: the CLI process and its LocalCluster workers."""
    from conftest import REPO

    tif = write_tif(tmp_path / "big.tif", textured((2048, 2048), seed=4), T)
    out = tmp_path / "m.zarr"
    p = subprocess.Popen([sys.executable, "-m", "reefmap", "run", "--mosaic", str(tif), "--model", str(random_bundle.path),
                          "--out", str(out), "--tile", "64", "--no-screen", "--workers", "2"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 240
        while not any((out / "tiles" / "status" / "c").glob("*/*")):  # computing: a first tile is recorded
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()
            time.sleep(0.1)
        t0 = time.monotonic()
        os.killpg(p.pid, signal.SIGINT)
        _, err = p.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 130 and took < 5, (took, err)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) <= 4 and lines[-1].startswith("reefmap: interrupted; re-run the same command"), err
    assert zarr.open_group(str(out), mode="r")["tiles/status"][:].max() <= 1  # nothing recorded as failed
