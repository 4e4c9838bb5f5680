"""The row-level stages of batch summarization: tokenize (CPU tasks) and the Summarizer (one model per actor).

Both take and return pyarrow Tables, so each can be tried on `ds.take_batch(n, batch_format="pyarrow")`
without a cluster. A row that cannot be summarized keeps its id and carries its reason in `error`; only
errors that concern the whole replica (out of memory, a broken model) propagate.
"""

from __future__ import annotations

import os
import re
import socket

import pyarrow as pa
import pyarrow.compute as pc
import torch

from model import EncoderDecoderModel, Tokenizer

# C0/C1 control characters other than tab, newline and carriage return.
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# A WordPiece token covers at most this many characters of text in practice; longer text is cut before
# tokenizing so that one huge row cannot stall a task (the row is then flagged as truncated anyway).
MAX_CHARS_PER_TOKEN = 64

ERR_NULL = "text is null"
ERR_EMPTY = "text is empty or whitespace only"
ERR_UTF8 = "text is not valid UTF-8"
ERR_NOT_STRING = "text is not a string"

TOKENIZED_COLUMNS = ("input_ids", "input_tokens", "truncated", "cleaned", "error")
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


def tokenize(batch: pa.Table, tokenizer: Tokenizer, text_column: str, max_input_tokens: int) -> pa.Table:
    """Drop the text column; add input_ids (truncated to max_input_tokens), input_tokens, truncated, cleaned
    and error. A row with an error gets no tokens and is passed through to the output as is."""
    texts, errors, cleaned = _texts(batch.column(text_column))
    todo = [i for i, t in enumerate(texts) if t is not None]
    cut = [len(texts[i]) > max_input_tokens * MAX_CHARS_PER_TOKEN for i in todo]
    # One token over the limit tells a text that fits exactly from one that was cut.
    encoded = tokenizer.encode_batch([texts[i][: max_input_tokens * MAX_CHARS_PER_TOKEN] for i in todo],
                                     max_length=max_input_tokens + 1, truncation=True)
    input_ids: list[list[int] | None] = [None] * len(texts)
    truncated = [False] * len(texts)
    for i, ids, was_cut in zip(todo, encoded, cut, strict=True):
        if len(ids) > max_input_tokens:
            ids = ids[: max_input_tokens - 1] + [tokenizer.sep_token_id]
            was_cut = True
        input_ids[i] = ids
        truncated[i] = was_cut
    lengths = [None if ids is None else len(ids) for ids in input_ids]
    out = batch.drop_columns([text_column])
    return (out.append_column("input_ids", pa.array(input_ids, pa.list_(pa.int32())))
            .append_column("input_tokens", pa.array(lengths, pa.int32()))
            .append_column("truncated", pa.array(truncated, pa.bool_()))
            .append_column("cleaned", pa.array(cleaned, pa.bool_()))
            .append_column("error", pa.array(errors, pa.string())))


class Summarizer:
    """One model replica: loaded once per actor, then `__call__(tokenized batch) -> output batch`."""

    def __init__(self, model_url: str, generation: dict, dtype: str = "float32", threads: int | None = None,
                 storage_options: dict | None = None):
        if threads:
            torch.set_num_threads(threads)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = EncoderDecoderModel.from_pretrained(model_url, dtype=getattr(torch, dtype), device=device,
                                                         storage_options=storage_options)
        self.tokenizer = Tokenizer.from_pretrained(model_url, storage_options)
        self.generation = dict(generation)
        self.special = torch.tensor(sorted(self.tokenizer.all_special_ids), device=device)
        self.replica = f"{socket.gethostname()}:{os.getpid()}"

    @torch.inference_mode()
    def generate(self, rows: list[list[int]]) -> tuple[list[str], list[int]]:
        """Summaries and their lengths in tokens (special tokens excluded) for unpadded input ids."""
        device = self.model.device
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            attention_mask[i, : len(r)] = 1
        out = self.model.generate(input_ids.to(device), attention_mask.to(device), **self.generation)
        lengths = (~torch.isin(out, self.special)).sum(dim=1).tolist()
        return self.tokenizer.batch_decode(out, skip_special_tokens=True), lengths

    def __call__(self, batch: pa.Table) -> pa.Table:
        errors = batch.column("error").to_pylist()
        todo = [i for i, e in enumerate(errors) if e is None]
        summaries: list[str | None] = [None] * batch.num_rows
        summary_tokens: list[int | None] = [None] * batch.num_rows
        if todo:
            ids = pc.take(batch.column("input_ids"), pa.array(todo)).to_pylist()
            texts, lengths = self.generate(ids)
            for i, text, n in zip(todo, texts, lengths, strict=True):
                summaries[i], summary_tokens[i] = text, n
        out = batch.drop_columns(list(TOKENIZED_COLUMNS))
        columns = {
            "summary": summaries,
            "error": errors,
            "input_tokens": batch.column("input_tokens"),
            "truncated": batch.column("truncated"),
            "cleaned": batch.column("cleaned"),
            "summary_tokens": summary_tokens,
            "replica": [self.replica] * batch.num_rows,
        }
        for name, values in columns.items():
            out = out.append_column(pa.field(name, OUTPUT_TYPES[name]), pa.array(values, OUTPUT_TYPES[name])
                                    if isinstance(values, list) else values.cast(OUTPUT_TYPES[name]))
        return out
