"""The stages of batch summarization: prepare a unit (read its rows and tokenize them, CPU tasks), summarize
it (the Summarizer, one model per actor) and commit it (write its file, CPU tasks).

Between stages a unit travels as one row whose `payload` is its rows as an Arrow IPC stream, so that Ray Data
can never split a unit across batches: a unit's file is written whole or not at all. `tokenize` and
`Summarizer.summarize` work on plain pyarrow Tables and can be tried without a cluster. A row that cannot be
summarized keeps its id and carries its reason in `error` (an article that runs out of device memory even
alone too); only errors that concern the whole replica (a broken model) propagate.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import socket
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import torch

from model import DEFAULT_BATCH_TOKENS, EncoderDecoderModel, Tokenizer, batches, compiled_decode_step, pad_ids

from . import commit, storage
from .metrics import replica_metrics
from .units import Unit, read_rows

log = logging.getLogger(__name__)

# C0/C1 control characters other than tab, newline and carriage return.
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# A WordPiece token covers at most this many characters of text in practice; longer text is cut before
# tokenizing so that one huge row cannot stall a task (the row is then flagged as truncated anyway).
MAX_CHARS_PER_TOKEN = 64

ERR_NULL = "text is null"
ERR_EMPTY = "text is empty or whitespace only"
ERR_UTF8 = "text is not valid UTF-8"
ERR_NOT_STRING = "text is not a string"
ERR_OOM = "out of device memory even alone"

TOKENIZED_COLUMNS = ("input_ids", "input_tokens", "truncated", "cleaned", "error")
UNIT_FIELDS = ("shard", "shard_name", "name", "start", "stop", "row_groups", "offset")
OUTPUT_TYPES = {
    "summary": pa.string(),
    "error": pa.string(),
    "input_tokens": pa.int32(),
    "truncated": pa.bool_(),
    "cleaned": pa.bool_(),
    "summary_tokens": pa.int32(),
    "replica": pa.string(),
}


def _texts(column: pa.ChunkedArray) -> tuple[list[str | None], list[str | None], list[bool]]:
    """Python strings, per-row errors and 'control characters removed' flags for one text column."""
    n = len(column)
    if pa.types.is_dictionary(column.type):  # pandas categoricals and many writers encode text so
        column = column.cast(column.type.value_type)
    if pa.types.is_null(column.type):
        return [None] * n, [ERR_NULL] * n, [False] * n
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
            or pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type)):
        return [None] * n, [f"{ERR_NOT_STRING} ({column.type})"] * n, [False] * n
    # Decode bytes ourselves: Parquet string columns written by other tools may hold invalid UTF-8.
    raw = column.cast(pa.large_binary()).to_pylist()
    texts: list[str | None] = []
    errors: list[str | None] = []
    cleaned: list[bool] = []
    for value in raw:
        text, error, was_cleaned = None, None, False
        if value is None:
            error = ERR_NULL
        else:
            try:
                text = value.decode("utf-8")
            except UnicodeDecodeError:
                error = ERR_UTF8
        if text is not None:
            text, count = CONTROL_CHARS.subn(" ", text)
            was_cleaned = count > 0
            if not text.strip():
                text, error = None, ERR_EMPTY
        texts.append(text)
        errors.append(error)
        cleaned.append(was_cleaned)
    return texts, errors, cleaned


def tokenize(batch: pa.Table, tokenizer: Tokenizer, text_column: str, max_input_tokens: int,
             add_special_tokens: bool = True) -> pa.Table:
    """Drop the text column; add input_ids (truncated to max_input_tokens, with the checkpoint's special tokens
    unless add_special_tokens is False), input_tokens, truncated, cleaned and error. A row with an error gets no
    tokens and is passed through to the output as is."""
    texts, errors, cleaned = _texts(batch.column(text_column))
    todo = [i for i, t in enumerate(texts) if t is not None]
    limit = max_input_tokens * MAX_CHARS_PER_TOKEN
    encoded, cut = tokenizer.encode_truncated([texts[i][:limit] for i in todo], max_length=max_input_tokens,
                                              add_special_tokens=add_special_tokens)
    input_ids: list[list[int] | None] = [None] * len(texts)
    truncated = [False] * len(texts)
    for i, ids, was_cut in zip(todo, encoded, cut, strict=True):
        input_ids[i] = ids
        truncated[i] = was_cut or len(texts[i]) > limit
    lengths = [None if ids is None else len(ids) for ids in input_ids]
    out = batch.drop_columns([text_column])
    return (out.append_column("input_ids", pa.array(input_ids, pa.list_(pa.int32())))
            .append_column("input_tokens", pa.array(lengths, pa.int32()))
            .append_column("truncated", pa.array(truncated, pa.bool_()))
            .append_column("cleaned", pa.array(cleaned, pa.bool_()))
            .append_column("error", pa.array(errors, pa.string())))


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


def _units(batch: pa.Table) -> list[dict[str, Any]]:
    return batch.select([c for c in batch.column_names if c not in ("payload", "stats")]).to_pylist()


def _with(units: list[dict[str, Any]], **columns: list) -> pa.Table:
    table = pa.Table.from_pylist(units)
    for name, values in columns.items():
        table = table.append_column(name, pa.array(values, pa.large_binary() if name == "payload" else pa.string()))
    return table


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
    fs, _ = storage.url_to_fs(input_url, storage_options)
    tokenizer = _tokenizer(model_url, json.dumps(storage_options, sort_keys=True))
    units, payloads = _units(batch), []
    for u in units:
        unit = Unit(**{**{f: u[f] for f in UNIT_FIELDS}, "row_groups": tuple(u["row_groups"])})
        id_column = u["id_column"]
        table = read_rows(fs, unit, list(dict.fromkeys(([] if u["derived_id"] else [id_column]) + columns)))
        if u["derived_id"]:
            table = table.append_column(id_column, derived_ids(unit.shard_name, unit.start, unit.rows))
        payloads.append(to_ipc(tokenize(table, tokenizer, text_column, max_input_tokens, add_special_tokens)))
    return _with(units, payload=payloads)


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """"auto": bfloat16 on a GPU, float32 on a CPU; a name: that dtype."""
    if dtype == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    return getattr(torch, dtype)


class Summarizer:
    """One model replica: the model and tokenizer load once per actor; then each call summarizes whole units,
    sorting a unit's rows by length and cutting them into generate calls by rows and token budget. A call
    that runs out of device memory is split in half and retried, down to one article; an article that does
    not fit alone gets a per-row error."""

    def __init__(self, model_url: str, generation: dict, dtype: str = "auto", threads: int | None = None,
                 storage_options: dict | None = None, batch_size: int = 256,
                 max_batch_tokens: int = DEFAULT_BATCH_TOKENS, compile: bool = False):
        if threads:
            torch.set_num_threads(threads)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda":  # float32 matmuls (the logits' softmax inputs under bf16) on tensor cores
            torch.backends.cuda.matmul.allow_tf32 = dtype == "auto"
        self.model = EncoderDecoderModel.from_pretrained(model_url, dtype=resolve_dtype(dtype, device),
                                                         device=device, storage_options=storage_options)
        self.tokenizer = Tokenizer.from_pretrained(model_url, storage_options)
        self.generation = dict(generation)
        self.beams = int(self.generation.get("num_beams") or self.model.generation_config.num_beams or 1)
        self.batch_size, self.max_batch_tokens = batch_size, max_batch_tokens
        self.special = torch.tensor(sorted(self.tokenizer.all_special_ids), device=device)
        self.step = compiled_decode_step(self.model) if compile else None
        # compiled shapes must repeat: row buckets, whatever the device
        self.policy = "gpu" if compile else None
        self.replica = f"{socket.gethostname()}:{os.getpid()}"
        self.node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else socket.gethostname()
        self.metrics = replica_metrics(self.replica)
        given = ray.get_gpu_ids() if ray.is_initialized() else []
        if given and device == "cpu":
            log.warning("Ray assigned GPU(s) %s to this replica but torch sees no CUDA device: running on CPU",
                        given)
        log.info("replica %s: %s, %s", self.replica, device, self.model.dtype)
        self.generate_s = 0.0
        self.calls = 0
        self.oom_splits = 0

    @torch.inference_mode()
    def generate(self, input_ids: pa.ChunkedArray | pa.Array) -> tuple[list[str], list[int]]:
        """Summaries and their lengths in tokens (special tokens excluded) for one call's unpadded input ids."""
        ids = input_ids.combine_chunks() if isinstance(input_ids, pa.ChunkedArray) else input_ids
        lengths = pc.list_value_length(ids).to_numpy(zero_copy_only=False)
        flat = pc.list_flatten(ids).to_numpy(zero_copy_only=False)
        tokens, mask = pad_ids(None, self.tokenizer.pad_token_id, flat=flat, lengths=lengths)
        device = self.model.device
        start = time.perf_counter()
        try:
            out = self.model.generate(tokens.to(device), mask.to(device), max_batch_tokens=None, step=self.step,
                                      policy=self.policy,
                                      **self.generation)
            counts = (~torch.isin(out, self.special)).sum(dim=1).tolist()
        finally:
            seconds = time.perf_counter() - start
            self.generate_s += seconds
            self.calls += 1
            if self.metrics:
                self.metrics.generate.observe(seconds)
        return self.tokenizer.batch_decode(out, skip_special_tokens=True), counts

    def generate_or_split(self, ids: pa.ChunkedArray | pa.Array) -> list[tuple[str | None, int | None, str | None]]:
        """(summary, summary tokens, error) per row; out of device memory, each half is tried on its own."""
        try:
            texts, counts = self.generate(ids)
            return [(t, c, None) for t, c in zip(texts, counts, strict=True)]
        except torch.cuda.OutOfMemoryError as e:  # torch.OutOfMemoryError since 2.5, the same class
            reason = str(e).splitlines()[0]
        # Retried only here, outside the except block: inside it the traceback keeps the failed call's frames,
        # and with them its cache and activations, alive, so nothing could be freed for the halves.
        free_device_memory()
        if len(ids) == 1:
            log.warning("one article of %d tokens does not fit alone: %s", len(ids[0]), reason)
            return [(None, None, ERR_OOM)]
        self.oom_splits += 1
        half = len(ids) // 2
        return self.generate_or_split(ids.slice(0, half)) + self.generate_or_split(ids.slice(half))

    def summarize(self, batch: pa.Table) -> pa.Table:
        """Tokenized rows in (any order, any count), output rows out in the same order."""
        errors = batch.column("error")
        todo = np.flatnonzero(pc.is_null(errors).to_numpy(zero_copy_only=False))
        summaries = np.full(batch.num_rows, None, dtype=object)
        summary_tokens = np.full(batch.num_rows, None, dtype=object)
        if len(todo):
            lengths = batch.column("input_tokens").to_numpy(zero_copy_only=False)[todo]
            ids = batch.column("input_ids").take(pa.array(todo))
            errors = errors.to_numpy(zero_copy_only=False).astype(object)
            for part in batches(lengths, self.beams, self.max_batch_tokens, self.batch_size):
                rows, results = todo[part], self.generate_or_split(ids.take(pa.array(part)))
                summaries[rows], summary_tokens[rows], errors[rows] = zip(*results, strict=True)
            errors = pa.array(errors, pa.string())
        out = batch.drop_columns(list(TOKENIZED_COLUMNS))
        columns = {
            "summary": pa.array(summaries, OUTPUT_TYPES["summary"]),
            "error": errors,
            "input_tokens": batch.column("input_tokens"),
            "truncated": batch.column("truncated"),
            "cleaned": batch.column("cleaned"),
            "summary_tokens": pa.array(summary_tokens, OUTPUT_TYPES["summary_tokens"]),
            "replica": pa.array([self.replica] * batch.num_rows, OUTPUT_TYPES["replica"]),
        }
        for name, values in columns.items():
            out = out.append_column(pa.field(name, OUTPUT_TYPES[name]), values.cast(OUTPUT_TYPES[name]))
        return out

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Units in, units out: each payload's rows summarized, with the unit's stats."""
        units, payloads, stats = _units(batch), [], []
        if self.metrics:
            self.metrics.busy.set(1)
        for data in batch.column("payload").to_pylist():
            start, generate_s, calls, splits = time.perf_counter(), self.generate_s, self.calls, self.oom_splits
            out = self.summarize(from_ipc(data))
            payloads.append(to_ipc(out))
            stats.append(json.dumps({**unit_stats(out), "replica": self.replica, "node": self.node,
                                     "generate_calls": self.calls - calls,
                                     "generate_s": self.generate_s - generate_s, "oom_splits": self.oom_splits - splits,
                                     "busy_s": time.perf_counter() - start}))
            if self.metrics:
                self.metrics.unit(stats=json.loads(stats[-1]))
        if self.metrics:
            self.metrics.busy.set(0)
        return _with(units, payload=payloads, stats=stats)


def free_device_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def unit_stats(out: pa.Table) -> dict[str, Any]:
    """Row counts of one unit's output: what the report and the file's footer carry."""
    errors = pc.value_counts(out.column("error").drop_null()).to_pylist()
    return {
        "rows": out.num_rows,
        "failed_by_reason": {e["values"]: e["counts"] for e in errors},
        "truncated": int(pc.sum(out.column("truncated").cast(pa.int64())).as_py() or 0),
        "input_tokens": int(pc.sum(out.column("input_tokens")).as_py() or 0),
        "summary_tokens": int(pc.sum(out.column("summary_tokens")).as_py() or 0),
    }


def write(batch: pa.Table, *, storage_options: dict[str, Any]) -> pa.Table:
    """Units in, their stats out: each unit's output written as its one file (in its job's target folder,
    named by unit and attempt) and committed atomically."""
    units, stats = _units(batch), []
    for u, data, s in zip(units, batch.column("payload").to_pylist(), batch.column("stats").to_pylist(), strict=True):
        table, record = from_ipc(data), json.loads(s)
        expected = u["stop"] - u["start"]
        if table.num_rows != expected:  # never commit a unit that lost or gained rows
            raise RuntimeError(f"unit {u['name']}: {table.num_rows} output rows for {expected} input rows")
        record["file"], record["job"] = commit.file_name(u["name"], u["attempt"]), u["job"]
        commit.write_unit(storage.join(u["target"], record["file"]), table, record, storage_options)
        stats.append(json.dumps(record))
    return _with(units, stats=stats)
