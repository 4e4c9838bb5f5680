"""The model stage of batch summarization: the Summarizer, one model replica per actor.

It summarizes whole units (`payload`), sorting a unit's rows by length and cutting them into generate calls
by rows and token budget; `Summarizer.summarize` works on a plain pyarrow Table and can be tried without a
cluster. A row that cannot be summarized keeps its id and carries its reason in `error` (an article that runs
out of device memory even alone too); only errors that concern the whole replica (a broken model) propagate.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import torch

from model import DEFAULT_BATCH_TOKENS, EncoderDecoderModel, Tokenizer, batches, compiled_decode_step, pad_ids

from ..cluster.metrics import replica_metrics
from .payload import from_ipc, to_ipc, unit_fields, with_columns
from .text import TOKENIZED_COLUMNS

log = logging.getLogger(__name__)


ERR_OOM = "out of device memory even alone"

OUTPUT_TYPES = {
    "summary": pa.string(),
    "error": pa.string(),
    "input_tokens": pa.int32(),
    "truncated": pa.bool_(),
    "cleaned": pa.bool_(),
    "summary_tokens": pa.int32(),
    "replica": pa.string(),
}


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
        units, payloads, stats = unit_fields(batch), [], []
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
        return with_columns(units, payload=payloads, stats=stats)


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
