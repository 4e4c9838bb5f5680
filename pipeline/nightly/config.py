"""The nightly job's config: what one run is asked to do."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..batch import SummarizeConfig

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
