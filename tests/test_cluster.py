"""reefmap.cluster.launcher: profiles as data, merging, job scripts, errors; LocalCluster; real SLURM (marker ``slurm``)."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import time

import dask
import pytest
import yaml

from reefmap.cluster import launcher as cluster
from reefmap.errors import ClusterError, InvalidParameter
from slurm_fixtures import slurm, slurm_overrides, squeue, wait_until  # noqa: F401  (fixtures + helpers)

PROFILES = cluster.PACKAGE_PROFILES
SHIPPED = ["local", "slurm-cpu", "slurm-gpu"]


# ------------------------------------------------------------------------------------------- profile files
def test_shipped_profiles_are_found():
    assert set(SHIPPED) <= set(cluster.profile_names())
    assert all((PROFILES / f"{n}.yaml").is_file() for n in SHIPPED)


def test_profiles_are_package_data_loaded_from_the_package(monkeypatch):
    """The profiles live inside the package (so a wheel carries them), found through importlib.resources."""
    import tomllib
    from importlib import resources
    from pathlib import Path

    import reefmap

    monkeypatch.delenv(cluster.PROFILES_ENV, raising=False)
    package = Path(reefmap.__file__).parent
    assert PROFILES == package / "cluster" / "profiles" == Path(str(resources.files("reefmap.cluster") / "profiles"))
    assert cluster.profile_dirs() == [PROFILES]
    for name in SHIPPED:
        assert cluster.load_profile(name) == cluster.load_profile(PROFILES / f"{name}.yaml")
    assert cluster.load_profile("local")["threads_per_worker"] == 1
    pyproject = tomllib.loads((package.parent / "pyproject.toml").read_text())
    assert "cluster/profiles/*.yaml" in pyproject["tool"]["setuptools"]["package-data"]["reefmap"]


@pytest.mark.slow
def test_profiles_load_from_an_installed_wheel(tmp_path):
    """A wheel built from this checkout carries the profiles, and reefmap installed from it finds them."""
    import shutil
    import zipfile
    from pathlib import Path

    repo = Path(cluster.__file__).resolve().parents[2]
    src = tmp_path / "src"
    shutil.copytree(repo / "reefmap", src / "reefmap", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repo / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(src)], check=True, capture_output=True, timeout=300)  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("reefmap-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import reefmap.cluster.launcher as c; print(c.PACKAGE_PROFILES); print(c.profile_names()); "
            "print(c.load_profile('slurm-gpu')['job_name'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site)}).stdout.splitlines()  # fmt: skip
    assert out == [str(site / "reefmap" / "cluster" / "profiles"), str(SHIPPED), "reefmap-gpu"], out


def _keys(node, prefix=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield f"{prefix}{k}"
            yield from _keys(v, f"{prefix}{k}.")


@pytest.mark.parametrize("name", SHIPPED)
def test_every_profile_key_has_a_comment(name):
    path = PROFILES / f"{name}.yaml"
    lines = path.read_text().splitlines()
    seen, undocumented = set(), []
    stack: list[tuple[int, str]] = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z_][\w-]*):(\s|$)", line)
        if not m:
            continue
        indent, key = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        full = ".".join([k for _, k in stack] + [key])
        stack.append((indent, key))
        seen.add(full)
        inline = "#" in line[m.end() :]
        above = indent == 0 and i > 0 and lines[i - 1].lstrip().startswith("#")  # the top section: file header
        if not (inline or above):
            undocumented.append(full)
    assert not undocumented, f"{path}: keys without a comment: {undocumented}"
    assert seen == set(_keys(yaml.safe_load(path.read_text()))), "every parsed key was checked"


@pytest.mark.parametrize("name", ["slurm-cpu", "slurm-gpu"])
def test_slurm_profiles_are_valid(name):
    kw = cluster.cluster_kwargs(name)
    assert kw["processes"] == 1
    walltime = cluster.parse_walltime(kw["walltime"])
    args = kw["worker_extra_args"]
    life = dask.utils.parse_timedelta(args[args.index("--lifetime") + 1])
    stagger = dask.utils.parse_timedelta(args[args.index("--lifetime-stagger") + 1])
    assert life + stagger < walltime
    assert kw["job_script_prologue"][0].startswith("source ")
    assert any(line.startswith("export REEFMAP_INFERENCE_THREADS=") for line in kw["job_script_prologue"])


def test_gpu_profile_is_one_worker_per_gpu():
    p = cluster.load_profile("slurm-gpu")
    assert p["processes"] == 1 and "--gres=gpu:1" in p["job_extra_directives"]
    args = p["worker_extra_args"]
    assert args[args.index("--resources") + 1] == "GPU=1"
    assert "export REEFMAP_INFERENCE_THREADS=1" in p["job_script_prologue"]
    assert p["job_name"] == "reefmap-gpu"  # jobqueue.yaml's "name" is the job name


def test_local_profile_is_localcluster_options():
    p = cluster.load_profile("local")
    assert {"n_workers", "threads_per_worker", "processes", "memory_limit", "dashboard_address"} <= set(p)


# ---------------------------------------------------------------------------------------------- merging
def test_precedence_override_then_profile_then_dask_config():
    cfg = {"jobqueue.slurm.queue": "cfg-queue", "jobqueue.slurm.account": "cfg-acct", "jobqueue.slurm.cores": 99,
           "jobqueue.slurm.job-mem": "5G", "jobqueue.slurm.walltime": "00:10:00"}  # fmt: skip
    with dask.config.set(cfg):
        kw = cluster.cluster_kwargs("slurm-cpu", account="my-acct")
        assert kw["queue"] == "cfg-queue"  # profile null -> dask config
        assert kw["account"] == "my-acct"  # override > dask config
        assert kw["cores"] == 8  # profile > dask config
        assert kw["walltime"] == "02:00:00"  # profile > dask config
        assert kw["job_mem"] == "5G"  # only in dask config
        assert cluster.cluster_kwargs("slurm-cpu", cores=2)["cores"] == 2  # override > profile
        assert cluster.cluster_kwargs("slurm-cpu", cores=None)["cores"] == 99  # None: the level below the profile
    kw = cluster.cluster_kwargs("slurm-cpu", scheduler_options={"host": "127.0.0.1"}, dashboard_address=":0")
    assert kw["scheduler_options"] == {"dashboard_address": ":0", "host": "127.0.0.1"}  # dicts merge per key
    kw = cluster.cluster_kwargs("slurm-cpu", worker_extra_args=["--lifetime", "100m"])
    assert kw["worker_extra_args"] == ["--lifetime", "100m"]  # lists are replaced whole


def test_jobqueue_defaults_survive_a_config_block_in_a_fresh_process():
    # dask.config.set() entered before dask_jobqueue's first import removes its defaults on exit
    code = ("import dask, reefmap.cluster.launcher as c\n"
            "with dask.config.set({'jobqueue.slurm.queue': 'q'}):\n"
            "    assert c.cluster_kwargs('slurm-cpu')['queue'] == 'q'\n"
            "print('#SBATCH -J reefmap-cpu' in c.job_script('slurm-cpu', log_directory='/tmp'))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "True", out.stderr[-2000:]


def test_cluster_kwargs_do_not_share_state():
    a = cluster.cluster_kwargs("slurm-gpu")
    a["worker_extra_args"].append("--oops")
    a["scheduler_options"]["x"] = 1
    b = cluster.cluster_kwargs("slurm-gpu")
    assert "--oops" not in b["worker_extra_args"] and "x" not in b["scheduler_options"]


def test_log_directory_is_expanded(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cluster.cluster_kwargs("slurm-cpu")["log_directory"] == str(tmp_path / "reefmap-logs" / "dask-jobs")


def test_known_slurm_options_match_dask_jobqueue():
    from dask_jobqueue.core import Job, JobQueueCluster
    from dask_jobqueue.slurm import SLURMJob

    names = set()
    for fn in (Job.__init__, SLURMJob.__init__, JobQueueCluster.__init__):
        names |= {p for p in inspect.signature(fn).parameters if p not in ("self", "base_class_kwargs", "job_kwargs")}
    deprecated = {"extra", "env_extra", "job_extra", "header_skip", "project"}
    rejected = {"dashboard_address", "host", "scheduler", "job_cls"}  # dask-jobqueue refuses or sets them itself
    assert cluster.SLURM_KWARGS == names - deprecated - rejected


def test_unknown_and_deprecated_options():
    with pytest.raises(InvalidParameter, match="'walltme'.*did you mean 'walltime'"):
        cluster.cluster_kwargs("slurm-cpu", walltme="01:00:00")
    with pytest.raises(InvalidParameter, match="deprecated.*job_extra_directives"):
        cluster.cluster_kwargs("slurm-cpu", job_extra=["--x"])


# ------------------------------------------------------------------------------------------- job scripts
def test_gpu_job_script(tmp_path):
    script = cluster.job_script("slurm-gpu", log_directory=str(tmp_path))
    assert script.startswith("#!/usr/bin/env bash")
    for needle in ["#SBATCH --gres=gpu:1", "#SBATCH -t 04:00:00", "#SBATCH --cpus-per-task=8", "#SBATCH -J reefmap-gpu",
                   f"#SBATCH -e {tmp_path}/reefmap-gpu-%J.err", "source /path/to/reefmap/.venv/bin/activate",
                   "export REEFMAP_INFERENCE_THREADS=1", "--lifetime 225m", "--lifetime-stagger 5m",
                   "--resources GPU=1", "--preload-nanny reefmap.cluster.nanny", "--nthreads 8", "--local-directory ${TMPDIR:-/tmp}"]:  # fmt: skip
        assert needle in script, needle
    assert "#SBATCH -p" not in script and "#SBATCH -A" not in script  # placeholders left null
    lines = script.splitlines()
    assert lines.index("source /path/to/reefmap/.venv/bin/activate") < next(
        i for i, ln in enumerate(lines) if "distributed.cli.dask_worker" in ln
    )  # the prologue runs before the worker


def test_job_script_overrides(tmp_path):
    script = cluster.job_script("slurm-cpu", queue="long", account="proj7", walltime="1-00:00:00", cores=4,
                                memory="16GB", log_directory=str(tmp_path))  # fmt: skip
    for needle in ["#SBATCH -p long", "#SBATCH -A proj7", "#SBATCH -t 1-00:00:00", "#SBATCH --cpus-per-task=4",
                   "--nthreads 4"]:  # fmt: skip
        assert needle in script, needle
    assert "gres" not in script and "--resources" not in script


def test_job_script_is_what_slurmcluster_renders(tmp_path):
    from dask_jobqueue import SLURMCluster

    kw = cluster.cluster_kwargs("slurm-gpu", log_directory=str(tmp_path), dashboard_address=":0",
                                scheduler_options={"host": "127.0.0.1"})  # fmt: skip
    with SLURMCluster(**kw) as c:
        real = c.job_script().replace(c.scheduler_address, "tcp://<insert-scheduler-address-here>:8786")
    assert real == cluster.job_script("slurm-gpu", log_directory=str(tmp_path), dashboard_address=":0",
                                      scheduler_options={"host": "127.0.0.1"})  # fmt: skip


def test_local_profile_has_no_job_script():
    with pytest.raises(ClusterError, match="no batch job script"):
        cluster.job_script("local")


# ------------------------------------------------------------------------------------------------- errors
def test_unknown_profile_lists_the_profiles():
    with pytest.raises(ClusterError) as e:
        cluster.launch("slurm-gpus")
    msg = str(e.value)
    assert "'slurm-gpus'" in msg and "did you mean 'slurm-gpu'" in msg
    assert all(name in msg for name in SHIPPED)


@pytest.mark.parametrize("walltime", ["01:00:00", "00:59:00", "60"])
def test_walltime_not_longer_than_lifetime_is_refused(walltime):
    with pytest.raises(ClusterError) as e:
        cluster.cluster_kwargs("slurm-cpu", walltime=walltime, worker_extra_args=["--lifetime", "60m"])
    msg = str(e.value)
    assert f"walltime {walltime}" in msg and "--lifetime 60m" in msg
    assert re.search(r"e\.g\. --lifetime \d+m for walltime", msg)
    if walltime == "01:00:00":
        assert "--lifetime 55m for walltime 01:00:00" in msg


def test_lifetime_plus_stagger_must_fit_in_walltime():
    with pytest.raises(ClusterError, match="--lifetime-stagger 5m"):
        cluster.cluster_kwargs("slurm-cpu", walltime="01:00:00",
                               worker_extra_args=["--lifetime=56m", "--lifetime-stagger=5m"])  # fmt: skip
    cluster.cluster_kwargs("slurm-cpu", walltime="01:00:00", worker_extra_args=["--lifetime=50m", "--lifetime-stagger=5m"])


@pytest.mark.parametrize("bad", ["1h", "01:60:00", "1:2:3:4", "", "soon", "1-24", -1, 1.5, True])
def test_malformed_walltime_is_invalid(bad):
    with pytest.raises(InvalidParameter, match="is not a SLURM time limit"):
        cluster.cluster_kwargs("slurm-cpu", walltime=bad)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30", 1800), ("05:30", 330), ("01:00:00", 3600), ("2-0", 172800), ("1-02:03", 93780), ("1-02:03:04", 93784),
     (90, 5400), ("UNLIMITED", None), ("0", None)],
)  # fmt: skip
def test_parse_walltime(text, seconds):
    assert cluster.parse_walltime(text) == seconds


def test_lifetime_must_be_a_duration():
    with pytest.raises(InvalidParameter, match="write 90m"):
        cluster.cluster_kwargs("slurm-cpu", worker_extra_args=["--lifetime", "1h30m"])


def test_placeholder_prologue_is_refused_before_submitting():
    with pytest.raises(ClusterError, match=r"placeholder in job_script_prologue.*/path/to/.*slurm-gpu\.yaml"):
        cluster.launch("slurm-gpu", jobs=1)


def test_profile_file_and_env_directory(tmp_path, monkeypatch):
    text = (PROFILES / "slurm-cpu.yaml").read_text().replace("reefmap-cpu", "site-cpu")
    (tmp_path / "site.yaml").write_text(text)
    assert cluster.load_profile(tmp_path / "site.yaml")["job_name"] == "site-cpu"
    assert cluster.load_profile(str(tmp_path / "site.yaml"))["job_name"] == "site-cpu"
    (tmp_path / "slurm-cpu.yaml").write_text(text)
    monkeypatch.setenv(cluster.PROFILES_ENV, str(tmp_path))
    assert {"site", "slurm-gpu"} <= set(cluster.profile_names())
    assert cluster.load_profile("slurm-cpu")["job_name"] == "site-cpu"  # REEFMAP_PROFILES comes first
    assert "#SBATCH -J site-cpu" in cluster.job_script("site", log_directory=str(tmp_path / "logs"))


@pytest.mark.parametrize(
    "content", ["just text", "jobqueue: {a: {cores: 1}, b: {cores: 2}}", "slurm: {cores: 1}", "jobqueue: {a: {cors: 1}}",
                "local: [1, 2]", "jobqueue: {a: {cores: 1}\n"],
)  # fmt: skip
def test_malformed_profile_file(tmp_path, content):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises((ClusterError, InvalidParameter), match=re.escape(str(path))):
        cluster.load_profile(path)


def test_missing_profile_file():
    with pytest.raises(ClusterError, match="does not exist"):
        cluster.load_profile("/nonexistent/site.yaml")


@pytest.mark.parametrize(("jobs", "adapt"), [(-1, None), (1.5, None), (True, None), (None, (3, 1)), (None, (1,)),
                                             (2, (1, 2))])  # fmt: skip
def test_bad_scaling_is_invalid(jobs, adapt):
    with pytest.raises(InvalidParameter):
        cluster.launch("slurm-cpu", jobs=jobs, adapt=adapt)


def test_scheduler_address():
    with pytest.raises(InvalidParameter, match="only connects"):
        cluster.launch("tcp://127.0.0.1:1", jobs=2)
    with pytest.raises(ClusterError, match="cannot connect to the scheduler at tcp://127.0.0.1:1"):
        cluster.launch("tcp://127.0.0.1:1", timeout=1)


def test_require_gpu_raises_without_a_gpu(monkeypatch):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ClusterError) as e:
        cluster.require_gpu("slurm-gpu")
    msg = str(e.value)
    assert "profile slurm-gpu expects a GPU on worker" in msg
    assert "torch.cuda.is_available() is False (CUDA_VISIBLE_DEVICES=," in msg and "slurm-cpu" in msg


def test_planning_imports_stay_light():
    code = ("import sys, reefmap.cluster.launcher as c; c.profile_names(); c.load_profile('slurm-gpu'); c.cluster_kwargs('local');"
            "heavy = [m for m in ('torch', 'dask_jobqueue', 'distributed') if m in sys.modules]; print(heavy)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------------------------------------------- LocalCluster
def test_local_launch_computes_and_closes(capsys):
    client = cluster.launch("local", jobs=1, threads_per_worker=2)
    try:
        assert "dashboard: http" in capsys.readouterr().out
        info = client.scheduler_info()["workers"]
        assert len(info) == 1 and next(iter(info.values()))["nthreads"] == 2
        assert client.submit(sum, range(10)).result() == 45
        import dask.array as da

        assert int(da.ones((100, 100), chunks=25).sum().compute()) == 10_000
    finally:
        client.shutdown()
    assert client.status == "closed" and client.cluster.status.name == "closed"


# ------------------------------------------------------------------------------------------- real SLURM
def _slow_square(x):  # the workers import it from this module (slurm_overrides puts tests/ on their PYTHONPATH)
    time.sleep(0.2)
    return x * x


def _results(client, futures, timeout=60):
    from distributed import wait

    wait(futures, timeout=timeout)  # bounded: a broken worker setup fails the test instead of hanging it
    return client.gather(futures)


@pytest.mark.slurm
def test_slurm_scale_compute_close(slurm, slurm_overrides, capsys):
    name = slurm_overrides["job_name"]
    client = cluster.launch("slurm-cpu", jobs=2, timeout=60, **slurm_overrides)
    try:
        assert "dashboard: http" in capsys.readouterr().out
        assert len(client.scheduler_info()["workers"]) == 2
        jobs = squeue(name)
        assert len(jobs) == 2 and set(jobs.values()) == {"RUNNING"}, jobs
        job_ids = {str(w.job_id) for w in client.cluster.workers.values()}
        assert job_ids == set(jobs)
        # the workers really are these SLURM jobs
        assert set(client.run(lambda: __import__("os").environ["SLURM_JOB_ID"]).values()) == job_ids
        assert _results(client, client.map(_slow_square, range(8))) == [x * x for x in range(8)]
    finally:
        client.shutdown()
    assert wait_until(lambda: not squeue(name), timeout=10), squeue(name)


@pytest.mark.slurm
def test_slurm_worker_job_cancelled_mid_computation(slurm, slurm_overrides):
    name = slurm_overrides["job_name"]
    with dask.config.set({"distributed.deploy.lost-worker-timeout": "1s"}):
        client = cluster.launch("slurm-cpu", adapt=(2, 2), timeout=60, **slurm_overrides)
        try:
            before = {str(w.job_id) for w in client.cluster.workers.values()}
            assert len(before) == 2 and set(squeue(name)) == before
            futures = client.map(_slow_square, range(20))
            assert wait_until(lambda: sum(f.done() for f in futures) >= 4, timeout=20)
            victim = sorted(before)[0]
            subprocess.run(["scancel", victim], check=True)
            assert _results(client, futures) == [x * x for x in range(20)]  # finishes despite the lost worker
            # adapt(2, 2) submits a replacement job for the cancelled one
            assert wait_until(lambda: victim not in squeue(name) and len(squeue(name)) == 2, timeout=30), squeue(name)
            client.wait_for_workers(2, timeout=30)
            assert victim not in {str(w.job_id) for w in client.cluster.workers.values()}
        finally:
            client.shutdown()
    assert wait_until(lambda: not squeue(name), timeout=10), squeue(name)


@pytest.mark.slurm
def test_slurm_gpu_profile_without_a_gpu_is_an_error(slurm, slurm_overrides):
    name = slurm_overrides["job_name"]
    overrides = dict(slurm_overrides, cores=1, memory="2GB", job_extra_directives=[],  # no GPUs in this SLURM
                     worker_extra_args=["--lifetime", "4m", "--resources", "GPU=1"])  # fmt: skip
    with pytest.raises(ClusterError, match=r"expects a GPU on worker .*SLURM job \d+ but torch.cuda.is_available\(\)"):
        cluster.launch("slurm-gpu", jobs=1, timeout=60, **overrides)
    assert wait_until(lambda: not squeue(name), timeout=10), squeue(name)  # the cluster was closed


@pytest.mark.slurm
def test_slurm_job_that_cannot_start_is_refused_up_front(slurm, slurm_overrides):
    name = slurm_overrides["job_name"]
    overrides = dict(slurm_overrides, memory="10000GB")  # more than the node has
    with pytest.raises(ClusterError, match=r"SLURM refuses the jobs of profile slurm-cpu \(sbatch --test-only: .*not available"):
        cluster.launch("slurm-cpu", jobs=1, timeout=30, **overrides)
    assert not squeue(name)


@pytest.mark.slurm
def test_slurm_workers_that_never_connect_are_reported(slurm, slurm_overrides):
    name = slurm_overrides["job_name"]
    overrides = dict(slurm_overrides, job_script_prologue=["echo 'reefmap-test: environment broken' >&2", "exit 3"])
    t0 = time.monotonic()
    with pytest.raises(ClusterError) as e:
        cluster.launch("slurm-cpu", jobs=1, timeout=60, **overrides)
    assert time.monotonic() - t0 < 30  # it notices that the job ended; it does not wait out the timeout
    msg = str(e.value)
    assert "0 of 1 workers connected before its jobs ended; SLURM says: job " in msg, msg
    assert "ended without a worker connecting" in msg and "ends with: reefmap-test: environment broken" in msg
    assert "its jobs cancelled" in msg
    assert wait_until(lambda: not squeue(name), timeout=10), squeue(name)


def _exec_environ() -> dict:
    """The environment this process was started with (what glibc's malloc read at start-up)."""
    raw = open("/proc/self/environ", "rb").read().split(b"\0")
    return dict(kv.decode(errors="replace").split("=", 1) for kv in raw if b"=" in kv)


def test_local_workers_start_without_dasks_malloc_trim_threshold():
    import logging

    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0", silence_logs=logging.CRITICAL) as lc, \
            Client(lc) as c:  # control: dask's own default reaches the worker
        assert next(iter(c.run(_exec_environ).values())).get("MALLOC_TRIM_THRESHOLD_") == "65536"
    client = cluster.launch("local", n_workers=1)  # the one LocalCluster recipe (run() and global runs use it)
    try:
        assert "MALLOC_TRIM_THRESHOLD_" not in next(iter(client.run(_exec_environ).values()))
    finally:
        client.shutdown()


def _profiling() -> bool:
    import dask

    return bool(dask.config.get("distributed.worker.profile.enabled"))


def test_local_workers_run_without_the_statistical_profiler(monkeypatch):
    """Its per-second history made every worker grow with each tile (benchmarks/bench_soak.py); an environment
    variable that asks for it still wins, and this process's own dask config is left alone."""
    env = "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED"
    monkeypatch.delenv(env, raising=False)
    client = cluster.launch("local", n_workers=1)
    try:
        assert list(client.run(_profiling).values()) == [False]
    finally:
        client.shutdown()
    assert _profiling()
    monkeypatch.setenv(env, "True")
    client = cluster.launch("local", n_workers=1)
    try:
        assert list(client.run(_profiling).values()) == [True]
    finally:
        client.shutdown()


def test_connected_workers_asks_the_scheduler_not_the_clients_cache():
    import logging

    from distributed import Client, LocalCluster

    from reefmap.cluster.local import connected_workers

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0",
                      silence_logs=logging.CRITICAL) as lc, Client(lc) as c:
        c.wait_for_workers(2)
        c.sync(c._update_scheduler_info)  # what the client's periodic refresh does: an identity without workers
        assert c._scheduler_identity.get("workers", {}) == {}
        assert len(connected_workers(c)) == 2
