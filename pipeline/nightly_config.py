"""The nightly job's config and its report: what one run is asked to do, and what it did per partition."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from .config import SummarizeConfig

REPROCESS = ("none", "stale", "all")


@dataclass(frozen=True)
class NightlyConfig:
    """One nightly run. `summarize` carries the model, columns, generation, scaling and storage settings; its
    input and output are replaced per partition."""

    corpus: str  # root of the Hive-partitioned corpus (date=YYYY-MM-DD/...)
    output: str  # root of the mirrored output
    summarize: SummarizeConfig
    date: str | None = None  # only this date
    since: str | None = None  # this date and later
    max_partitions: int | None = None  # process at most this many (oldest first); the rest wait for the next run
    lease_ttl_s: float = 600.0  # a partition lease lasts this long unless renewed (every third of it)
    reprocess: str = "none"  # also redo partitions done with another model or settings ("stale"), or all ("all")

    def __post_init__(self) -> None:
        for name in ("date", "since"):
            value = getattr(self, name)
            if value is not None and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
                raise ValueError(f"{name} must be YYYY-MM-DD, got {value!r}")
        if self.date and self.since:
            raise ValueError("give --date or --since, not both")
        if self.max_partitions is not None and self.max_partitions < 1:
            raise ValueError(f"max_partitions must be >= 1, got {self.max_partitions}")
        if self.reprocess not in REPROCESS:
            raise ValueError(f"reprocess must be one of {REPROCESS}, got {self.reprocess!r}")
        if self.lease_ttl_s <= 0:
            raise ValueError(f"lease_ttl_s must be > 0, got {self.lease_ttl_s}")
        corpus, output = self.corpus.rstrip("/") + "/", self.output.rstrip("/") + "/"
        if corpus.startswith(output) or output.startswith(corpus):
            raise ValueError(f"corpus {self.corpus} and output {self.output} must not contain each other")


@dataclass
class PartitionOutcome:
    partition: str
    action: str  # "processed", "skipped", "failed", "repaired", or "would-process" in a dry run
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
        totals = {a: self.count(a) for a in ("processed", "skipped", "failed", "repaired", "would-process")}
        rows = {k: sum(getattr(o, k) for o in self.partitions) for k in ("rows_in", "rows_out", "rows_written")}
        return {**dataclasses.asdict(self), "totals": {**totals, **rows}}
