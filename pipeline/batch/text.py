"""Text cleaning and tokenizing of a unit's rows: per-row errors for text that cannot be summarized, control
characters removed, inputs truncated to the model's limit."""

from __future__ import annotations

import re

import pyarrow as pa

from model import Tokenizer

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
