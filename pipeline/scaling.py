"""What the cluster can hold: fit the replica pool to it, and ask the autoscaler for the pool's nodes."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from dataclasses import dataclass

import psutil
import ray
import yaml

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


@dataclass(frozen=True)
class NodeType:
    """A worker node type the autoscaler may start (from its config: what a node brings before one exists)."""

    name: str
    resources: dict[str, float]
    max_workers: int


def autoscaler_node_types() -> list[NodeType]:
    """The worker node types of the cluster's autoscaler; [] on a fixed cluster or when none can be read.

    Ray publishes no node types to its clients (the GCS cluster config is empty unless a platform reports
    one), so after that the config file is read that the autoscaler monitor runs with: on a cluster from
    `ray up` it runs on the head node, where `ray job submit` runs the driver.
    """
    import ray._private.state

    try:
        config = ray._private.state.state.get_cluster_config()
    except Exception:  # an older GCS without the call: fall back to the monitor's file
        config = None
    if config is not None and config.node_group_configs:
        return [NodeType(g.name, {k: float(v) for k, v in g.resources.items()}, g.max_count)
                for g in config.node_group_configs]
    path = _monitor_config_path()
    if path is None:
        return []
    try:
        with open(os.path.expanduser(path)) as f:
            config = yaml.safe_load(f)
        head = config.get("head_node_type")
        return [NodeType(name, {k: float(v) for k, v in (t.get("resources") or {}).items()},
                         int(t.get("max_workers", config.get("max_workers", 0))))
                for name, t in config.get("available_node_types", {}).items() if name != head]
    except (OSError, yaml.YAMLError, AttributeError, TypeError, ValueError):
        return []


def _monitor_config_path() -> str | None:
    """--autoscaling-config of this cluster's autoscaler monitor (matched by GCS address: other Ray clusters
    on the same machine have monitors too)."""
    gcs = ray.get_runtime_context().gcs_address
    for proc in psutil.process_iter(["cmdline"]):
        args = proc.info.get("cmdline") or []
        if not any(a.endswith("monitor.py") and "autoscaler" in a for a in args) or f"--gcs-address={gcs}" not in args:
            continue
        for i, arg in enumerate(args):
            if arg.startswith("--autoscaling-config="):
                return arg.split("=", 1)[1]
            if arg == "--autoscaling-config" and i + 1 < len(args):
                return args[i + 1]
    return None


def default_gpus_per_replica(resources: dict[str, float], node_types: list[NodeType]) -> float:
    """One GPU per replica when the cluster has GPUs now or can start nodes that bring some, else none."""
    if resources.get("GPU", 0) or any(t.resources.get("GPU", 0) and t.max_workers > 0 for t in node_types):
        return 1.0
    return 0.0


@contextlib.contextmanager
def cluster_resources(replicas: Replicas, wait_s: float):
    """Yields the cluster's resources and a `release` callable. With wait_s > 0 it first asks the autoscaler
    for the minimum pool (a cluster that scales GPU workers from zero has none at submit time) and waits up
    to wait_s for it. The request stays in the GCS until replaced, so it is withdrawn by `release` (call it
    once the pool has started) and in any case on exit, also when the job fails."""
    from ray.autoscaler.sdk import request_resources

    resources, requested = ray.cluster_resources(), False

    def release() -> None:
        nonlocal requested
        if requested:
            request_resources(bundles=[])
            requested = False

    try:
        if wait_s > 0:
            bundle = {k: v for k, v in {"CPU": replicas.cpus, "GPU": replicas.gpus}.items() if v}
            request_resources(bundles=[bundle] * replicas.min + [{"CPU": 1}] * CPU_HEADROOM)
            requested = True
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                try:
                    fit_replicas(replicas, resources)
                    break
                except RuntimeError:
                    time.sleep(2)
                    resources = ray.cluster_resources()
        yield resources, release
    finally:
        release()
