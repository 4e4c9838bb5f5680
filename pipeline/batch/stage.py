"""SummarizeStage: the replica as a Ray Data stage for your own dataflow.

    ds = ray.data.read_parquet("s3://bucket/articles/")
    ds = ds.map_batches(SummarizeStage, fn_constructor_kwargs={"model": "s3://bucket/models/b2b"},
                        concurrency=(1, 4), num_gpus=1, batch_size=256, batch_format="pyarrow")

Each batch keeps its columns and gains summary, error, input_tokens, summary_tokens and truncated (and rank,
each row repeated once per output, with num_return_sequences > 1): the
summarize job's own cleaning, tokenizing and replica (length-sorted calls by token budget, out-of-memory
split, per-row errors), without its commit protocol (the dataflow is yours, and so is writing it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from .replica import Summarizer
from .text import tokenize

STAGE_COLUMNS = ("summary", "rank", "error", "input_tokens", "summary_tokens", "truncated")


class SummarizeStage(Summarizer):
    def __init__(self, model: str, text_column: str = "article", generation: dict[str, Any] | None = None,
                 max_input_tokens: int | None = None, add_special_tokens: bool = True, **replica: Any):
        """replica: Summarizer's dtype, threads, storage_options, batch_size, max_batch_tokens, compile,
        decoder_tokenizer."""
        super().__init__(model, generation or {}, **replica)
        limit = self.model.config.encoder.max_positions
        if max_input_tokens is not None and not 0 < max_input_tokens <= limit:
            raise ValueError(f"max_input_tokens must be in 1..{limit} (the encoder's positions), "
                             f"got {max_input_tokens}")
        self.text_column, self.max_input_tokens = text_column, max_input_tokens or limit
        self.add_special_tokens = add_special_tokens

    def __call__(self, batch: pa.Table | dict) -> pa.Table:
        table = batch if isinstance(batch, pa.Table) else pa.table(batch)
        if self.text_column not in table.column_names:
            raise KeyError(f"column {self.text_column!r} is not in the batch "
                           f"(columns: {', '.join(table.column_names)})")
        done = self.summarize(tokenize(table.select([self.text_column]), self.tokenizer, self.text_column,
                                       self.max_input_tokens, self.add_special_tokens))
        g = self.generator.sequences
        table = table if g == 1 else table.take(pa.array(np.repeat(np.arange(table.num_rows), g)))
        for name in STAGE_COLUMNS:
            table = table.drop_columns([name]) if name in table.column_names else table
            if name in done.column_names:
                table = table.append_column(name, done.column(name))
        return table
