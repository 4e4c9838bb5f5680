"""A nightly run's report: per partition what was done and why, with row counts; written under `_runs/`."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class PartitionOutcome:
    partition: str
    action: str  # "processed", "skipped", "failed", "repaired", "incomplete" (rows that ran out of device
    # memory are left to the next run: not switched), or "would-process" in a dry run
    reason: str  # why it was (or would be) processed: new, changed, incomplete, stale; or why not: done, leased, ...
    detail: str = ""
    rows_in: int = 0
    rows_out: int = 0
    rows_written: int = 0  # by this run (fewer than rows_out when it resumed a killed run)
    oom_splits: int = 0  # generate calls split in half after running out of device memory
    failed_rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class NightlyReport:
    run: str
    corpus: str
    output: str
    dry_run: bool
    started_at: str
    ended_at: str = ""
    wall_s: float = 0.0
    partitions: list[PartitionOutcome] = field(default_factory=list)
    ignored_files: list[str] = field(default_factory=list)  # Parquet files outside any dated partition
    listings: int = 0  # listing calls that discovery made
    stopped: str = ""  # why the run ended early (SIGTERM), if it did
    report_url: str | None = None

    def count(self, action: str) -> int:
        return sum(o.action == action for o in self.partitions)

    @property
    def ok(self) -> bool:
        return self.count("failed") == 0 and not self.stopped

    def to_dict(self) -> dict[str, Any]:
        totals = {a: self.count(a) for a in ("processed", "skipped", "failed", "repaired", "incomplete",
                                             "would-process")}
        rows = {k: sum(getattr(o, k) for o in self.partitions) for k in ("rows_in", "rows_out", "rows_written")}
        return {**dataclasses.asdict(self), "totals": {**totals, **rows}}


def utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
