"""The prepare stage (CPU tasks): read a unit's rows (only its row groups) and tokenize them."""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

import numpy as np
import pyarrow as pa

from model import Tokenizer

from ..io import storage
from ..io.storage import Location
from .payload import UNIT_FIELDS, to_ipc, unit_fields, with_columns
from .text import tokenize
from .units import Unit, read_rows


@functools.lru_cache(maxsize=4)
def _tokenizer(model_url: str, storage_options_json: str) -> Tokenizer:
    """One tokenizer per worker process and model: Ray reuses worker processes across tasks, so a task pays
    for loading it only the first time (instead of unpickling it from its arguments every time)."""
    return Tokenizer.from_pretrained(model_url, json.loads(storage_options_json))


def derived_ids(shard_name: str, start: int, rows: int) -> pa.Array:
    """uint64 ids: a 64-bit hash of the shard's relative name plus the row number in the shard. Unique within
    a shard; two shards collide only if their hashes fall within a shard's row count of each other."""
    base = np.uint64(int.from_bytes(hashlib.blake2b(shard_name.encode(), digest_size=8).digest(), "little"))
    return pa.array(base + np.arange(start, start + rows, dtype=np.uint64))


def prepare(batch: pa.Table, *, input_url: str, model_url: str, columns: list[str], text_column: str,
            max_input_tokens: int, add_special_tokens: bool, storage_options: dict[str, Any]) -> pa.Table:
    """Units in, units out with their tokenized rows as payload (read only the unit's row groups). `columns`
    are the text and passthrough columns; the id column is the unit's."""
    fs = Location.of(input_url, storage_options).fs
    tokenizer = _tokenizer(model_url, json.dumps(storage.client_options(model_url, storage_options), sort_keys=True))
    units, payloads = unit_fields(batch), []
    for u in units:
        unit = Unit(**{**{f: u[f] for f in UNIT_FIELDS}, "row_groups": tuple(u["row_groups"])})
        id_column = u["id_column"]
        table = read_rows(fs, unit, list(dict.fromkeys(([] if u["derived_id"] else [id_column]) + columns)))
        if u["derived_id"]:
            table = table.append_column(id_column, derived_ids(unit.shard_name, unit.start, unit.rows))
        payloads.append(to_ipc(tokenize(table, tokenizer, text_column, max_input_tokens, add_special_tokens)))
    return with_columns(units, payload=payloads)
