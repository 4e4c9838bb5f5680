"""The write stage (CPU tasks): each unit's output written as its one file and committed atomically."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from ..io import commit
from ..io.storage import Location
from .payload import from_ipc, unit_fields, with_columns


def write(batch: pa.Table, *, storage_options: dict[str, Any]) -> pa.Table:
    """Units in, their stats out: each unit's output written as its one file (in its job's target folder,
    named by unit and attempt) and committed atomically."""
    units, stats = unit_fields(batch), []
    for u, data, s in zip(units, batch.column("payload").to_pylist(), batch.column("stats").to_pylist(), strict=True):
        table, record = from_ipc(data), json.loads(s)
        expected = (u["stop"] - u["start"]) * record["sequences"]
        if table.num_rows != expected:  # never commit a unit that lost or gained rows
            raise RuntimeError(f"unit {u['name']}: {table.num_rows} output rows for {u['stop'] - u['start']} "
                               f"input rows and {record['sequences']} sequences per row")
        record["file"], record["job"] = commit.file_name(u["name"], u["attempt"]), u["job"]
        commit.write_unit(Location.of(u["target"], storage_options).child(record["file"]), table, record)
        stats.append(json.dumps(record))
    return with_columns(units, stats=stats)
