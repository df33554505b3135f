"""Trust (issue 9): credentials in URLs never reach the store, messages, logs or pictures; a store with symlinks is
never written through; a map never silently mixes inputs.

Real components: a GeoTIFF served over HTTP by a server on 127.0.0.1 (range requests, basic auth or a presigned-style
signature, failing on demand), ``reefmap`` run as a command in a fresh interpreter (its LocalCluster workers'
output captured too), the GCS emulator (tests/gcs_emulator.py).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

try:  # must come before anything imports gcsfs: it sets the emulator's environment
    from gcs_emulator import gcs_emulator, gcs_fs  # noqa: F401  (pytest fixtures)
except ImportError:  # tests/ collected as a package
    from tests.gcs_emulator import gcs_emulator, gcs_fs  # noqa: F401

import numpy as np
import pytest
import rasterio
import zarr
from affine import Affine

from conftest import textured
from reefmap.store.format import decode_meta, encode_meta
from reefmap.errors import StoreError, StoreMismatch, Unreachable
from reefmap.execute.runner import run
from reefmap.products.overviews import build_overviews
from reefmap.sources import open_mosaic, reader_of
from reefmap.sources.base import public_spec
from reefmap.sources.urls import redact, redact_text
from reefmap.store.format import TileState

REPO = Path(__file__).resolve().parents[1]
T = Affine(30.0, 0, 200000.0, 0, -30.0, 2700000.0)
PASSWORD, SIGNATURE, CREDENTIAL, TOKEN = "S3CRET-PASS", "S3CRET-SIG-9f8e", "S3CRET-CRED-AKIA", "S3CRET-GCS-TOKEN-42"
SECRETS = (PASSWORD, SIGNATURE, CREDENTIAL, TOKEN)
#: ranges starting at or past this byte fail (HTTP 500) in ``fail_from`` mode: fsspec reads 5 MiB blocks, so the
#: header and the first rows of tiles come in the first block and the tiles of the last rows fail
FAIL_FROM = 5 * 2**20

pytestmark = [pytest.mark.filterwarnings("ignore::zarr.errors.UnstableSpecificationWarning")]


def write_tif(path, shape, seed, nodata=0, **kw):
    arr = textured(shape, seed=seed)
    with rasterio.open(path, "w", driver="GTiff", width=shape[1], height=shape[0], count=3, dtype="uint8",
                       crs="EPSG:32618", transform=T, nodata=nodata, tiled=True, blockxsize=256, blockysize=256, **kw) as d:
        d.write(arr)
    return path


class SceneServer:
    """An HTTP server on 127.0.0.1 serving files of one folder with range requests, only to requests carrying
    alice's password (basic auth) or the signature (``?X-Amz-Signature=``); ``fail_from``: answer 500 to ranges
    starting at or past that byte. Records each request's status."""

    def __init__(self, folder: Path):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def handle_one(self, body: bool):
                url = urlsplit(self.path)
                auth = self.headers.get("Authorization", "")
                basic = auth == "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
                signed = parse_qs(url.query).get("X-Amz-Signature") in ([SIGNATURE], [SIGNATURE + "-2"])
                path = folder / url.path.lstrip("/")
                rng = self.headers.get("Range")
                if not (basic or signed):
                    status, data = 401, b""
                elif not path.is_file():
                    status, data = 404, b""
                else:
                    data = path.read_bytes()
                    status = 200
                    if rng:
                        a, b = rng.split("=", 1)[1].split("-")
                        a, b = int(a), min(int(b) if b else len(data) - 1, len(data) - 1)
                        status, data = (500, b"") if server.fail_from is not None and a >= server.fail_from else \
                            (206, data[a:b + 1])
                with server.lock:
                    server.log.append((self.command, rng, status))
                self.send_response(status)
                if status == 206:
                    self.send_header("Content-Range", f"bytes {a}-{b}/{path.stat().st_size}")
                if status == 401:
                    self.send_header("WWW-Authenticate", 'Basic realm="scenes"')
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(data)) if status != 200 or body else str(path.stat().st_size))
                self.end_headers()
                if body and data:
                    try:
                        self.wfile.write(data)
                    except (BrokenPipeError, ConnectionResetError):  # fsspec's exists() reads only the status
                        pass

            def do_GET(self):
                self.handle_one(True)

            def do_HEAD(self):
                self.handle_one(False)

        self.fail_from: int | None = None
        self.log: list[tuple] = []
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path):
    folder = tmp_path / "www"
    folder.mkdir()
    s = SceneServer(folder)
    yield s, folder
    s.close()


def reefmap_cli(*args, timeout=300):
    """``reefmap ARGS`` in a fresh interpreter: (exit code, stdout, stderr), the workers' output included."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "reefmap", *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, env=env, cwd=REPO)
    return r.returncode, r.stdout, r.stderr


def secrets_in_tree(root: Path) -> list[str]:
    """``file: secret`` for every secret found in the bytes of any file below ``root``."""
    hits = []
    for p in sorted(root.rglob("*")):
        if p.is_file():
            b = p.read_bytes()
            hits += [f"{p}: {s}" for s in SECRETS if s.encode() in b]
    return hits


def test_redact_hides_userinfo_and_signatures_and_keeps_the_rest():
    assert redact(f"http://alice:{PASSWORD}@127.0.0.1:8765/scene.tif") == "http://***@127.0.0.1:8765/scene.tif"
    assert redact("https://tok@host/x.tif") == "https://***@host/x.tif"
    assert redact(f"https://b.s3.amazonaws.com/k.tif?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={CREDENTIAL}"
                  f"&X-Amz-Signature={SIGNATURE}&x-id=GetObject") == (
        "https://b.s3.amazonaws.com/k.tif?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=REDACTED"
        "&X-Amz-Signature=REDACTED&x-id=GetObject")
    sas = "https://a.blob.core.windows.net/c/x.tif?sv=2021&se=2030&sp=r&sr=b&skoid=o1&sig=abc%3D&page=2"
    assert redact(sas) == ("https://a.blob.core.windows.net/c/x.tif?sv=REDACTED&se=REDACTED&sp=REDACTED&sr=REDACTED"
                           "&skoid=REDACTED&sig=REDACTED&page=2")
    assert redact("https://h/x?myAccessToken=1&client_secret=2&Password=3&n=4") == \
        "https://h/x?myAccessToken=REDACTED&client_secret=REDACTED&Password=REDACTED&n=4"
    for plain in ("gs://bucket/a.tif", "/data/a.tif", "memory://m/a.zarr", "https://h/x.tif?page=2#top"):
        assert redact(plain) == plain
    msg = f"500, message='Internal Server Error', url=URL('http://alice:{PASSWORD}@127.0.0.1:1/x.tif?sig={SIGNATURE}')"
    assert redact_text(msg) == "500, message='Internal Server Error', url=URL('http://***@127.0.0.1:1/x.tif?sig=REDACTED')"
    # provenance: every URL in a spec, and storage_options values (endpoint_url's userinfo too)
    spec = public_spec({"kind": "geotiff", "paths": [f"http://alice:{PASSWORD}@h/a.tif"],
                        "storage_options": {"endpoint_url": f"http://bob:{PASSWORD}@minio:9000", "token": TOKEN,
                                            "anon": False}})
    assert spec == {"kind": "geotiff", "paths": ["http://***@h/a.tif"],
                    "storage_options": {"endpoint_url": "http://***@minio:9000", "token": "<redacted>", "anon": False}}


def test_basic_auth_url_never_persisted_or_shown_even_when_tiles_fail(server, tmp_path, random_bundle):
    """`reefmap run` on http://alice:PASSWORD@127.0.0.1/scene.tif through the CLI (a LocalCluster worker), the
    server failing the last rows' ranges midway; then `status`, `status --json`, `status --map`: the password is in
    no file of the store, no picture and no line of output, while the run really read through it."""
    srv, www = server
    write_tif(www / "scene.tif", (1600, 1600), seed=5)  # 7.7 MB, uncompressed: the last rows lie past FAIL_FROM
    srv.fail_from = FAIL_FROM
    url = f"http://alice:{PASSWORD}@127.0.0.1:{srv.port}/scene.tif"
    out = tmp_path / "m.zarr"
    rc, text, err = reefmap_cli("run", "--mosaic", url, "--model", random_bundle.path, "--out", out, "--tile", 512,
                                "--workers", 1)
    outputs = [text, err]
    assert rc == 1 and "tile(s) failed" in err, err[-3000:]
    assert any(st == 206 for _, _, st in srv.log) and any(st == 500 for _, _, st in srv.log)  # read with the password
    g = zarr.open_group(str(out), mode="r")
    states = g["tiles/status"][:]
    errors = {tuple(e.attrs["tile"]): e.attrs["error"] for _, e in g["tile_errors"].groups()}
    assert (states == TileState.FAILED).sum() == len(errors) > 0 and (states == TileState.DONE).any()
    assert all(f"127.0.0.1:{srv.port}/scene.tif" in e for e in errors.values()), errors  # the reason names the file
    assert all("cannot be read" in e and "500" in e and "corrupt" not in e for e in errors.values()), errors
    attrs = decode_meta(g.attrs["reefmap"])
    assert attrs["sources"][0]["paths"] == [f"http://***@127.0.0.1:{srv.port}/scene.tif"]
    assert attrs["identity"]["sources"][0]["locations"] == [f"http://***@127.0.0.1:{srv.port}/scene.tif"]
    for args in (["status", out], ["status", out, "--json"], ["status", out, "--map", tmp_path / "progress.png"]):
        rc, text, err = reefmap_cli(*args)
        assert rc == 0, err
        outputs += [text, err]
    assert (tmp_path / "progress.png").stat().st_size > 1000
    # a resume with the server healthy recomputes only the failed tiles, through the same (redacted) identity
    srv.fail_from = None
    rc, text, err = reefmap_cli("run", "--mosaic", url, "--model", random_bundle.path, "--out", out, "--tile", 512,
                                "--workers", 1, "--json")
    assert rc == 0 and json.loads(text)["computed"] == len(errors), err[-3000:]
    outputs += [text, err]
    assert secrets_in_tree(tmp_path) == []
    assert not [t for t in outputs if PASSWORD in t]


def test_a_server_failing_every_range_request_is_one_error_line_not_a_crash(server, tmp_path, random_bundle):
    """The server answers HEAD and whole-file GETs but 500 to every range request, the GeoTIFF header's first. A
    read that raises inside GDAL aborted the process (``std::length_error``, exit -6); now the file ends at the
    failed read and the run stops with one line naming the URL (redacted) and the server's answer, before any
    store exists."""
    srv, www = server
    write_tif(www / "scene.tif", (600, 600), seed=6)
    srv.fail_from = 0
    url = f"http://alice:{PASSWORD}@127.0.0.1:{srv.port}/scene.tif"
    rc, text, err = reefmap_cli("run", "--mosaic", url, "--model", random_bundle.path, "--out", tmp_path / "m.zarr",
                                "--tile", 256, "--workers", 1)
    assert rc == 2, (rc, err[-3000:])
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("reefmap: error:") and "Traceback" not in err, err
    assert f"http://***@127.0.0.1:{srv.port}/scene.tif cannot be read" in lines[0] and "500" in lines[0], lines[0]
    assert any(st == 500 for _, _, st in srv.log) and PASSWORD not in text + err
    assert not (tmp_path / "m.zarr").exists()


def test_presigned_url_through_the_cli_and_the_python_face(server, tmp_path, random_bundle):
    """A presigned-style URL (?X-Amz-Signature=...&X-Amz-Credential=...): `reefmap run` reads through it (a
    LocalCluster worker) and shows/stores it redacted; `open_mosaic(...).attrs` holds it redacted (saving the
    DataArray writes no secret); re-signed, the URL keeps its identity, so a resume is accepted; an error raised by
    a reader names the URL without the signature; GDAL probes no side-car file (it would print its signed URL)."""
    srv, www = server
    write_tif(www / "scene.tif", (600, 600), seed=6)
    url = f"http://127.0.0.1:{srv.port}/scene.tif?X-Amz-Credential={CREDENTIAL}&X-Amz-Signature={SIGNATURE}"
    out = tmp_path / "m.zarr"
    rc, text, err = reefmap_cli("run", "--mosaic", url, "--model", random_bundle.path, "--out", out, "--tile", 256,
                                "--workers", 1, "--json")
    assert rc == 0 and json.loads(text)["done"] + json.loads(text)["skipped"] == 9, err[-3000:]
    outputs = [text, err]
    assert any(st == 206 for _, _, st in srv.log) and all(st != 401 for _, _, st in srv.log)
    sources = decode_meta(zarr.open_group(str(out), mode="r").attrs["reefmap"])["sources"]
    assert sources[0]["paths"] == [f"http://127.0.0.1:{srv.port}/scene.tif?X-Amz-Credential=REDACTED"
                                   "&X-Amz-Signature=REDACTED"]
    resigned = open_mosaic(url.replace(SIGNATURE, SIGNATURE + "-2"), chunks=256)
    assert SIGNATURE not in json.dumps(dict(resigned.attrs)) and CREDENTIAL not in json.dumps(dict(resigned.attrs))
    assert "X-Amz-Signature=REDACTED" in resigned.attrs["reefmap_source"]
    resigned.isel(band=0).drop_vars("spatial_ref").to_dataset(name="m").to_zarr(tmp_path / "saved.zarr",
                                                                                 consolidated=False)
    zarr.open_group(str(out), mode="r+")["tiles/status"][2, 2] = int(TileState.PENDING)
    assert run(resigned, random_bundle.path, out, tile=256, client="inprocess", progress=False).computed == 1
    with pytest.raises(Unreachable, match="credentials") as e:  # refused (401): not "missing"; names the URL, not the signature
        open_mosaic(url.replace(SIGNATURE, "S3CRET-SIG-WRONG"))
    assert "X-Amz-Signature=REDACTED" in str(e.value) and "S3CRET" not in str(e.value)
    assert all(st != 401 for _, _, st in srv.log[:-1])
    assert secrets_in_tree(tmp_path) == []
    assert not [t for t in outputs if SIGNATURE in t or CREDENTIAL in t]


def test_status_and_the_progress_caption_show_a_store_url_without_credentials(tmp_path, monkeypatch):
    """A map read through a URL with credentials (here an open group handle stands for the remote store): `status`
    and the progress picture's caption name it redacted."""
    import reefmap.viz.progress_map as pm
    from reefmap.store.mapstore import MapStore
    from reefmap.store.status import format_status, status

    tif = write_tif(tmp_path / "a.tif", (300, 300), seed=1)
    run(open_mosaic(tif), None, tmp_path / "m.zarr", tile=256, client="inprocess", progress=False)
    url = f"http://alice:{PASSWORD}@127.0.0.1:9/m.zarr?X-Amz-Signature={SIGNATURE}"  # port 9: nothing listens
    store = MapStore(url, mode="r", group=zarr.open_group(str(tmp_path / "m.zarr"), mode="r"))
    shown = "http://***@127.0.0.1:9/m.zarr?X-Amz-Signature=REDACTED"
    s = status(store)
    assert s["store"] == shown and format_status(s).startswith(shown)
    titles = []
    render = pm.render_map
    monkeypatch.setattr(pm, "render_map", lambda *a, **kw: titles.append(kw["title"]) or render(*a, **kw))
    pm.progress_png(store, tmp_path / "p.png", coastline=False)
    assert titles == [shown]


def test_a_token_in_storage_options_stays_in_memory(gcs_fs, tmp_path, random_bundle, monkeypatch):
    """GCS (the emulator) with a token in storage_options: the DataArray's attributes, the map and a saved copy
    of the mosaic hold no token; the run (in this process) reads through it; a mosaic whose credentials this process
    no longer has is refused with a clear error, not read without them."""
    from reefmap.caching import caches

    fs, bucket = gcs_fs
    monkeypatch.setenv("FETCH_RAW_TOKEN_EXPIRY", "false")  # gcsfs: use the raw token as it is (no Google request)
    fs.put(str(write_tif(tmp_path / "scene.tif", (400, 400), seed=7)), f"{bucket}/scene.tif")
    mosaic = open_mosaic(f"gs://{bucket}/scene.tif", chunks=256, storage_options={"token": TOKEN})
    assert TOKEN not in json.dumps(dict(mosaic.attrs))
    assert reader_of(mosaic).storage_options == {"token": TOKEN}
    mosaic.isel(band=0).drop_vars("spatial_ref").to_dataset(name="m").to_netcdf(tmp_path / "saved.nc")
    s = run(mosaic, random_bundle.path, tmp_path / "m.zarr", tile=256, client="inprocess", progress=False)
    assert s.done + s.skipped == 4
    sources = decode_meta(zarr.open_group(str(tmp_path / "m.zarr"), mode="r").attrs["reefmap"])["sources"]
    assert sources[0]["storage_options"] == {"token": "<redacted>"}
    assert secrets_in_tree(tmp_path) == []
    caches()["mosaic credentials"].clear()
    with pytest.raises(Exception, match="open it again with reefmap.open_mosaic"):
        reader_of(mosaic)


def test_a_symlinked_chunk_folder_is_refused_and_nothing_is_written_outside(tmp_path, random_bundle):
    """A crafted store whose `reef_probability/c/0` is a symlink to a folder outside: the resume refuses the store
    (naming the link and the fix) before writing anything; the outside folder stays empty."""
    tif = write_tif(tmp_path / "a.tif", (500, 500), seed=8)
    out = tmp_path / "m.zarr"
    run(open_mosaic(tif), random_bundle.path, out, tile=256, client="inprocess", progress=False)
    outside = tmp_path / "outside"
    outside.mkdir()
    row = out / "reef_probability" / "c" / "0"
    for f in row.iterdir():
        f.unlink()
    row.rmdir()
    row.symlink_to(outside, target_is_directory=True)
    g = zarr.open_group(str(out), mode="r+")
    g["tiles/status"][0, :] = int(TileState.PENDING)  # the row's tiles must be written again
    with pytest.raises(StoreError, match=r"reef_probability/c/0.*outside the store.*cp -rL") as e:
        run(open_mosaic(tif), random_bundle.path, out, tile=256, client="inprocess", progress=False)
    assert "symlink" in str(e.value)
    with pytest.raises(StoreError, match="symlinks"):  # overviews are written inside the map too
        build_overviews(str(out))
    assert list(outside.iterdir()) == []
    assert (g["tiles/status"][0, :] == TileState.PENDING).all()


def _tif_run(path, out, bundle, **kw):
    return run(open_mosaic(path), bundle, out, tile=256, client="inprocess", progress=False, **kw)


def test_another_mosaic_is_refused_unless_allowed_and_recorded(tmp_path, random_bundle):
    a = write_tif(tmp_path / "a.tif", (300, 300), seed=1)
    b = write_tif(tmp_path / "b.tif", (300, 300), seed=2)
    out = tmp_path / "m.zarr"
    _tif_run(a, out, random_bundle.path)
    assert _tif_run(a, out, random_bundle.path).computed == 0  # the same input resumes
    with pytest.raises(StoreMismatch, match=rf"has geotiff {tmp_path}/a.tif, this run reads geotiff {tmp_path}/b.tif.*"
                                            "--allow-new-sources"):
        _tif_run(b, out, random_bundle.path)
    write_tif(a, (300, 300), seed=1, nodata=255)  # the same path, rewritten with another header
    with pytest.raises(StoreMismatch, match="the data there changed"):
        _tif_run(a, out, random_bundle.path)
    write_tif(a, (300, 300), seed=1)
    _tif_run(b, out, random_bundle.path, allow_new_sources=True)
    attrs = decode_meta(zarr.open_group(str(out), mode="r").attrs["reefmap"])
    assert [s["paths"] for s in attrs["sources"]] == [[str(a)], [str(b)]]
    assert [s["locations"] for s in attrs["identity"]["sources"]] == [[str(a)], [str(b)]]
    assert _tif_run(b, out, random_bundle.path).computed == 0 and _tif_run(a, out, random_bundle.path).computed == 0


def test_allow_new_sources_from_the_cli(tmp_path, random_bundle):
    from reefmap.cli.main import main

    a = write_tif(tmp_path / "a.tif", (300, 300), seed=1)
    b = write_tif(tmp_path / "b.tif", (300, 300), seed=2)
    out = tmp_path / "m.zarr"
    _tif_run(a, out, random_bundle.path)
    base = ["run", "--mosaic", str(b), "--model", random_bundle.path, "--out", str(out), "--tile", "256", "--workers", "1"]
    assert main(base) == 2
    assert main([*base, "--allow-new-sources"]) == 0


def test_a_store_from_before_source_identities_opens_resumes_and_records(tmp_path, random_bundle):
    a = write_tif(tmp_path / "a.tif", (300, 300), seed=1)
    out = tmp_path / "m.zarr"
    _tif_run(a, out, random_bundle.path)
    g = zarr.open_group(str(out), mode="r+")
    attrs = decode_meta(g.attrs["reefmap"])
    del attrs["identity"]["sources"]  # what a store written before this change holds
    g.attrs["reefmap"] = encode_meta(attrs)
    g["tiles/status"][0, 0] = int(TileState.PENDING)
    assert _tif_run(a, out, random_bundle.path).computed == 1
    recorded = decode_meta(zarr.open_group(str(out), mode="r").attrs["reefmap"])
    assert recorded["identity"]["sources"][0]["locations"] == [str(a)] and len(recorded["sources"]) == 1
    with pytest.raises(StoreMismatch):
        _tif_run(write_tif(tmp_path / "b.tif", (300, 300), seed=2), out, random_bundle.path)


def test_the_identity_of_an_in_memory_mosaic_is_its_pixels_type_not_its_random_id(memory_mosaic, tmp_path, random_bundle):
    from reefmap.sources import memory_reader
    from reefmap.sources.base import reader_to_dataarray

    mosaic, arr = memory_mosaic
    out = tmp_path / "m.zarr"
    run(mosaic, random_bundle.path, out, tile=256, client="inprocess", progress=False)
    again = reader_to_dataarray(memory_reader(arr, reader_of(mosaic).geobox, nodata=0, band_names=["red", "green", "blue"]),
                                chunks=256)
    assert run(again, random_bundle.path, out, tile=256, client="inprocess", progress=False).computed == 0
    np.testing.assert_array_equal(np.asarray(again), arr)
