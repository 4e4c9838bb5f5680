"""SummarizeStage: the replica as a Ray Data stage for your own dataflow.

    ds = ray.data.read_parquet("s3://bucket/articles/")
    ds = ds.map_batches(SummarizeStage, fn_constructor_kwargs={"model": "s3://bucket/models/b2b"},
                        concurrency=(1, 4), num_gpus=1, batch_size=256, batch_format="pyarrow")

Each batch keeps its columns and gains summary, error, input_tokens, summary_tokens, score (the model's own:
the length-penalised beam score, or the mean log-probability of the generated tokens; null on error) and
truncated (and rank,
each row repeated once per output, with num_return_sequences > 1): the summarize job's own cleaning,
tokenizing and replica (length-sorted calls by token budget, out-of-memory split, per-row errors), without its
commit protocol (the dataflow is yours, and so is writing it). The names are the job's output columns, not
`pipeline()`'s keys: `summary` is what `pipeline()` returns as `summary_text`, and `error` is its `error`.
A batch that already has a column of one of these names is refused before any work (rename it first).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import ray

from .replica import Summarizer
from .text import tokenize

STAGE_COLUMNS = ("summary", "rank", "error", "input_tokens", "summary_tokens", "score", "truncated")


def actor_cpus() -> int | None:
    """The CPUs Ray assigned to this actor (at least 1), None outside an actor."""
    if not ray.is_initialized() or ray.get_runtime_context().get_actor_id() is None:
        return None
    return max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))


class SummarizeStage(Summarizer):
    def __init__(self, model: str, text_column: str = "article", generation: dict[str, Any] | None = None,
                 max_input_tokens: int | None = None, add_special_tokens: bool = True, **replica: Any):
        """replica: Summarizer's dtype, threads, storage_options, batch_size, max_batch_tokens, compile,
        decoder_tokenizer. `threads` unset: in a Ray actor, the CPUs Ray assigned to it (map_batches'
        num_cpus; torch would otherwise follow the OMP_NUM_THREADS the worker inherited), else torch's own."""
        replica.setdefault("threads", actor_cpus())
        super().__init__(model, generation or {}, **replica)
        limit = self.model.config.encoder.max_positions
        if max_input_tokens is not None and not 0 < max_input_tokens <= limit:
            raise ValueError(f"max_input_tokens must be in 1..{limit} (the encoder's positions), "
                             f"got {max_input_tokens}")
        self.text_column, self.max_input_tokens = text_column, max_input_tokens or limit
        self.add_special_tokens = add_special_tokens
        self.columns = [c for c in STAGE_COLUMNS if c != "rank" or self.generator.sequences > 1]

    def __call__(self, batch: pa.Table | dict) -> pa.Table:
        table = batch if isinstance(batch, pa.Table) else pa.table(batch)
        if self.text_column not in table.column_names:
            raise KeyError(f"column {self.text_column!r} is not in the batch "
                           f"(columns: {', '.join(table.column_names)})")
        clash = [c for c in self.columns if c in table.column_names]
        if clash:
            raise ValueError(f"the batch has column(s) {', '.join(map(repr, clash))}, which SummarizeStage writes "
                             f"({', '.join(self.columns)}); rename them first (Dataset.rename_columns)")
        done = self.summarize(tokenize(table.select([self.text_column]), self.tokenizer, self.text_column,
                                       self.max_input_tokens, self.add_special_tokens))
        g = self.generator.sequences
        table = table if g == 1 else table.take(pa.array(np.repeat(np.arange(table.num_rows), g)))
        for name in self.columns:
            table = table.append_column(name, done.column(name))
        return table
