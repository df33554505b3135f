"""The Jupyter launch notebook, executed by a real kernel (nbclient), end to end."""

import os
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import REPO

NOTEBOOK = REPO / "cluster" / "launch.ipynb"


def execute_notebook(tmp_path, env: dict):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def outputs_text(nb):
    text, images = [], 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                text.append(out["text"])
            data = out.get("data", {})
            images += "image/png" in data
            text.append(data.get("text/plain", ""))
    return "\n".join(text), images


@pytest.mark.slow
def test_launch_notebook_runs_on_a_local_cluster(tmp_path):
    assert sys.executable  # the kernel is this environment's python3 (ipykernel is installed in it)
    nb = execute_notebook(tmp_path, {"REEFMAP_PROFILE": "local", "REEFMAP_JOBS": "2",
                                     "REEFMAP_NOTEBOOK_OUT": str(tmp_path / "nb")})
    text, images = outputs_text(nb)
    assert "workers: 2" in text
    assert images == 1 and (tmp_path / "nb" / "region.png").exists()
    assert "'pending': 0" in text and "'failed': 0" in text
    assert "closed" in text
    assert (tmp_path / "nb" / "map.zarr" / "zarr.json").exists()
