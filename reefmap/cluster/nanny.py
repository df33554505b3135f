"""A dask nanny preload: ``dask worker --preload-nanny reefmap.cluster.nanny`` (the SLURM profiles and the local
clusters use it).

dask's nanny exports ``MALLOC_TRIM_THRESHOLD_=65536`` to the worker process it spawns. Setting that variable at
all switches off glibc's adaptive mmap threshold, so every tensor-sized buffer becomes a fresh ``mmap`` with its
page faults: PyTorch on CPU ran about 20% slower per tile inside a worker than outside
(``benchmarks/bench_pipeline.py``). This preload removes it before the worker is spawned; a value you export
yourself is still inherited by the worker.
"""

from __future__ import annotations

import os

#: the variable, and dask's default value for it
VARIABLE, DASK_DEFAULT = "MALLOC_TRIM_THRESHOLD_", "65536"


def dask_setup(nanny) -> None:
    """Called by the nanny before it spawns its worker (which inherits the nanny process's environment, where
    an earlier nanny of the same process may have left dask's value)."""
    for env in (nanny.pre_spawn_env, nanny.env, os.environ):
        if env.get(VARIABLE) == DASK_DEFAULT:
            env.pop(VARIABLE)
