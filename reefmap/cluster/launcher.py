"""Dask clusters from profiles: a LocalCluster, SLURM through dask-jobqueue, or an existing scheduler.

Cluster settings are data, not code: each profile is a YAML file in ``reefmap/cluster/profiles/`` (package data,
every key commented)::

    client = launch()                               # profile "local": a LocalCluster (profiles/local.yaml)
    client = launch("slurm-gpu", jobs=4)            # 4 SLURM jobs, one dask worker and one GPU each
    client = launch("slurm-cpu", adapt=(0, 20))     # 0..20 jobs, following the load
    client = launch("site/my-cluster.yaml", queue="gpu-long", walltime="08:00:00")   # a profile file + overrides
    client = launch("tcp://10.0.0.5:8786")          # connect to a running scheduler
    ...
    client.shutdown()                               # stops the cluster and cancels its jobs (close() only disconnects)

**Precedence** (highest first): keyword overrides given to :func:`launch` / :func:`cluster_kwargs` / :func:`job_script`
> the profile file > dask config ``jobqueue.slurm.*`` (e.g. ``~/.config/dask/jobqueue.yaml``) > dask-jobqueue's own
defaults. ``None`` (YAML ``null``) at any level means "not set here": the next level down applies. Dict values
(``scheduler_options``) are merged key by key; lists (``worker_extra_args``, ``job_script_prologue``, ...) are replaced
whole. The local profile has no dask-config level (LocalCluster's defaults apply).

**Where profiles are found**: ``<name>.yaml`` in the directories of the environment variable ``REEFMAP_PROFILES``
(``os.pathsep``-separated, searched first), then the profiles shipped inside the package (``reefmap.cluster``'s
``profiles/``, found with ``importlib.resources``: checkouts, editable installs and wheels alike).

**SLURM configuration**: the SLURM client commands (``sbatch``, ``squeue``, ``scancel``) that dask-jobqueue calls must
find ``slurm.conf``. On a real cluster they do; ``cluster/local-slurm/start.sh`` writes ``/etc/slurm/slurm.conf``
(their default path), so no ``SLURM_CONF`` is needed; set ``SLURM_CONF`` only for a configuration elsewhere.

A SLURM profile is validated before anything is submitted: a walltime that does not exceed the worker
``--lifetime`` (+ ``--lifetime-stagger``) is refused (SLURM would kill workers before they retire gracefully), and a
malformed walltime is an :class:`~reefmap.errors.InvalidParameter`. GPU profiles check on every worker that torch
sees a GPU (:func:`require_gpu`): a GPU profile without a GPU is an error, never a silent CPU run.

Nothing here imports torch at module level (:func:`require_gpu` imports it on the worker), and the local path does not
import dask-jobqueue.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from reefmap.cluster.local import connected_workers, start_local
from reefmap.errors import ClusterError, InvalidParameter
from reefmap.options import get_option

__all__ = [
    "PROFILES_ENV",
    "PACKAGE_PROFILES",
    "cluster_kwargs",
    "is_address",
    "job_script",
    "launch",
    "load_profile",
    "profile_dirs",
    "profile_names",
    "require_gpu",
]

#: Environment variable: extra profile directories (``os.pathsep``-separated), searched before the package's.
PROFILES_ENV = "REEFMAP_PROFILES"
#: The profiles shipped inside the package (package data of ``reefmap.cluster``).
PACKAGE_PROFILES = Path(str(resources.files("reefmap.cluster") / "profiles"))

_ADDRESS = re.compile(r"^(tcp|tls|inproc|ucx|ws|wss)://", re.IGNORECASE)
_PLACEHOLDER = "/path/to/"
_DEFAULT_SLURM_JOBS = 1

# SLURMCluster keyword arguments (dask-jobqueue 0.9.0: SLURMJob, Job, JobQueueCluster), minus deprecated ones.
# tests/test_cluster.py checks this set against the installed dask-jobqueue's signatures.
SLURM_KWARGS = frozenset(
    {
        # Job (worker) options
        "cores", "memory", "processes", "nanny", "protocol", "security", "interface", "death_timeout",
        "local_directory", "worker_command", "worker_extra_args", "job_extra_directives", "job_script_prologue",
        "job_directives_skip", "log_directory", "shebang", "python", "job_name", "config_name",
        # SLURMJob options
        "queue", "account", "walltime", "job_cpu", "job_mem",
        # JobQueueCluster (scheduler side) options
        "n_workers", "loop", "shared_temp_directory", "silence_logs", "name", "asynchronous", "scheduler_options",
        "scheduler_cls",
    }
)  # fmt: skip
_CLUSTER_ONLY = frozenset(
    {"n_workers", "loop", "shared_temp_directory", "silence_logs", "name", "asynchronous", "scheduler_options",
     "scheduler_cls", "security"}
)  # fmt: skip
_DEPRECATED = {
    "extra": "worker_extra_args",
    "env_extra": "job_script_prologue",
    "job_extra": "job_extra_directives",
    "header_skip": "job_directives_skip",
    "project": "account",
}
# Accepted for convenience (dask-jobqueue wants them inside scheduler_options).
_SCHEDULER_SHORTCUTS = ("dashboard_address", "host")


@dataclass(frozen=True)
class _Profile:
    name: str
    kind: str  # "slurm" or "local"
    path: Path
    options: dict[str, Any]  # keyword-argument spelling ("_"), None = not set by the profile


# ------------------------------------------------------------------------------------------------ finding profiles
def profile_dirs() -> list[Path]:
    """The directories searched for ``<name>.yaml``, in order: ``$REEFMAP_PROFILES`` entries, then the package's."""
    dirs = [Path(p).expanduser() for p in get_option("profiles")]
    return [*dirs, PACKAGE_PROFILES]


def profile_names() -> list[str]:
    """Names of the profiles that exist (``*.yaml`` stems in :func:`profile_dirs`), sorted."""
    names: set[str] = set()
    for d in profile_dirs():
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.yaml"))
    return sorted(names)


def is_address(profile: str | os.PathLike) -> bool:
    """Whether ``profile`` is a scheduler address (``tcp://host:8786``, ``tls://...``) rather than a profile."""
    return isinstance(profile, str) and bool(_ADDRESS.match(profile))


def _profile_path(profile: str | os.PathLike) -> Path:
    text = os.fspath(profile)
    if isinstance(profile, os.PathLike) or text.endswith((".yaml", ".yml")) or os.sep in text:
        path = Path(text).expanduser()
        if not path.is_file():
            raise ClusterError(f"cluster profile file {text!r} does not exist; give an existing YAML file or one of "
                               f"the profiles {', '.join(profile_names()) or '(none found)'}")  # fmt: skip
        return path
    for d in profile_dirs():
        if (d / f"{text}.yaml").is_file():
            return d / f"{text}.yaml"
    names = profile_names()
    close = difflib.get_close_matches(text, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ClusterError(
        f"unknown cluster profile {text!r}{hint}; the profiles are: {', '.join(names) or '(none found)'} "
        f"(from {', '.join(str(d) for d in profile_dirs())}); or pass a path to a profile YAML file, "
        f"or a scheduler address such as tcp://host:8786"
    )


def _read_profile(profile: str | os.PathLike) -> _Profile:
    path = _profile_path(profile)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ClusterError(f"cannot read cluster profile {path}: {e}") from None
    shape = ("a profile file holds one section: 'jobqueue: {<name>: {...}}' for SLURM (dask-jobqueue keys) or "
             "'local: {...}' for a LocalCluster")  # fmt: skip
    if not isinstance(data, dict) or len(data) != 1:
        raise ClusterError(f"cluster profile {path} is not in the expected shape: {shape}")
    (top, body), = data.items()  # fmt: skip
    if top == "jobqueue":
        if not isinstance(body, dict) or len(body) != 1 or not isinstance(next(iter(body.values())), dict):
            raise ClusterError(f"cluster profile {path}: 'jobqueue' must hold exactly one section; {shape}")
        kind, options = "slurm", next(iter(body.values()))
    elif top == "local":
        if not isinstance(body, dict):
            raise ClusterError(f"cluster profile {path}: 'local' must be a mapping of LocalCluster options; {shape}")
        kind, options = "local", body
    else:
        raise ClusterError(f"cluster profile {path} has the section {top!r}; {shape}")
    norm = {}
    for key, value in options.items():
        kw = str(key).replace("-", "_")
        if kind == "slurm":
            kw = "job_name" if kw == "name" else kw  # jobqueue.yaml's "name" is the SLURM job name
            _check_slurm_key(kw, f"cluster profile {path}")
        norm[kw] = value
    return _Profile(name=path.stem, kind=kind, path=path, options=norm)


def _check_slurm_key(key: str, where: str) -> None:
    if key in SLURM_KWARGS or key in _SCHEDULER_SHORTCUTS:
        return
    if key in _DEPRECATED:
        raise InvalidParameter(f"{where}: {key!r} is deprecated in dask-jobqueue; use {_DEPRECATED[key]!r}")
    close = difflib.get_close_matches(key, sorted(SLURM_KWARGS), n=3)
    hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
    raise InvalidParameter(f"{where}: unknown SLURMCluster option {key!r}{hint}")


def load_profile(name: str | os.PathLike) -> dict[str, Any]:
    """The options a profile sets, spelled as keyword arguments (``job_extra_directives``), ``None`` = unset.

    ``name`` is a profile name (see :func:`profile_names`) or a path to a profile YAML file. For a SLURM profile the
    YAML key ``name`` (the SLURM job name, as in dask-jobqueue's jobqueue.yaml) is returned as ``job_name``.
    """
    return copy.deepcopy(_read_profile(name).options)


# ------------------------------------------------------------------------------------------------- merging
def _merge_value(old: Any, new: Any) -> Any:
    if isinstance(old, dict) and isinstance(new, dict):
        return {**old, **new}
    return copy.deepcopy(new)


def _ensure_jobqueue_defaults() -> None:
    """dask-jobqueue's defaults in dask.config (dask-jobqueue reads them without a fallback).

    Importing dask_jobqueue registers them, once. A ``dask.config.set({"jobqueue.slurm.…": …})`` block that was
    entered before that import deletes the whole ``jobqueue`` section when it exits; put the defaults back then.
    """
    import dask.config
    import dask_jobqueue

    if dask.config.get("jobqueue.slurm.worker-command", default=None) is None:
        path = Path(dask_jobqueue.__file__).with_name("jobqueue.yaml")
        dask.config.update_defaults(yaml.safe_load(path.read_text()))


def _slurm_config_layer() -> dict[str, Any]:
    import dask.config

    _ensure_jobqueue_defaults()
    section = dask.config.get("jobqueue.slurm", default={}) or {}
    out = {}
    for key, value in section.items():
        kw = str(key).replace("-", "_")
        kw = "job_name" if kw == "name" else kw
        if value is None or kw in _DEPRECATED or kw not in SLURM_KWARGS:
            continue
        out[kw] = copy.deepcopy(value)
    return out


def _merge(base: dict[str, Any], profile: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in profile.items():
        if value is not None:
            merged[key] = _merge_value(merged.get(key), value)
    for key, value in overrides.items():
        if value is None:  # back to the level below the profile
            if key in base:
                merged[key] = copy.deepcopy(base[key])
            else:
                merged.pop(key, None)
        else:
            merged[key] = _merge_value(merged.get(key), value)
    return merged


def _resolve(profile: str | os.PathLike, overrides: dict[str, Any]) -> tuple[_Profile, dict[str, Any]]:
    if is_address(profile):
        raise ClusterError(f"{profile!r} is a scheduler address, not a profile: it has no cluster options")
    prof = _read_profile(profile)
    overrides = dict(overrides)
    if prof.kind == "local":
        return prof, _merge({}, prof.options, overrides)
    for key in overrides:
        _check_slurm_key(key, f"override for profile {prof.name}")
    # convenience: dashboard_address=/host= go into scheduler_options, where dask-jobqueue wants them
    shortcut = {k: overrides.pop(k) for k in _SCHEDULER_SHORTCUTS if k in overrides}
    shortcut.update({k: prof.options[k] for k in _SCHEDULER_SHORTCUTS if prof.options.get(k) is not None
                     and k not in shortcut})  # fmt: skip
    options = {k: v for k, v in prof.options.items() if k not in _SCHEDULER_SHORTCUTS}
    merged = _merge(_slurm_config_layer(), options, overrides)
    if shortcut:
        extra = {k: v for k, v in shortcut.items() if v is not None}
        merged["scheduler_options"] = {**(merged.get("scheduler_options") or {}), **extra}
    if isinstance(merged.get("log_directory"), str):
        merged["log_directory"] = os.path.expanduser(os.path.expandvars(merged["log_directory"]))
    _validate_slurm(prof.name, merged)
    return prof, merged


def cluster_kwargs(profile: str | os.PathLike = "local", **overrides: Any) -> dict[str, Any]:
    """The keyword arguments :func:`launch` gives the cluster class, after merging (see the module's precedence).

    For a SLURM profile these are ``dask_jobqueue.SLURMCluster`` arguments, including the dask-config defaults that
    apply, and they are validated (walltime format; walltime > lifetime + stagger); for ``"local"`` they are
    ``distributed.LocalCluster`` arguments. Pure: nothing is started or submitted.
    """
    return _resolve(profile, overrides)[1]


# ------------------------------------------------------------------------------------------------- validation
_WALLTIME_FORMS = "MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS (e.g. 01:00:00)"


def parse_walltime(walltime: Any) -> int | None:
    """A SLURM time limit in seconds (``None`` for no limit: ``UNLIMITED``, ``INFINITE``, ``0``).

    Accepts SLURM's forms: ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS`` (an int is minutes).
    Anything else raises :class:`InvalidParameter`.
    """
    bad = InvalidParameter(f"walltime {walltime!r} is not a SLURM time limit; use {_WALLTIME_FORMS}")
    if isinstance(walltime, bool):
        raise bad
    if isinstance(walltime, int):
        if walltime < 0:
            raise bad
        return walltime * 60 or None
    if not isinstance(walltime, str):
        raise bad
    text = walltime.strip()
    if text.upper() in ("UNLIMITED", "INFINITE"):
        return None
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not m:
        raise bad
    days, a, b, c = m.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        h, mi, s = int(a), int(b or 0), int(c or 0)
        if h >= 24 or mi >= 60 or s >= 60:
            raise bad
        total = int(days) * 86400 + h * 3600 + mi * 60 + s
    elif c is not None:  # HH:MM:SS
        h, mi, s = int(a), int(b), int(c)
        if mi >= 60 or s >= 60:
            raise bad
        total = h * 3600 + mi * 60 + s
    elif b is not None:  # MM:SS
        if int(b) >= 60:
            raise bad
        total = int(a) * 60 + int(b)
    else:  # MM
        total = int(a) * 60
    return total or None


def _flag_value(args: list[str], flag: str) -> str | None:
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def _seconds(text: str, what: str) -> float:
    from dask.utils import parse_timedelta

    try:
        return float(parse_timedelta(text, default="seconds"))
    except (ValueError, KeyError, TypeError):
        raise InvalidParameter(f"worker {what} {text!r} is not a duration; use e.g. 55m, 3600s or 1h "
                               f"(one unit: dask cannot parse 1h30m, write 90m)") from None  # fmt: skip


def _fmt(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m" if seconds % 60 == 0 else f"{seconds}s"


def _validate_slurm(name: str, kw: dict[str, Any]) -> None:
    for key in ("worker_extra_args", "job_extra_directives", "job_script_prologue", "job_directives_skip"):
        if key in kw and not isinstance(kw[key], (list, tuple)):
            raise InvalidParameter(f"profile {name}: {key} must be a list of strings, got {kw[key]!r}")
    walltime_text = kw.get("walltime")
    walltime = parse_walltime(walltime_text) if walltime_text is not None else None
    args = [str(a) for a in kw.get("worker_extra_args") or []]
    lifetime_text = _flag_value(args, "--lifetime")
    if lifetime_text is None or walltime is None:
        return
    stagger_text = _flag_value(args, "--lifetime-stagger")
    lifetime = _seconds(lifetime_text, "--lifetime")
    stagger = _seconds(stagger_text, "--lifetime-stagger") if stagger_text is not None else 0.0
    if lifetime + stagger < walltime:
        return
    budget = walltime - min(300, max(30, walltime // 10))  # leave the worker time to hand its work on
    new_stagger = stagger if stagger <= budget / 4 else budget // 10
    suggestion = budget - new_stagger
    suggestion = suggestion // 60 * 60 if suggestion >= 600 else suggestion
    life = f"--lifetime {lifetime_text}" + (f" + --lifetime-stagger {stagger_text}" if stagger_text else "")
    fix = (f"set the lifetime below the walltime, e.g. --lifetime {_fmt(suggestion)} for walltime {walltime_text}"
           + (f" with --lifetime-stagger {_fmt(new_stagger)}" if stagger else ""))  # fmt: skip
    raise ClusterError(
        f"profile {name}: walltime {walltime_text} ({walltime} s) is not longer than the worker lifetime {life} "
        f"({int(lifetime + stagger)} s at most): SLURM would kill the jobs before their workers retire and hand "
        f"their work on. Fix: {fix} (in worker_extra_args), or raise walltime"
    )


def _expects_gpu(kw: dict[str, Any]) -> bool:
    args = [str(a) for a in kw.get("worker_extra_args") or []]
    asked = _flag_value(args, "--resources") or ""
    directives = " ".join(str(d) for d in kw.get("job_extra_directives") or [])
    return "GPU=" in asked or bool(re.search(r"--gres=\S*gpu|--gpus", directives))


def _placeholders(kw: dict[str, Any]) -> list[tuple[str, str]]:
    found = []
    for key, value in kw.items():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, str) and _PLACEHOLDER in item:
                found.append((key, item))
    return found


# ---------------------------------------------------------------------------------------------- job script
def job_script(profile: str | os.PathLike = "slurm-gpu", **overrides: Any) -> str:
    """The SLURM batch script a worker job of this profile would run; nothing is submitted, no scheduler started.

    The same text as ``SLURMCluster(**cluster_kwargs(profile, **overrides)).job_script()`` except that the
    scheduler address is the placeholder ``tcp://<insert-scheduler-address-here>:8786`` (dask-jobqueue's own).
    Note: dask-jobqueue creates ``log_directory`` when it builds a job, here too.
    """
    prof, kw = _resolve(profile, overrides)
    if prof.kind != "slurm":
        raise ClusterError(f"profile {prof.name} is a {prof.kind} cluster: it has no batch job script")
    from dask_jobqueue.slurm import SLURMJob

    job_kw = {k: v for k, v in kw.items() if k not in _CLUSTER_ONLY}
    job = SLURMJob(scheduler="tcp://<insert-scheduler-address-here>:8786", name="dummy-name", **job_kw)
    return job.job_script()


# -------------------------------------------------------------------------------------------------- launch
def _check_scaling(jobs: Any, adapt: Any) -> tuple[int | None, tuple[int, int] | None]:
    if jobs is not None and adapt is not None:
        raise InvalidParameter(f"give jobs={jobs!r} or adapt={adapt!r}, not both")
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 0):
        raise InvalidParameter(f"jobs={jobs!r} must be a whole number >= 0")
    if adapt is not None:
        ok = (isinstance(adapt, (tuple, list)) and len(adapt) == 2
              and all(isinstance(a, int) and not isinstance(a, bool) and a >= 0 for a in adapt)
              and adapt[0] <= adapt[1])  # fmt: skip
        if not ok:
            raise InvalidParameter(f"adapt={adapt!r} must be (minimum, maximum) whole numbers with 0 <= min <= max")
        adapt = (int(adapt[0]), int(adapt[1]))
    return jobs, adapt


def launch(
    profile: str | os.PathLike = "local",
    jobs: int | None = None,
    *,
    adapt: tuple[int, int] | None = None,
    wait: bool = True,
    timeout: float = 300,
    check_gpu: bool | None = None,
    **overrides: Any,
):
    """Start (or connect to) a dask cluster and return a ``distributed.Client`` on it.

    profile
        ``"local"`` (a LocalCluster), ``"slurm-gpu"`` / ``"slurm-cpu"`` or any other profile name
        (:func:`profile_names`), a path to a profile YAML file, or a scheduler address (``tcp://host:8786``,
        ``tls://...``) to connect to a running cluster.
    jobs
        SLURM: the number of jobs to submit (one worker per job with ``processes: 1``); default 1.
        local: the number of workers (default: the profile's ``n_workers``).
    adapt
        ``(minimum, maximum)`` jobs (SLURM) or workers (local) to adapt between, instead of ``jobs``.
    wait, timeout
        wait until the requested workers (``jobs``, or the adapt minimum) are connected, at most ``timeout``
        seconds; if they are not, the cluster is closed (its jobs cancelled) and :class:`ClusterError` says what
        SLURM reports and what the job logs say. ``wait=False`` returns at once.
    check_gpu
        run :func:`require_gpu` on the connected workers; default: when the profile asks for GPUs
        (``--resources GPU=...`` or ``--gres=gpu``) and ``wait`` is true.
    overrides
        options that win over the profile (``cluster_kwargs``), e.g. ``queue="gpu-long"``, ``walltime="08:00:00"``,
        ``interface="ib0"``, ``job_script_prologue=[...]``; ``dashboard_address=`` goes into ``scheduler_options``.

    Before anything is submitted, a SLURM profile is validated (:func:`cluster_kwargs`), refused while it still has
    a ``/path/to/`` placeholder, and its job script is checked with ``sbatch --test-only`` (SLURM's reason for
    refusing it becomes a :class:`ClusterError`). While waiting, a launch whose jobs all end without a worker
    connecting fails at once, with the tail of the job's stderr log.

    Prints the dashboard link. ``client.shutdown()`` stops the cluster (and cancels its jobs); ``client.close()``
    only disconnects.
    """
    jobs, adapt = _check_scaling(jobs, adapt)
    if is_address(profile):
        if jobs is not None or adapt is not None or overrides or check_gpu:
            given = ", ".join([*(["jobs"] if jobs is not None else []), *(["adapt"] if adapt else []), *overrides])
            raise InvalidParameter(f"{profile!r} is a running scheduler: launch() only connects to it, so {given} "
                                   f"cannot apply; scale that cluster where it was started")  # fmt: skip
        return _connect(profile, timeout)
    prof, kw = _resolve(profile, overrides)
    if prof.kind == "local":
        return start_local(prof.name, kw, jobs, adapt, wait, timeout)
    return _launch_slurm(prof, kw, jobs, adapt, wait, timeout, check_gpu)


def _connect(address: str, timeout: float):
    from distributed import Client

    try:
        client = Client(address, timeout=timeout)
    except (OSError, TimeoutError) as e:
        raise ClusterError(f"cannot connect to the scheduler at {address} within {timeout} s: {e}") from None
    print(f"reefmap: connected to {address}; dashboard: {client.dashboard_link}", flush=True)
    return client


def _launch_slurm(prof: _Profile, kw: dict[str, Any], jobs, adapt, wait: bool, timeout: float, check_gpu):
    placeholders = _placeholders(kw)
    if placeholders:
        key, value = placeholders[0]
        raise ClusterError(
            f"profile {prof.name} still has a placeholder in {key}: {value!r}; edit {prof.path} (or copy it and pass "
            f"the copy's path), or override it, e.g. {key}=['source {sys.prefix}/bin/activate']"
        )
    if shutil.which("sbatch") is None:
        raise ClusterError(f"profile {prof.name} submits SLURM jobs, but sbatch is not on PATH: run this on a SLURM "
                           f"login node, or start the local test cluster with cluster/local-slurm/start.sh")  # fmt: skip
    _preflight(prof, kw)
    from dask_jobqueue import SLURMCluster
    from distributed import Client

    gpu = _expects_gpu(kw) if check_gpu is None else bool(check_gpu)
    cluster = SLURMCluster(**kw)
    client = None
    try:
        client = Client(cluster)
        if adapt is not None:
            cluster.adapt(minimum_jobs=adapt[0], maximum_jobs=adapt[1])
            wanted = adapt[0]
        else:
            wanted = _DEFAULT_SLURM_JOBS if jobs is None else jobs
            cluster.scale(jobs=wanted)
        scaling = f"adapt {adapt[0]}..{adapt[1]} jobs" if adapt is not None else f"{wanted} job{'s' * (wanted != 1)}"
        print(f"reefmap: cluster '{prof.name}' (SLURM, {scaling}); dashboard: {cluster.dashboard_link}", flush=True)
        n_workers = wanted * int(kw.get("processes") or 1)
        if wait and n_workers:
            _wait_for_slurm_workers(prof, cluster, client, n_workers, timeout)
            if gpu:
                client.run(require_gpu, prof.name)
    except BaseException:
        if client is not None:
            client.close()
        _close(cluster)
        raise
    return client


def _preflight(prof: _Profile, kw: dict[str, Any]) -> None:
    """``sbatch --test-only`` the job script: SLURM's reason for refusing a job now, not a worker that never comes."""
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix="reefmap-job-") as f:
        f.write(job_script(prof.path, **{k: v for k, v in kw.items() if k not in _SCHEDULER_SHORTCUTS}))
        f.flush()
        try:
            res = subprocess.run(["sbatch", "--test-only", f.name], capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            raise ClusterError("sbatch --test-only did not answer within 60 s: is slurmctld up (scontrol ping)?") from None
    if res.returncode != 0:
        why = " ".join(ln.removeprefix("sbatch: error: ").strip() for ln in (res.stderr + res.stdout).splitlines()
                       if ln.strip())  # fmt: skip
        raise ClusterError(
            f"SLURM refuses the jobs of profile {prof.name} (sbatch --test-only: {why}); check queue, account, "
            f"cores={kw.get('cores')}, memory={kw.get('memory')}, walltime={kw.get('walltime')} and "
            f"job_extra_directives={kw.get('job_extra_directives')} against the partition's limits (sinfo, scontrol "
            f"show partition)"
        )


def _close(cluster) -> None:
    """Close a cluster even when some of its jobs never started (distributed then trips on their state)."""
    try:
        cluster.close()
    except Exception:
        for name, job in list(cluster.workers.items()):
            if getattr(job, "job_id", None) is None:
                cluster.workers.pop(name, None)
        try:
            cluster.close()
        except Exception:  # noqa: S110 - the original error is the one to report
            pass


def _job_ids(cluster) -> list[str]:
    return [str(w.job_id) for w in list(cluster.workers.values()) if getattr(w, "job_id", None)]


def _squeue(job_ids: list[str]) -> str | None:
    """``"<id> <STATE> <reason>"`` lines for the jobs SLURM still lists, or None when squeue cannot be asked."""
    try:
        res = subprocess.run(["squeue", "-h", "-j", ",".join(job_ids), "-o", "%i %T %R"], capture_output=True,
                             text=True, timeout=10)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    if res.returncode != 0 and "Invalid job id" not in res.stderr:  # squeue forgets ended jobs after MinJobAge
        return None
    return res.stdout.strip()


def _wait_for_slurm_workers(prof: _Profile, cluster, client, n_workers: int, timeout: float) -> None:
    """Wait for ``n_workers``; give up at ``timeout``, or early once every submitted job has ended."""
    import time

    deadline, step = time.monotonic() + timeout, 1.0
    while True:
        try:
            client.wait_for_workers(n_workers, timeout=max(0.1, min(step, deadline - time.monotonic())))
            return
        except TimeoutError:
            step = min(step * 1.5, 10.0)  # ask squeue less and less often (busy clusters dislike polling)
        ids = _job_ids(cluster)
        ended = bool(ids) and len(ids) >= len(cluster.workers) and _squeue(ids) == ""
        if ended or time.monotonic() >= deadline:
            raise ClusterError(_slow_start_report(prof, cluster, client, n_workers, timeout, ended))


def _slow_start_report(prof: _Profile, cluster, client, n_workers: int, timeout: float, ended: bool) -> str:
    connected = len(connected_workers(client))
    job_ids = _job_ids(cluster)
    if not job_ids:
        states = "no job was submitted (see the logged sbatch error)"
    else:
        out = _squeue(job_ids)
        jobs = f"job{'s' * (len(job_ids) > 1)} {', '.join(job_ids)}"
        if out is None:
            states = f"{jobs} submitted, but squeue cannot be asked"
        else:
            states = "; ".join(out.splitlines()) or f"{jobs} ended without a worker connecting"
    logs = ""
    log_dir = (getattr(cluster, "_job_kwargs", None) or {}).get("log_directory")
    if log_dir and job_ids:
        for jid in job_ids:
            for err in sorted(Path(log_dir).glob(f"*-{jid}.err")):
                tail = [ln for ln in err.read_text(errors="replace").splitlines() if ln.strip()][-3:]
                if tail:
                    logs = f"; {err} ends with: " + " | ".join(tail)
                    break
            if logs:
                break
    when = "before its jobs ended" if ended else f"within {timeout} s"
    return (f"profile {prof.name}: {connected} of {n_workers} workers connected {when}; SLURM says: "
            f"{states}{logs}. The cluster was closed and its jobs cancelled; pending jobs mean a busy queue (launch "
            f"with wait=False or a longer timeout), failed jobs are explained in log_directory {log_dir}")  # fmt: skip


# ------------------------------------------------------------------------------------------------ GPU check
def _worker_label(worker: Any = None) -> str:
    import socket

    label = socket.gethostname()
    if worker is None and "distributed" in sys.modules:
        try:
            from distributed import get_worker

            worker = get_worker()
        except ValueError:  # not inside a task
            pass
    if worker is not None:
        label = f"{worker.name} ({worker.address} on {label})"
    if os.environ.get("SLURM_JOB_ID"):
        label += f", SLURM job {os.environ['SLURM_JOB_ID']}"
    return label


def require_gpu(profile: str = "slurm-gpu", dask_worker: Any = None) -> str:
    """Raise :class:`ClusterError` unless torch sees a CUDA GPU here; returns e.g. ``"cuda:0 NVIDIA H100"``.

    Meant to run on a worker: ``client.run(require_gpu)`` (``launch`` does it for GPU profiles) or at the start of
    a GPU task, so that a GPU profile without a GPU fails clearly instead of running on the CPU. Imports torch
    (through ``reefmap.model.device``). ``dask_worker`` is filled in by ``client.run``.
    """
    where = _worker_label(dask_worker)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
    from reefmap.model.device import cuda_status

    st = cuda_status()
    if st.import_error is not None:
        raise ClusterError(f"profile {profile} expects a GPU on worker {where} but torch cannot be imported there "
                           f"({st.import_error}); activate reefmap's environment in job_script_prologue")
    if st.device is None:
        raise ClusterError(
            f"profile {profile} expects a GPU on worker {where} but torch.cuda.is_available() is False "
            f"(CUDA_VISIBLE_DEVICES={visible}, torch {st.torch_version} built for CUDA {st.cuda_version}); "
            f"request a GPU for the jobs (job_extra_directives ['--gres=gpu:1'] and a GPU partition as queue), "
            f"use a CUDA build of torch, or choose profile slurm-cpu to run on CPUs"
        )
    return st.device
