"""The Jupyter launch notebook, executed by a real kernel (nbclient), end to end."""

import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import REPO
from slurm_fixtures import reap, slurm, slurm_overrides, squeue, wait_until  # noqa: F401  (fixtures + helpers)

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
                text.append(out["text"])  # one print may arrive as several stream outputs: join them as shown
            data = out.get("data", {})
            images += "image/png" in data
            if "text/plain" in data:
                text.append("\n" + data["text/plain"] + "\n")
    return "".join(text), images


def cell_output(cell) -> tuple[str, int]:
    """The text a code cell printed and how many PNG images it showed."""
    text, images = outputs_text(nbformat.v4.new_notebook(cells=[cell]))
    return text, images


def check_the_finished_map_is_looked_at(nb, out) -> None:
    """The notebook ends by looking at the finished map: open_map, stats, query (a picture), the progress map."""
    import re

    look = [c for c in nb.cells if c.cell_type == "code"][-3:]
    assert "reefmap.open_map(" in look[0].source and "reefmap.stats(" in look[0].source
    assert "reefmap.query(" in look[1].source and "progress_png(" in look[2].source
    text, images = cell_output(look[0])
    assert images == 0 and "100% finished" in text, text
    reef, area = map(float, re.search(r"stats: reef area ([\d.]+) km² of ([\d.]+) km², complete 100%", text).groups())
    assert 0 < reef < area, text
    text, images = cell_output(look[1])
    assert images == 1 and (out / "middle.png").exists(), text
    assert re.search(r"query: \{'y': \d+, 'x': \d+\} 100% of its pixels in finished tiles", text), text
    text, images = cell_output(look[2])
    assert images == 1 and (out / "progress.png").exists(), text
    assert "'pending': 0" in text and "'failed': 0" in text and "100% finished" in text, text


@pytest.mark.slow
def test_launch_notebook_runs_on_a_local_cluster(tmp_path):
    assert sys.executable  # the kernel is this environment's python3 (ipykernel is installed in it)
    nb = execute_notebook(tmp_path, {"REEFMAP_PROFILE": "local", "REEFMAP_JOBS": "2",
                                     "REEFMAP_NOTEBOOK_OUT": str(tmp_path / "nb")})
    text, images = outputs_text(nb)
    assert "workers: 2" in text
    assert images == 3 and (tmp_path / "nb" / "region.png").exists()
    assert "'pending': 0" in text and "'failed': 0" in text
    assert "closed" in text
    assert (tmp_path / "nb" / "map.zarr" / "zarr.json").exists()
    check_the_finished_map_is_looked_at(nb, tmp_path / "nb")


@pytest.mark.slurm
@pytest.mark.slow
def test_launch_notebook_runs_on_slurm(slurm, slurm_overrides, tmp_path, reap):
    """The same notebook with REEFMAP_PROFILE = a SLURM profile file: workers are SLURM jobs, cancelled at the end."""
    import yaml

    from reefmap.cluster.launcher import PACKAGE_PROFILES
    # The notebook calls launch(PROFILE, jobs=JOBS) with no overrides: the local-SLURM fitting goes into a profile file
    # (slurm-cpu.yaml + slurm_overrides; launch() accepts a path to a profile YAML file).
    shipped = yaml.safe_load((PACKAGE_PROFILES / "slurm-cpu.yaml").read_text())
    section = shipped["jobqueue"]["slurm-cpu"]
    overrides = dict(slurm_overrides)
    name = overrides.pop("job_name")
    section["name"] = name
    section["scheduler-options"] = {**(section.get("scheduler-options") or {}),
                                    "dashboard_address": overrides.pop("dashboard_address")}
    # keep the shipped prologue's exports, drop its /path/to/ placeholder
    prologue = overrides.pop("job_script_prologue")
    prologue += [line for line in section["job-script-prologue"] if "/path/to/" not in line]
    section["job-script-prologue"] = prologue
    for key, value in overrides.items():
        section[key.replace("_", "-")] = value
    profile = tmp_path / "slurm-test.yaml"
    profile.write_text(yaml.safe_dump({"jobqueue": {"slurm-test": section}}, sort_keys=False))
    log_dir = Path(overrides["log_directory"])

    nb = execute_notebook(tmp_path, {"REEFMAP_PROFILE": str(profile), "REEFMAP_JOBS": "2",
                                     "REEFMAP_NOTEBOOK_OUT": str(tmp_path / "nb")})
    assert wait_until(lambda: not squeue(name), timeout=5), squeue(name)  # the notebook's shutdown cancelled them
    text, images = outputs_text(nb)
    assert "reefmap: cluster 'slurm-test' (SLURM, 2 jobs)" in text
    assert "workers: 2" in text
    assert images == 3 and (tmp_path / "nb" / "region.png").exists()
    assert "'pending': 0" in text and "'failed': 0" in text
    assert "closed" in text
    assert (tmp_path / "nb" / "map.zarr" / "zarr.json").exists()
    assert len(list(log_dir.glob(f"{name}-*.err"))) == 2  # the two workers were SLURM jobs of this profile
    check_the_finished_map_is_looked_at(nb, tmp_path / "nb")
