"""What the cluster can hold: fit the replica pool to it, and ask the autoscaler for the pool's nodes."""

from __future__ import annotations

import dataclasses
import time

import ray

from .config import Replicas

# Logical CPUs left free for the prepare and write tasks; without them the pipeline can wait forever for a
# CPU that the model actors hold.
CPU_HEADROOM = 2


def fit_replicas(replicas: Replicas, resources: dict[str, float]) -> tuple[Replicas, list[str]]:
    """Shrink the pool's maximum to what the cluster holds, or raise if even the minimum does not fit."""
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    limits = [(cpus - CPU_HEADROOM) / replicas.cpus] if replicas.cpus else []
    if replicas.gpus:
        limits.append(gpus / replicas.gpus)
    fit = int(min(limits) + 1e-9)
    if fit < replicas.min:
        raise RuntimeError(
            f"{replicas.min} replica(s) with {replicas.cpus} CPU and {replicas.gpus} GPU each, plus {CPU_HEADROOM} "
            f"CPUs for reading, tokenizing and writing, do not fit the cluster "
            f"({cpus:g} CPU, {gpus:g} GPU); lower --replicas, --cpus-per-replica or --gpus-per-replica")
    if fit >= replicas.max:
        return replicas, []
    return dataclasses.replace(replicas, max=fit), [f"replicas capped at {fit} (the cluster has {cpus:g} CPU, "
                                                    f"{gpus:g} GPU)"]


def cluster_resources(replicas: Replicas, wait_s: float) -> dict[str, float]:
    """The cluster's resources; with wait_s > 0, first ask the autoscaler for the minimum pool (a cluster that
    scales GPU workers from zero has none at submit time) and wait up to wait_s for it to appear."""
    resources = ray.cluster_resources()
    if wait_s <= 0:
        return resources
    from ray.autoscaler.sdk import request_resources

    bundle = {k: v for k, v in {"CPU": replicas.cpus, "GPU": replicas.gpus}.items() if v}
    request_resources(bundles=[bundle] * replicas.min + [{"CPU": 1}] * CPU_HEADROOM)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            fit_replicas(replicas, resources)
            break
        except RuntimeError:
            time.sleep(5)
            resources = ray.cluster_resources()
    return resources
