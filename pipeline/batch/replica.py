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

from model import (
    DEFAULT_BATCH_TOKENS,
    EncoderDecoderModel,
    TextGenerator,
    Tokenizer,
    compiled_decode_step,
    load_tokenizers,
    run_dtype,
)

from ..cluster.metrics import replica_metrics
from .payload import from_ipc, to_ipc, unit_fields, with_columns
from .text import TOKENIZED_COLUMNS

log = logging.getLogger(__name__)


OUTPUT_TYPES = {
    "summary": pa.string(),
    "rank": pa.int32(),  # only with num_return_sequences > 1: 0 the best of an input's outputs
    "error": pa.string(),
    "input_tokens": pa.int32(),
    "truncated": pa.bool_(),
    "cleaned": pa.bool_(),
    "summary_tokens": pa.int32(),
    "score": pa.float64(),  # the model's: the length-penalised beam score, or the mean token log-prob; null on error
    "replica": pa.string(),
}


class Summarizer:
    """One model replica: the model and tokenizer load once per actor; then each call summarizes whole units
    with model's TextGenerator (a unit's rows in flight, or in length-sorted calls cut by rows and token
    budget: `batching`; out-of-memory calls split in half down to one article, an article that does not fit
    alone a per-row error)."""

    def __init__(self, model_url: str, generation: dict, dtype: str = "auto", threads: int | None = None,
                 storage_options: dict | None = None, batch_size: int = 256,
                 max_batch_tokens: int = DEFAULT_BATCH_TOKENS, compile: bool = False,
                 decoder_tokenizer: str | None = None, batching: str = "auto"):
        if threads:
            torch.set_num_threads(threads)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = run_dtype(dtype, device)
        if device == "cuda":  # under bf16, float32 matmuls (the logits' softmax inputs) on tensor cores: the same
            torch.backends.cuda.matmul.allow_tf32 = dtype == torch.bfloat16  # numerics for "auto" and bfloat16
        self.model = EncoderDecoderModel.from_pretrained(model_url, dtype=dtype, device=device,
                                                         storage_options=storage_options)
        self.tokenizer, self.decoder_tokenizer = load_tokenizers(model_url, storage_options)
        if decoder_tokenizer is not None:  # the decoder's vocabulary, for a checkpoint that holds only the encoder's
            self.decoder_tokenizer = Tokenizer.from_pretrained(decoder_tokenizer, storage_options)
        self.replica = f"{socket.gethostname()}:{os.getpid()}"
        self.node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else socket.gethostname()
        self.metrics = replica_metrics(self.replica)
        # a compiled step's shapes must repeat: row buckets (the "gpu" policy), whatever the device
        self.generator = TextGenerator(
            self.model, self.tokenizer, generation, batch_size, max_batch_tokens,
            step=compiled_decode_step(self.model) if compile else None, policy="gpu" if compile else None,
            on_call=self.metrics.generate.observe if self.metrics else None, decoder_tokenizer=self.decoder_tokenizer,
            batching=batching)
        given = ray.get_gpu_ids() if ray.is_initialized() else []
        if given and device == "cpu":
            log.warning("Ray assigned GPU(s) %s to this replica but torch sees no CUDA device: running on CPU",
                        given)
        log.info("replica %s: %s, %s", self.replica, device, self.model.dtype)

    def summarize(self, batch: pa.Table) -> pa.Table:
        """Tokenized rows in (any order, any count), output rows out in the same order: one per row, or with
        num_return_sequences g > 1, g per row (best first) with their rank; a row's error is on each of them."""
        g, n = self.generator.sequences, batch.num_rows
        errors = batch.column("error")
        todo = np.flatnonzero(pc.is_null(errors).to_numpy(zero_copy_only=False))
        summaries = np.full(n * g, None, dtype=object)
        summary_tokens = np.full(n * g, None, dtype=object)
        scores = np.full(n * g, None, dtype=object)
        if len(todo):
            errors = np.repeat(errors.to_numpy(zero_copy_only=False).astype(object), g)
            results = self.generator(batch.column("input_ids").take(pa.array(todo)).to_pylist())
            slots = (todo[:, None] * g + np.arange(g)).ravel()
            summaries[slots], summary_tokens[slots], errors[slots], scores[slots] = zip(*results, strict=True)
        rows = batch if g == 1 else batch.take(pa.array(np.repeat(np.arange(n), g)))
        out = rows.drop_columns(list(TOKENIZED_COLUMNS))
        columns = {
            "summary": pa.array(summaries, OUTPUT_TYPES["summary"]),
            **({"rank": pa.array(np.tile(np.arange(g), n), OUTPUT_TYPES["rank"])} if g > 1 else {}),
            "error": pa.array(errors, pa.string()) if len(todo) else rows.column("error"),
            "input_tokens": rows.column("input_tokens"),
            "truncated": rows.column("truncated"),
            "cleaned": rows.column("cleaned"),
            "summary_tokens": pa.array(summary_tokens, OUTPUT_TYPES["summary_tokens"]),
            "score": pa.array(scores, OUTPUT_TYPES["score"]),
            "replica": pa.array([self.replica] * (n * g), OUTPUT_TYPES["replica"]),
        }
        for name, values in columns.items():
            out = out.append_column(pa.field(name, OUTPUT_TYPES[name]), values.cast(OUTPUT_TYPES[name]))
        return out

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Units in, units out: each payload's rows summarized, with the unit's stats."""
        units, payloads, stats = unit_fields(batch), [], []
        if self.metrics:
            self.metrics.busy.set(1)
        g = self.generator
        for data in batch.column("payload").to_pylist():
            start, generate_s, calls, splits = time.perf_counter(), g.generate_s, g.calls, g.oom_splits
            out = self.summarize(from_ipc(data))
            payloads.append(to_ipc(out))
            stats.append(json.dumps({**unit_stats(out, g.sequences), "replica": self.replica, "node": self.node,
                                     "generate_calls": g.calls - calls, "generate_s": g.generate_s - generate_s,
                                     "oom_splits": g.oom_splits - splits, "busy_s": time.perf_counter() - start}))
            if self.metrics:
                self.metrics.unit(stats=json.loads(stats[-1]))
        if self.metrics:
            self.metrics.busy.set(0)
        return with_columns(units, payload=payloads, stats=stats)


def unit_stats(out: pa.Table, sequences: int) -> dict[str, Any]:
    """Counts of one unit's output, what the report and the file's footer carry: rows, failures, truncation
    and input tokens per input row (an input's first output, with `sequences` outputs per input), output
    tokens over every output."""
    first = out if sequences == 1 else out.filter(pc.equal(out.column("rank"), 0))
    errors = pc.value_counts(first.column("error").drop_null()).to_pylist()
    return {
        "rows": first.num_rows,
        "sequences": sequences,
        "failed_by_reason": {e["values"]: e["counts"] for e in errors},
        "truncated": int(pc.sum(first.column("truncated").cast(pa.int64())).as_py() or 0),
        "input_tokens": int(pc.sum(first.column("input_tokens")).as_py() or 0),
        "summary_tokens": int(pc.sum(out.column("summary_tokens")).as_py() or 0),
    }
