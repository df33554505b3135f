"""Fixtures and helpers for tests against a real SLURM (the local one from ``cluster/local-slurm/start.sh``).

Use them from a test module with::

    from slurm_fixtures import reap, slurm, slurm_overrides, squeue, wait_until  # noqa: F401  (fixtures + helpers)

    @pytest.mark.slurm
    def test_x(slurm, slurm_overrides):
        client = reefmap.cluster.launch("slurm-cpu", jobs=2, **slurm_overrides)

``slurm`` (session scope) checks that SLURM answers (``scontrol ping`` UP, node ``localhost`` idle/mixed/allocated
in ``sinfo``) and skips the test with the reason otherwise. It never starts SLURM itself: ``make test`` runs
``cluster/local-slurm/start.sh`` first (or run it yourself, as root). The SLURM commands find the configuration at
``/etc/slurm/slurm.conf`` (written by start.sh), or at ``$SLURM_CONF`` if that is set.

``slurm_overrides`` (function scope) are ``launch()`` overrides that fit the profiles to this one-machine cluster:
loopback networking, one core and 1 GB per job, no nanny process, a 5-minute walltime with a 4-minute worker lifetime, job logs in
the test's tmp_path, a free dashboard port, this interpreter's environment activated in the job with ``tests/`` on
``PYTHONPATH`` (functions defined in test modules are pickled by reference, so workers must import them), and a job name
unique to the test (so ``squeue(name)`` sees only this test's jobs even when others use the cluster).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

START = "cluster/local-slurm/start.sh"
TESTS = Path(__file__).resolve().parent


@dataclass(frozen=True)
class SlurmInfo:
    node_state: str
    cpus: int
    conf: str


def _run(*cmd: str, timeout: float = 10) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def slurm_down_reason() -> str | None:
    """Why SLURM cannot be used now (one line), or None when it is up."""
    for tool in ("sinfo", "scontrol", "sbatch", "squeue", "scancel"):
        if shutil.which(tool) is None:
            return f"SLURM is not installed ({tool} not on PATH); start it with `bash {START}` (as root)"
    conf = os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")
    if not os.path.isfile(conf):
        return f"no SLURM configuration at {conf}; start the local SLURM with `bash {START}` (as root)"
    try:
        ping = _run("scontrol", "ping")
        if "is UP" not in ping.stdout:
            said = ((ping.stdout + ping.stderr).strip().splitlines() or ["no answer"])[0]
            return f"slurmctld is not up (scontrol ping: {said!r}); run `bash {START}`"
        state = _run("sinfo", "-h", "-n", "localhost", "-o", "%t").stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        return f"SLURM commands fail ({e}); run `bash {START}`"
    if state.rstrip("*+~#$@%!^-") not in ("idle", "mix", "alloc", "comp"):  # comp: finishing a job; suffixes: flags
        return f"SLURM node localhost is {state or 'missing'!r}, not idle; restart it with `bash {START}`"
    return None


@pytest.fixture(scope="session")
def slurm() -> SlurmInfo:
    """A running SLURM (skips the test, with the reason, when there is none). Does not start one."""
    reason = slurm_down_reason()
    if reason:
        pytest.skip(reason)
    out = _run("sinfo", "-h", "-n", "localhost", "-o", "%t %c").stdout.split()
    return SlurmInfo(node_state=out[0], cpus=int(out[1]), conf=os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf"))


@pytest.fixture
def slurm_overrides(tmp_path) -> dict:
    """``launch()`` overrides fitting a SLURM profile to the one-machine local cluster (see the module docstring)."""
    return {
        "job_name": f"reefmap-test-{uuid.uuid4().hex[:8]}",
        "queue": None,
        "interface": "lo",
        "cores": 1,
        "memory": "1GB",
        "walltime": "00:05:00",
        "worker_extra_args": ["--lifetime", "4m", "--lifetime-stagger", "10s"],
        "log_directory": str(tmp_path / "slurm-logs"),
        "local_directory": str(tmp_path / "worker-space"),
        "dashboard_address": ":0",
        "death_timeout": 30,
        "nanny": False,  # one Python process per job instead of two: a faster start on a small machine
        # this interpreter's environment, and tests/ importable (tasks defined in test modules are pickled by reference)
        "job_script_prologue": [f"source {sys.prefix}/bin/activate", f"export PYTHONPATH={TESTS}${{PYTHONPATH:+:$PYTHONPATH}}"],
    }


def squeue(name: str) -> dict[str, str]:
    """{job id: state} of the jobs named ``name`` that SLURM lists (pending, running or completing)."""
    out = _run("squeue", "-h", "-n", name, "-o", "%i %T").stdout
    return dict(line.split(maxsplit=1) for line in out.splitlines() if line.strip())


def wait_until(predicate, timeout: float, every: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return predicate()


def _worker_pids(marker: str) -> list[int]:
    """Live ``dask_worker`` processes whose command line mentions ``marker`` (a test's tmp_path: their local dir)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            args = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"distributed.cli.dask_worker" in args and any(marker.encode() in a for a in args):
            pids.append(int(d.name))
    return pids


def reap_workers(marker: str, grace: float = 5.0) -> list[int]:
    """Kill the worker processes of one test (``marker``: its tmp_path) that outlive their SLURM jobs; their pids.

    With ``ProctrackType=proctrack/linuxproc`` a worker that hung in ``Worker.close`` after the simultaneous SIGTERM
    (scancel) and scheduler-close of ``client.shutdown()`` was re-parented to init when the batch shell exited, so
    SLURM's SIGKILL after KillWait never reached it. start.sh now uses proctrack/pgid; this stays as the check.
    """
    wait_until(lambda: not _worker_pids(marker), timeout=grace)
    left = _worker_pids(marker)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


@pytest.fixture
def reap(tmp_path):
    """After the test: no worker process of this test may be left running (killed, with a warning, if one is)."""
    yield
    left = reap_workers(str(tmp_path))
    if left:
        warnings.warn(f"{len(left)} dask worker process(es) outlived their cancelled SLURM jobs and were killed "
                      f"(pids {left}); see reap_workers()", RuntimeWarning, stacklevel=1)  # fmt: skip
