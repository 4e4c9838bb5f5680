"""Preflight of the summarize job's input from one listing and the Parquet footers: shards, columns, id column
and types, row counts. The driver holds the shards' footers' facts: its memory grows with files, never with rows."""

from __future__ import annotations

import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from ..io import storage
from ..io.storage import Location
from .config import SummarizeConfig

DEFAULT_ID_COLUMN = "id"


DERIVED_ID_COLUMN = "row_hash"  # uint64 from the shard's relative name and the row's number in it


FOOTER_THREADS = 16


@dataclass(frozen=True)
class Shard:
    """One input file: where it is, what version of it was planned, and its footer's row counts."""

    path: str  # protocol-less, for the storage's filesystem
    name: str  # relative to the input root, e.g. "date=2026-11-01/part-0.parquet"
    size: int
    version: str
    rows: int
    row_groups: tuple[int, ...]  # rows per row group


@dataclass(frozen=True)
class InputPlan:
    """What preflight found at the input URL."""

    input: Location  # the input URL, resolved
    root: str  # protocol-less folder the shards' names are relative to
    shards: list[Shard]
    columns: list[str]
    rows: int
    id_column: str
    derived_id: bool
    id_types: dict[str, str]  # shard name -> the id column's Arrow type (empty for a derived id)


def is_text(kind: pa.DataType) -> bool:
    """Types a text column may have: strings, bytes (UTF-8 checked per row), their dictionaries, or all-null."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind)
            or pa.types.is_large_binary(kind) or pa.types.is_null(kind))


def _footer(shard: Location) -> pq.FileMetaData:
    try:
        with shard.fs.open(shard.path, "rb") as f:
            return pq.ParquetFile(f).metadata
    except Exception as e:  # pyarrow raises several types for a damaged file; all mean the same here
        raise ValueError(f"corrupt Parquet shard {shard}: {e}") from e


def inspect_input(config: SummarizeConfig) -> InputPlan:
    """Shards, schema, row counts and id column from one listing and the footers; every problem raises naming
    the shard or the columns. Reads no rows."""
    given = Location.of(config.input, config.storage_options)
    root, files = storage.list_shards(given)
    if config.only_shards:
        wanted = set(config.only_shards)
        files = [f for f in files if f.path[len(root) + 1:] in wanted]
        missing = wanted - {f.path[len(root) + 1:] for f in files}
        if missing:
            raise FileNotFoundError(f"input shard(s) not found under {config.input}: {', '.join(sorted(missing))}")
    with ThreadPoolExecutor(FOOTER_THREADS) as pool:
        footers = list(pool.map(lambda f: _footer(given.at(f.path)), files))
    schemas = [m.schema.to_arrow_schema() for m in footers]
    columns = list(dict.fromkeys(name for schema in schemas for name in schema.names))
    needed = [config.text_column, *config.passthrough_columns]
    if config.id_column is not None:
        needed.append(config.id_column)
    for schema, file in zip(schemas, files, strict=True):
        missing = [c for c in needed if c not in schema.names]
        if missing:
            raise ValueError(f"input shard {given.at(file.path)} has no column(s) {', '.join(missing)}; "
                             f"its columns are: {', '.join(schema.names)}")
    for schema, file in zip(schemas, files, strict=True):
        kind = schema.field(config.text_column).type
        if not is_text(kind):
            raise ValueError(f"the text column {config.text_column!r} of input shard {given.at(file.path)} "
                             f"is {kind}, not text (string, large_string, binary or a dictionary of those)")
    # both made absolute: relpath of relative paths (S3 keys) reads the process's cwd, which may be gone
    shards = [Shard(f.path, posixpath.relpath("/" + f.path.lstrip("/"), "/" + root.lstrip("/")), f.size,
                    f.version, m.num_rows, tuple(m.row_group(i).num_rows for i in range(m.num_row_groups)))
              for f, m in zip(files, footers, strict=True)]
    rows = sum(s.rows for s in shards)
    id_column = config.id_column or (DEFAULT_ID_COLUMN if all(DEFAULT_ID_COLUMN in s.names for s in schemas)
                                     else None)
    if id_column is None:
        return InputPlan(given, root, shards, columns, rows, DERIVED_ID_COLUMN, derived_id=True, id_types={})
    id_types = {s.name: str(schema.field(id_column).type) for s, schema in zip(shards, schemas, strict=True)}
    kinds = sorted(set(id_types.values()))
    if len(kinds) > 1:
        examples = "; ".join(f"{t} in {next(n for n, k in id_types.items() if k == t)}" for t in kinds)
        raise ValueError(f"the id column {id_column!r} has different types in different shards ({examples}); "
                         "write every shard with the same type")
    return InputPlan(given, root, shards, columns, rows, id_column, derived_id=False, id_types=id_types)
