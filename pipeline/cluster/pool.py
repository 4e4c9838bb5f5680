"""The replica pool: how many model replicas run and what each reserves, and the node types that can hold them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from model import BATCHING, DEFAULT_BATCH_TOKENS


@dataclass(frozen=True)
class Replicas:
    """How many model replicas (actors) run, and what each one reserves."""

    min: int = 1
    max: int = 1
    gpus: float = 0.0
    cpus: float = 1.0
    batch_size: int = 256  # most articles per generate call
    max_batch_tokens: int = DEFAULT_BATCH_TOKENS  # most input tokens x beams per generate call (a longer
    # article runs alone)
    compile: bool = False  # the static decode step under torch.compile (CUDA graphs on a GPU)
    batching: str = "auto"  # model.BATCHING: in-flight or calls ("auto": in-flight under the CPU decode policy)

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.max:
            raise ValueError(f"replicas must satisfy 1 <= min <= max, got min={self.min} max={self.max}")
        if self.gpus < 0 or self.cpus < 0 or (self.gpus == 0 and self.cpus == 0):
            raise ValueError(f"a replica needs some CPU or GPU, got cpus={self.cpus} gpus={self.gpus}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be >= 1, got {self.max_batch_tokens}")
        if self.batching not in BATCHING:
            raise ValueError(f"batching must be one of {', '.join(BATCHING)}, got {self.batching!r}")

    @classmethod
    def parse(cls, text: str, **kwargs: Any) -> Replicas:
        """'N' or 'MIN-MAX' (an autoscaling pool)."""
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", text)
        if not match:
            raise ValueError(f"replicas must be N or MIN-MAX, got {text!r}")
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) else low
        return cls(min=low, max=high, **kwargs)


@dataclass(frozen=True)
class NodeType:
    """A worker node type the autoscaler may start (from its config: what a node brings before one exists)."""

    name: str
    resources: dict[str, float]
    max_workers: int
