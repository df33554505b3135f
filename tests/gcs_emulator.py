"""A reusable pytest fixture: a local Google Cloud Storage emulator (``gcp-storage-emulator``).

Use it from a test module with::

    from gcs_emulator import gcs_emulator, gcs_fs  # noqa: F401  (pytest fixtures)

    def test_x(gcs_fs):          # a gcsfs filesystem talking to the emulator, with a fresh bucket
        fs, bucket = gcs_fs
        fs.pipe(f"{bucket}/a.txt", b"hi")

``gcs_emulator`` (session scope) starts ``gcp-storage-emulator start --host=127.0.0.1 --port=PORT --in-memory``
on a free port as a subprocess, waits until it answers, yields its URL (``http://127.0.0.1:PORT``) and kills
it at the end. It is skipped (with the reason) when the emulator is not installed or does not start.

Two settings must be in the environment *before* gcsfs is imported or used (see shared/notes/stack.md):
``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` (else every operation stalls 60 s on a gRPC/TLS probe) and
``STORAGE_EMULATOR_HOST``. Importing this module sets both (the port is chosen here, at import), so import it
before anything imports gcsfs. Filesystems are made with ``token="anon"``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest


def _free_port() -> int:
    """A free port below Linux's ephemeral range (32768-60999): the port is chosen at import but taken only when the
    fixture starts, and a port the OS hands out meanwhile (to a dask scheduler or worker of another test) would
    answer in the emulator's place."""
    import random

    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-31999 for the GCS emulator")


PORT = _free_port()
URL = f"http://127.0.0.1:{PORT}"

os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"
os.environ["STORAGE_EMULATOR_HOST"] = URL

#: storage options to pass to reefmap / fsspec for ``gs://`` URLs served by the emulator
STORAGE_OPTIONS = {"token": "anon"}


def _emulator_command() -> list[str] | None:
    exe = Path(sys.executable).with_name("gcp-storage-emulator")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("gcp-storage-emulator")
    return [found] if found else None


def _wait_until_up(proc: subprocess.Popen, url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gcp-storage-emulator exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/storage/v1/b", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"gcp-storage-emulator did not answer on {url} within {timeout:.0f} s")


@pytest.fixture(scope="session")
def gcs_emulator():
    """The URL of a running in-memory GCS emulator (started once per test session / xdist worker)."""
    cmd = _emulator_command()
    if cmd is None:
        pytest.skip("gcp-storage-emulator is not installed (pip install gcp-storage-emulator)")
    # the environment may have been changed by other code since import: set it again
    os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"
    os.environ["STORAGE_EMULATOR_HOST"] = URL
    proc = subprocess.Popen(
        [*cmd, "start", "--host=127.0.0.1", f"--port={PORT}", "--in-memory", "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        try:
            _wait_until_up(proc, URL)
        except RuntimeError as e:
            pytest.skip(f"the GCS emulator did not start: {e}")
        yield URL
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def gcs_fs(gcs_emulator):
    """``(fs, bucket)``: a gcsfs filesystem on the emulator and the name of a fresh, empty bucket."""
    import gcsfs

    fs = gcsfs.GCSFileSystem(**STORAGE_OPTIONS)
    bucket = "reefmap-test-" + uuid.uuid4().hex[:12]
    fs.mkdir(bucket)
    fs.invalidate_cache()
    yield fs, bucket
    try:
        fs.rm(bucket, recursive=True)
    except Exception:  # noqa: BLE001 - best-effort cleanup of an in-memory emulator
        pass
    fs.invalidate_cache()
