"""The summarize config's scaling settings left unset, filled in from the cluster: GPUs per replica, the wait for
worker nodes, the node types the pool is fitted to."""

from __future__ import annotations

import dataclasses

import ray

from ..batch.config import SummarizeConfig
from ..cluster.scaling import DEFAULT_WORKER_WAIT_S, autoscaler_node_types


def with_cluster_defaults(config: SummarizeConfig, gpus_given: bool, wait_given: bool,
                          cluster_config: str | None = None) -> tuple[SummarizeConfig, str]:
    """The scaling settings not given, from the cluster, and a line saying what was chosen and why: one GPU
    per replica when the cluster has GPUs or its autoscaler can start nodes with some (GPU workers that
    scale from zero have none at submit time), a wait for worker nodes when the autoscaler can start any."""
    types = autoscaler_node_types(cluster_config)
    replicas, wait = config.replicas, config.worker_wait_s
    if not gpus_given:
        gpu_types = any(t.resources.get("GPU", 0) and t.max_workers > 0 for t in types.types)
        replicas = dataclasses.replace(replicas, gpus=1.0 if ray.cluster_resources().get("GPU") or gpu_types else 0.0)
    if not wait_given:
        wait = DEFAULT_WORKER_WAIT_S if types.can_start else 0.0
    config = dataclasses.replace(config, replicas=replicas, worker_wait_s=wait, node_types=types.types)
    chosen = f"{replicas.gpus:g} GPU per replica{' (given)' if gpus_given else ''}, wait for workers {wait:g} s" + (
        " (given)" if wait_given else "")
    return config, f"scaling: {chosen}; {types.describe()}"
