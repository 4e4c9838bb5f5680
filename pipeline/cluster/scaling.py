"""What the cluster can hold: the autoscaler's node types, the defaults they imply, the replica pool fitted to
what the cluster can reach, and the autoscaler request for the pool's nodes."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psutil
import ray
import yaml

from .pool import NodeType, Replicas

# Logical CPUs left free for the prepare and write tasks; without them the pipeline can wait forever for a
# CPU that the model actors hold.
CPU_HEADROOM = 2
DEFAULT_WORKER_WAIT_S = 900.0  # a GPU instance takes minutes to boot and join


@dataclass(frozen=True)
class NodeTypes:
    """The worker node types the cluster's autoscaler may start, and where they were read (for the job's log)."""

    types: tuple[NodeType, ...]
    source: str

    @property
    def can_start(self) -> bool:
        return any(t.max_workers > 0 for t in self.types)

    def describe(self) -> str:
        listed = ", ".join(f"{t.name} ({', '.join(f'{k} {v:g}' for k, v in sorted(t.resources.items()))}; up to "
                           f"{t.max_workers})" for t in self.types)
        return f"node types from {self.source}" + (f": {listed}" if listed else "")


UNBOUNDED = 10_000  # a node group without a maximum (KubeRay's max_count -1)


def _launcher_types(config: dict) -> tuple[NodeType, ...]:
    """Worker node types of a cluster launcher config (cluster.yaml, or the autoscaler monitor's copy); each
    type's maximum is capped by the cluster's."""
    head, total = config.get("head_node_type"), config.get("max_workers")
    types = []
    for name, t in (config.get("available_node_types") or {}).items():
        most = int(t.get("max_workers", total or 0))
        if name != head:
            types.append(NodeType(name, {k: float(v) for k, v in (t.get("resources") or {}).items()},
                                  most if total is None else min(most, int(total))))
    return tuple(types)


def _gcs_types(config) -> tuple[NodeType, ...]:
    """Worker node groups of the GCS cluster config, as Ray Data's v2 cluster autoscaler reads them: groups
    that cannot start a node dropped, and so is the group of the head (one node of the head's shape)."""
    head = next((n["Resources"] for n in ray.nodes() if n["Alive"] and "node:__internal_head__" in n["Resources"]),
                {})
    types = []
    for g in config.node_group_configs:
        resources = {k: float(v) for k, v in g.resources.items()}
        if not resources or g.max_count == 0 or (g.max_count == 1 and _fits_shape(head, resources)):
            continue
        types.append(NodeType(g.name, resources, UNBOUNDED if g.max_count < 0 else g.max_count))
    return tuple(types)


def _fits_shape(node: dict[str, float], resources: dict[str, float]) -> bool:
    """The node brings exactly the type's resources (CPU, GPU, custom ones)."""
    return all(node.get(k) == v for k, v in resources.items())


def read_cluster_config(path: str) -> NodeTypes:
    """The node types of a cluster launcher YAML (`--cluster-config`); ValueError naming the file if unreadable."""
    try:
        with open(os.path.expanduser(path)) as f:
            types = _launcher_types(yaml.safe_load(f) or {})
    except (OSError, yaml.YAMLError, AttributeError, TypeError, ValueError) as e:
        raise ValueError(f"cluster config {path} is not a readable cluster launcher YAML: {e}") from e
    if not types:
        raise ValueError(f"cluster config {path} names no worker node types (available_node_types)")
    return NodeTypes(types, f"--cluster-config {path}")


def autoscaler_node_types(cluster_config: str | None = None) -> NodeTypes:
    """The worker node types of the cluster's autoscaler, from the first source that has them:
    `cluster_config` (a launcher YAML the user names); the cluster config in the GCS, which the v2 autoscaler
    and KubeRay publish (Ray 2.60 has no public call for it: this is the private one Ray Data's own
    `is_autoscaling_enabled` uses); the config file that this cluster's autoscaler monitor runs with (a
    `ray up` cluster, where `ray job submit` runs the driver on the head). None found: a fixed cluster."""
    if cluster_config:
        return read_cluster_config(cluster_config)
    import ray._private.state

    try:
        config = ray._private.state.state.get_cluster_config()
    except Exception:  # an older GCS without the call: fall back to the monitor's file
        config = None
    if config is not None and config.node_group_configs:
        return NodeTypes(_gcs_types(config), "the GCS cluster config")
    path = _monitor_config_path()
    if path is not None:
        try:
            with open(os.path.expanduser(path)) as f:
                return NodeTypes(_launcher_types(yaml.safe_load(f) or {}), f"the autoscaler monitor's config {path}")
        except (OSError, yaml.YAMLError, AttributeError, TypeError, ValueError):
            pass
    return NodeTypes((), "nowhere: no GCS cluster config and no autoscaler monitor on this node, so a fixed "
                         "cluster is assumed (on an autoscaling cluster pass --cluster-config)")


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


def reachable(resources: dict[str, float], node_types: tuple[NodeType, ...],
              nodes: list[dict[str, float]]) -> dict[str, float]:
    """What the cluster can grow to: what it has plus the nodes its autoscaler may still start (each type's
    maximum less its running `nodes`, matched by shape)."""
    out = dict(resources)
    for t in node_types:
        left = max(0, t.max_workers - sum(_fits_shape(n, t.resources) for n in nodes))
        for name, value in t.resources.items():
            out[name] = out.get(name, 0.0) + value * left
    return out


def fit_replicas(replicas: Replicas, resources: dict[str, float]) -> tuple[Replicas, list[str]]:
    """Shrink the pool's maximum to what `resources` hold, or raise if even the minimum does not fit."""
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
    return dataclasses.replace(replicas, max=fit), [f"replicas capped at {fit} (the cluster has or can start "
                                                    f"{cpus:g} CPU, {gpus:g} GPU)"]


def _bundles(replicas: Replicas, count: int) -> list[dict[str, float]]:
    bundle = {k: v for k, v in {"CPU": replicas.cpus, "GPU": replicas.gpus}.items() if v}
    return [bundle] * count + [{"CPU": 1}] * CPU_HEADROOM


@contextlib.contextmanager
def scaled_pool(replicas: Replicas, wait_s: float, node_types: tuple[NodeType, ...]
                ) -> Iterator[tuple[Replicas, int, list[str]]]:
    """Yields the pool fitted to what the cluster can reach (never to a snapshot taken before it scaled up),
    how many replicas to start with (what fits the nodes up now, at least the minimum) and notes for the report.

    With wait_s > 0 it asks the autoscaler for the whole pool's nodes at once and waits up to wait_s for the
    minimum pool. Once the dataflow runs, Ray Data's autoscaling coordinator sends the cluster's request
    itself (it replaces this one, every 20 s at most, with what the dataflow needs: the actor pool's nodes up
    to its maximum while the replicas are the bottleneck), so this request serves the start; it is withdrawn
    on exit in any case, also when the job fails, so that nodes nothing needs scale down."""
    from ray.autoscaler.sdk import request_resources

    requested = False
    try:
        if wait_s > 0 and not node_types:  # told to wait for workers of unknown types: the pool stays as given
            fitted, notes = replicas, ["replicas not fitted to the cluster: its node types are unknown"]
        else:
            nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
            fitted, notes = fit_replicas(replicas, reachable(ray.cluster_resources(),
                                                             node_types if wait_s > 0 else (), nodes))
        if wait_s > 0:
            request_resources(bundles=_bundles(fitted, fitted.max))
            requested = True
            smallest = dataclasses.replace(fitted, max=fitted.min)
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                try:
                    fit_replicas(smallest, ray.cluster_resources())
                    break
                except RuntimeError:
                    time.sleep(2)
        try:
            initial = fit_replicas(fitted, ray.cluster_resources())[0].max
        except RuntimeError:  # the minimum pool is not up (yet): Ray Data waits for it
            initial = fitted.min
        yield fitted, initial, notes
    finally:
        if requested:
            request_resources(bundles=[])
