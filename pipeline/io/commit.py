"""The commit protocol of the summarize job: one immutable file per unit of work, made visible atomically.

- A run has an attempt id, kept in the run record `_RUN.json` at its target folder with everything that
  determines its files (input root, model, settings, rows per file), so that a resumed run continues the
  same attempt and never mixes files of two.
- Unit `u` of attempt `a` is written in full as `<target>/<u>-<a>.parquet` with one atomic write (a rename
  on local disk, one PUT on object stores); its row counts travel in the file's own Parquet metadata.
  Existing means committed: a resumed run lists the target once and skips those units.
- A complete output has the marker `_SUCCESS.json`, written last, naming its files. Publishing a staged
  output into place (`--overwrite`, the nightly switch) moves the files next to the old ones (new names,
  since the attempt differs), rewrites the marker (the switch, one atomic write), then deletes what the
  marker does not name. Every step is idempotent: a crash leaves the old marker naming the old files or the
  new one naming the new files, and the next run finishes the publish.
"""

from __future__ import annotations

import io
import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from . import storage
from .storage import Location

RUN_NAME = "_RUN.json"
STATS_KEY = b"bert2bert.unit"
FOOTER_THREADS = 16


def new_attempt() -> str:
    return uuid.uuid4().hex[:8]


def file_name(unit_name: str, attempt: str) -> str:
    return f"{unit_name}-{attempt}.parquet"


def committed_units(names: list[str], attempt: str) -> dict[str, str]:
    """unit name -> file name, for the data files (relative names from one listing) of this attempt."""
    suffix = f"-{attempt}.parquet"
    return {n[: -len(suffix)]: n for n in names if n.endswith(suffix)}


def write_unit(loc: Location, table: pa.Table, stats: dict[str, Any]) -> None:
    """The unit's whole output as one Parquet file with its stats in the footer, made visible atomically."""
    meta = {**(table.schema.metadata or {}), STATS_KEY: json.dumps(stats, sort_keys=True).encode()}
    buf = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(meta), buf)
    storage.write_bytes_atomic(loc, buf.getvalue())


def read_stats(folder: Location, names: list[str]) -> list[dict[str, Any]]:
    """The stats of committed unit files, from their footers only."""
    fs = folder.fresh_fs()

    def one(name: str) -> dict[str, Any]:
        file = folder.child(name)
        with fs.open(file.path, "rb") as f:
            meta = pq.ParquetFile(f).schema_arrow.metadata or {}
        if STATS_KEY not in meta:
            raise ValueError(f"{file} has no unit stats in its footer")
        return json.loads(meta[STATS_KEY])

    with ThreadPoolExecutor(FOOTER_THREADS) as pool:
        return list(pool.map(one, names))


def publish(staged: Location, output: Location, files: list[str], marker: dict[str, Any]) -> None:
    """Move `files` (relative names) from `staged` into `output`, switch the marker to name them, delete the
    output's other data files and run record, then the staging. Safe to repeat after a crash at any point."""
    present = set(storage.data_names(output))
    todo = [n for n in files if n not in present]
    storage.move_files(staged, output, todo)
    storage.write_json_atomic(output.child(storage.MARKER_NAME), {**marker, "files": files})
    keep = set(files)
    storage.remove_files(output, [n for n in present if n not in keep])
    storage.remove_tree(output.child(RUN_NAME))  # an attempt abandoned in place
    storage.remove_tree(staged)
