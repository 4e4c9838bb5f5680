"""Connecting a job's driver to Ray: the cluster it was submitted to, or a local Ray sized for the job."""

from __future__ import annotations

import os

import ray

from .scaling import CPU_HEADROOM


def connect(workers: int, cpus_per_worker: float) -> None:
    """Connect to the cluster this runs on (`ray job submit` sets RAY_ADDRESS), else start a local Ray sized
    for the job: logical CPUs for `workers` (replicas or training workers) plus the pipeline's headroom."""
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)  # the replicas' output and tracebacks reach `ray job submit` / `ray job logs`
        return
    num_cpus = max(os.cpu_count() or 1, int(workers * cpus_per_worker + 0.999) + CPU_HEADROOM)
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
