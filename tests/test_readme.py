"""README.md is copy-paste clean: each fenced ```bash and ```python block runs as written, in README order.

The blocks run in a temp dir laid out like the checkout (its files linked; ``pipelines/`` copied, so a config's
relative paths resolve inside the temp dir) with ``../shared`` beside it, the real data the README names. ``reefmap``
and ``python`` are this environment's. A block preceded by ``<!-- readme-test: skip (why) -->`` is not run (it needs
SLURM, a bucket, or builds the environment); the skips must stay few.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, SHARED, shared_data

README = REPO / "README.md"
BLOCK = re.compile(r"(?:<!--\s*readme-test:\s*skip\s*\((?P<why>[^)]*)\)\s*-->\s*\n)?```(?P<lang>bash|python)\n"
                   r"(?P<code>.*?)```", re.S)
#: what the README says comes before its first snippets: ``make demo`` has written ./out/demo
DEMO = ["demo", "--out", "out/demo", "--size", "512", "--workers", "1"]


def readme_blocks() -> list[tuple[str, str, str | None]]:
    """``(language, code, why skipped or None)`` of each fenced bash/python block of README.md, in order."""
    return [(m["lang"], m["code"], m["why"]) for m in BLOCK.finditer(README.read_text())]


def test_the_readme_has_blocks_to_run_and_few_skips():
    blocks = readme_blocks()
    skipped = [why for _, _, why in blocks if why is not None]
    assert len(blocks) >= 8 and len(skipped) <= 4, skipped
    assert all(why.strip() for why in skipped)
    assert "pipelines/configs/bahamas.yaml" in README.read_text() and (REPO / "pipelines/configs/bahamas.yaml").exists()


def test_the_make_targets_the_readme_names_exist():
    names = set(re.findall(r"^make ([a-z-]+)", README.read_text(), re.M))
    assert {"demo", "test", "notebook"} <= names
    r = subprocess.run(["make", "-n", *sorted(names)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "jupyter lab" in r.stdout and "cluster/launch.ipynb" in r.stdout and '".[notebook]"' in r.stdout


@pytest.fixture
def checkout_copy(tmp_path):
    """``tmp/reefmap``: the checkout's layout (linked; ``pipelines`` copied) with ``tmp/shared`` beside it."""
    shared_data("real", "RGB.byte.tif")
    root = tmp_path / "reefmap"
    root.mkdir()
    for entry in REPO.iterdir():
        if entry.name in (".git", ".venv", "out", ".pytest_cache") or entry.name.endswith(".egg-info"):
            continue
        if entry.name == "pipelines":
            shutil.copytree(entry, root / entry.name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (root / entry.name).symlink_to(entry)
    (tmp_path / "shared").symlink_to(SHARED)
    return root


@pytest.mark.slow
def test_every_readme_block_runs_as_written(checkout_copy):
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def sh(args, what):
        r = subprocess.run(args, cwd=checkout_copy, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0 and "Traceback" not in r.stderr, f"{what} failed (rc {r.returncode}):\n{r.stdout}\n{r.stderr}"
        return r

    sh([sys.executable, "-m", "reefmap", *DEMO], "the demo the README starts with (make demo)")
    ran = 0
    for i, (lang, code, why) in enumerate(readme_blocks()):
        if why is not None:
            continue
        if lang == "bash":
            sh(["bash", "-e", "-o", "pipefail", "-c", code], f"README bash block {i}:\n{code}")
        else:
            script = checkout_copy / f"readme_block_{i}.py"
            script.write_text(code)
            sh([sys.executable, str(script)], f"README python block {i} (run as a script):\n{code}")
        ran += 1
    assert ran >= 6
    # what the blocks say they make is there
    for made in ("map.zarr", "pair.zarr", "out/bahamas.zarr", "andros.tif", "reef.nc", "my-gpu.yaml"):
        assert (checkout_copy / made).exists(), made
