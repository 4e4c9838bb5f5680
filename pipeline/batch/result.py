"""What a summarize run did: counts from the dataflow and from committed units' footers; the job prints it."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..cluster import Replicas


@dataclass
class SummarizeResult:
    """What a run did; the job prints it."""

    status: str  # "complete" (this run wrote the rest), "already-complete" (nothing to do), "incomplete" (every
    # unit committed, but rows that ran out of device memory are left to the next run: no marker)
    output: str
    rows_in: int
    rows_out: int = 0
    rows_written: int = 0  # by this run (fewer than rows_out after a resume)
    units: int = 0  # units of work (= output files) of the whole output
    units_written: int = 0  # by this run
    failed_by_reason: dict[str, int] = field(default_factory=dict)
    truncated: int = 0
    oom_splits: int = 0  # generate calls this run split in half after running out of device memory
    rows_by_replica: dict[str, int] = field(default_factory=dict)
    tokens_by_replica: dict[str, int] = field(default_factory=dict)
    generate_s_by_replica: dict[str, float] = field(default_factory=dict)  # inside model.generate
    busy_s_by_replica: dict[str, float] = field(default_factory=dict)  # whole units, decode and Arrow included
    node_by_replica: dict[str, str] = field(default_factory=dict)  # the Ray node id each replica ran on
    wall_s: float = 0.0
    plan_s: float = 0.0  # preflight, listing, id check and tally of earlier units, before the dataflow starts
    replicas: Replicas | None = None
    generation: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    stats: str = ""

    def add(self, unit: dict[str, Any], by_replica: bool) -> None:
        """Count one committed unit (its stats from the dataflow or from its file's footer)."""
        self.rows_out += unit["rows"]
        self.units += 1
        failed = Counter(self.failed_by_reason)
        failed.update(unit["failed_by_reason"])
        self.failed_by_reason = dict(failed)
        self.truncated += unit["truncated"]
        if not by_replica:
            return
        replica = unit["replica"]
        self.rows_written += unit["rows"]
        self.units_written += 1
        self.oom_splits += unit.get("oom_splits", 0)
        self.node_by_replica[replica] = unit["node"]
        for table, value in ((self.rows_by_replica, unit["rows"]),
                             (self.tokens_by_replica, unit["input_tokens"] + unit["summary_tokens"]),
                             (self.generate_s_by_replica, unit["generate_s"]),
                             (self.busy_s_by_replica, unit["busy_s"])):
            table[replica] = table.get(replica, 0) + value
