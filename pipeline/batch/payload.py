"""Units as the dataflow's rows: a unit's fields plus its rows as one Arrow IPC stream (`payload`), so that Ray
Data can never split a unit across batches and a unit's file is written whole or not at all."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from .units import Unit

UNIT_FIELDS = ("shard", "shard_name", "name", "start", "stop", "row_groups", "offset")


def to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


def unit_rows(units: list[Unit], job: int, target: str, attempt: str, id_column: str,
              derived_id: bool) -> list[dict[str, Any]]:
    """Units as the dataset's rows (what `prepare` receives), each with its job's index, output folder, attempt
    and id column: one dataflow can serve several jobs (the nightly job's partitions)."""
    extra = {"job": job, "target": target, "attempt": attempt, "id_column": id_column, "derived_id": derived_id}
    return [{**{f: getattr(u, f) for f in UNIT_FIELDS}, **extra} for u in units]


def unit_fields(batch: pa.Table) -> list[dict[str, Any]]:
    return batch.select([c for c in batch.column_names if c not in ("payload", "stats")]).to_pylist()


def with_columns(units: list[dict[str, Any]], **columns: list) -> pa.Table:
    table = pa.Table.from_pylist(units)
    for name, values in columns.items():
        table = table.append_column(name, pa.array(values, pa.large_binary() if name == "payload" else pa.string()))
    return table
