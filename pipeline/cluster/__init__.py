"""Ray clusters: connecting a driver, the replica pool and fitting it to what the autoscaler can start, metrics."""

from .connect import connect
from .pool import NodeType, Replicas
from .scaling import CPU_HEADROOM, DEFAULT_WORKER_WAIT_S

__all__ = ["CPU_HEADROOM", "DEFAULT_WORKER_WAIT_S", "NodeType", "Replicas", "connect"]
