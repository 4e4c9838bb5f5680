"""Finishing switches that a crash interrupted: data files a partition's marker no longer names, staging leftovers."""

from __future__ import annotations

import posixpath

from ..io.lease import Lease
from .config import NightlyConfig
from .partition_work import release_lease, tidy_partition
from .partitions import LEASES, STAGING, Partition, Roots, partition_keys, rescan, state_of
from .report import PartitionOutcome


def repair(config: NightlyConfig, roots: Roots, owner: str) -> list[PartitionOutcome]:
    """Finish switches that a crash interrupted, in any partition (selected or not): a partition whose marker
    is current but whose folder still holds files the marker does not name. Such a partition still has its
    staging folder, so one listing of `_staging/` finds them all; each is tidied under its lease."""
    staging = roots.output.child(STAGING)
    fs, root = staging.fresh_fs(), staging.path.rstrip("/")
    try:
        paths = fs.find(root, withdirs=True, detail=False)
    except FileNotFoundError:
        return []
    folders = sorted({posixpath.dirname(p[len(root) + 1:]) for p in paths
                      if posixpath.basename(p).startswith("run-") and fs.isdir(p)})
    outcomes = []
    for folder in folders:
        keys = partition_keys(folder)
        current = rescan(roots.corpus, Partition(folder, keys, ())) if keys else None
        state = state_of(current, roots.output) if current else None
        if state is None or state.reason != "done" or not state.stray_files:
            continue
        outcome = PartitionOutcome(folder, "repaired", "interrupted switch")
        lease = Lease(roots.output.child(LEASES, folder), owner, config.lease_ttl_s)
        try:
            if lease.try_acquire() is not None:
                continue  # another run holds it and finishes the switch itself
            outcome.detail = tidy_partition(state_of(current, roots.output), roots.output)
        except Exception as e:
            outcome.action, outcome.detail = "failed", f"repair: {type(e).__name__}: {e}"
        finally:
            release_lease(lease, outcome)
        outcomes.append(outcome)
    return outcomes
