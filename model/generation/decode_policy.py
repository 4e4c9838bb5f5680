"""How the decode loop runs on a device. Both policies give the same greedy and beam-search tokens.

On a CPU each step's host work overlaps nothing, so reading a value back costs little and copying costs a
lot: check every step, drop finished articles at once, copy only the cache positions that changed, and
use the blocked top-k. On a GPU the host queues work ahead of the device, and every read-back drains that
queue: finished articles stay in the batch (masked) and are compacted only when the live ones fit in half
the rows, the batch is padded to a power-of-two article count (one CUDA graph per bucket, not per count),
the cache reorder copies whole rows without asking the host which positions differ, and the host reads
the done flags only every few steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DecodePolicy:
    name: str
    check_every: int  # steps between host reads of the done flags (a break waits at most this many steps)
    row_buckets: bool  # pad the article count to a power of two; compact only into a smaller bucket
    shared_prefix_reorder: bool  # reorder the cache from where prefixes differ (the host reads where)
    blocked_topk: bool  # top_candidates / first_argmax instead of torch.topk / argmax
    move_chunk: int | None  # rows moved per copy when compacting (None: all at once, one temporary)


CPU = DecodePolicy("cpu", check_every=1, row_buckets=False, shared_prefix_reorder=True, blocked_topk=True,
                   move_chunk=None)
GPU = DecodePolicy("gpu", check_every=8, row_buckets=True, shared_prefix_reorder=False, blocked_topk=False,
                   move_chunk=8)
POLICIES = {p.name: p for p in (CPU, GPU)}


def policy_for(device: torch.device, override: str | DecodePolicy | None = None) -> DecodePolicy:
    """The device's policy, or the one asked for by name ("cpu", "gpu") or value (tests force "gpu" on CPU)."""
    if isinstance(override, DecodePolicy):
        return override
    if override is not None:
        if override not in POLICIES:
            raise ValueError(f"decode policy must be one of {sorted(POLICIES)}, got {override!r}")
        return POLICIES[override]
    return CPU if torch.device(device).type == "cpu" else GPU


def bucket(n: int) -> int:
    """The smallest power of two >= n."""
    return 1 << max(0, n - 1).bit_length()
