"""A dask nanny preload: ``dask worker --preload-nanny reefmap.cluster.nanny`` (the SLURM profiles and the local
clusters use it).

dask's nanny exports ``MALLOC_TRIM_THRESHOLD_=65536`` to the worker process it spawns. Setting that variable at
all switches off glibc's adaptive mmap threshold, so every tensor-sized buffer becomes a fresh ``mmap`` with its
page faults: PyTorch on CPU ran about 20% slower per tile inside a worker than outside
(``benchmarks/bench_pipeline.py``). This preload removes it before the worker is spawned; a value you export
yourself is still inherited by the worker.

It also switches off the worker's statistical profiler (``distributed.worker.profile.enabled``): the worker keeps
a profile of every second for the last ``distributed.admin.low-level-log-length`` (1000) seconds, so its memory
grew with every tile for the first ~17 minutes of a run (11 KB per 128-px tile on 2 CPU workers, the largest
growth of ``benchmarks/bench_soak.py``). Export ``DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=True`` to keep it
(e.g. for the dashboard's Profile page): a value set in the environment wins.
"""

from __future__ import annotations

import os

#: the variable, and dask's default value for it
VARIABLE, DASK_DEFAULT = "MALLOC_TRIM_THRESHOLD_", "65536"
#: the environment variable that, when set, decides whether the worker's profiler runs
PROFILE_ENV = "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED"


def dask_setup(nanny) -> None:
    """Called by the nanny before it spawns its worker (which inherits the nanny process's environment, where
    an earlier nanny of the same process may have left dask's value)."""
    for env in (nanny.pre_spawn_env, nanny.env, os.environ):
        if env.get(VARIABLE) == DASK_DEFAULT:
            env.pop(VARIABLE)
    if PROFILE_ENV not in os.environ:  # the config the nanny hands to the worker it spawns (a deep copy: the
        import dask.config             # nanny's is a shallow one of this process's dask config)

        nanny.config = dask.config.merge(nanny.config, {"distributed": {"worker": {"profile": {"enabled": False}}}})
