"""Units of work of the summarize job, planned from one listing and the Parquet footers of the input.

A unit is an input shard, or a range of rows of a shard that holds more than `rows_per_file` rows; each unit
is summarized into exactly one output file whose name is derived from the unit (see `pipeline.commit`). The
driver holds the units and the shards' footers' facts: its memory grows with files, never with rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .inputs import Shard


@dataclass(frozen=True)
class Unit:
    """Rows [start, stop) of one shard; `name` is the stem of its output file, unique within the job."""

    shard: str  # protocol-less path
    shard_name: str
    name: str
    start: int
    stop: int
    row_groups: tuple[int, ...]  # the shard's row groups that overlap [start, stop)
    offset: int  # rows to skip in the first of them

    @property
    def rows(self) -> int:
        return self.stop - self.start


def plan_units(shards: list[Shard], rows_per_file: int) -> list[Unit]:
    """Each shard in ceil(rows / rows_per_file) equal row ranges, so every file is near rows_per_file rows;
    shards without rows have no unit."""
    units = []
    for shard in (s for s in shards if s.rows):
        n = math.ceil(shard.rows / rows_per_file)
        stem = shard.name[: -len(".parquet")] if shard.name.endswith(".parquet") else shard.name
        bounds = [shard.rows * k // n for k in range(n + 1)]
        first = [0]
        for size in shard.row_groups:
            first.append(first[-1] + size)
        for k in range(n):
            start, stop = bounds[k], bounds[k + 1]
            groups = tuple(i for i in range(len(shard.row_groups)) if first[i] < stop and first[i + 1] > start)
            units.append(Unit(shard.path, shard.name, f"{stem}-{k:05d}", start, stop, groups,
                              start - first[groups[0]]))
    return units


def read_rows(fs: Any, unit: Unit, columns: list[str]) -> pa.Table:
    """The unit's rows, reading only the row groups that overlap them."""
    with fs.open(unit.shard, "rb") as f:
        table = pq.ParquetFile(f).read_row_groups(list(unit.row_groups), columns=columns)
    if table.num_rows < unit.offset + unit.rows:
        raise ValueError(f"input shard {unit.shard_name} has {table.num_rows} rows in row groups "
                         f"{list(unit.row_groups)}, fewer than planned; it changed during the run")
    return table.slice(unit.offset, unit.rows)
