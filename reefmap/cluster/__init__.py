"""Dask clusters: profiles as data, launch(), the one LocalCluster recipe, GPU checks."""

from reefmap.cluster.launcher import cluster_kwargs, job_script, launch, load_profile, profile_names, require_gpu

__all__ = ["cluster_kwargs", "job_script", "launch", "load_profile", "profile_names", "require_gpu"]
