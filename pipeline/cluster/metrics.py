"""Job metrics through `ray.util.metrics`: every node's Ray metrics agent serves them on its metrics export
port, with Ray's own, to Prometheus (names get Ray's `ray_` prefix, counters a `_total` suffix).

Replicas record per committed unit; a process's values reach the agent every `metrics_report_interval_ms`
(10 s by default), so the last seconds of a replica that ends with its job can be missing there: the
end-of-job report is the exact count.
"""

from __future__ import annotations

from typing import Any

import ray
from ray.util import metrics

GENERATE_SECONDS = [0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256]


class ReplicaMetrics:
    """Rows summarized, rows failed by reason, input and output tokens, generate time per call, busy."""

    def __init__(self, replica: str):
        tags = {"replica": replica}
        keys = ("replica",)
        self.rows = metrics.Counter("bert2bert_rows_summarized", "rows with a summary", keys).set_default_tags(tags)
        self.failed = metrics.Counter("bert2bert_rows_failed", "rows with a per-row error, by reason",
                                      ("replica", "reason")).set_default_tags(tags)
        self.input_tokens = metrics.Counter("bert2bert_input_tokens", "input tokens of summarized rows",
                                            keys).set_default_tags(tags)
        self.output_tokens = metrics.Counter("bert2bert_output_tokens", "summary tokens (special tokens excluded)",
                                             keys).set_default_tags(tags)
        self.generate = metrics.Histogram("bert2bert_generate_seconds", "seconds per generate call",
                                          GENERATE_SECONDS, keys).set_default_tags(tags)
        self.busy = metrics.Gauge("bert2bert_replica_busy", "1 while the replica works on a unit",
                                  keys).set_default_tags(tags)

    def unit(self, stats: dict[str, Any]) -> None:
        failed = stats["failed_by_reason"]
        self.rows.inc(stats["rows"] - sum(failed.values()))
        for reason, n in failed.items():
            self.failed.inc(n, tags={"reason": reason})
        self.input_tokens.inc(stats["input_tokens"])
        self.output_tokens.inc(stats["summary_tokens"])


def replica_metrics(replica: str) -> ReplicaMetrics | None:
    """None outside a Ray worker (a Summarizer tried in a plain process records nothing)."""
    return ReplicaMetrics(replica) if ray.is_initialized() else None


def record_partitions(outcomes: list[Any]) -> None:
    """The nightly run's partitions by action: processed, skipped, failed, repaired."""
    if not ray.is_initialized():
        return
    counter = metrics.Counter("bert2bert_nightly_partitions", "nightly partitions by action", ("action",))
    for outcome in outcomes:
        counter.inc(1, tags={"action": outcome.action})
