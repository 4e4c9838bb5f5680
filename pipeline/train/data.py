"""Fine-tuning data: checks on the Parquet input, the text-pair dataset, tokenizing and per-batch padding."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import ray.data
import torch

from model import Tokenizer, load_tokenizers, pad_ids

from ..io.storage import Location, arrow_fs, client_options, list_parquet


@dataclass(frozen=True)
class SplitStats:
    """Row counts of one Parquet split: all rows, and rows skipped for an empty article or summary."""

    url: str
    rows: int
    empty: int

    @property
    def usable(self) -> int:
        return self.rows - self.empty


def inspect_split(url: str, text_column: str, summary_column: str,
                  storage_options: dict | None = None) -> SplitStats:
    """Count rows and empty pairs of Parquet shards; a missing column is an error naming those present."""
    split = Location.of(url, storage_options)
    dataset = pads.dataset(list_parquet(split), format="parquet", filesystem=arrow_fs(split))
    present = dataset.schema.names
    missing = [c for c in (text_column, summary_column) if c not in present]
    if missing:
        raise ValueError(f"{url}: missing column(s) {', '.join(missing)}; columns present: {', '.join(present)}")
    rows = empty = 0
    for batch in dataset.to_batches(columns=[text_column, summary_column]):
        rows += batch.num_rows
        blank = pc.or_kleene(_blank(batch.column(0)), _blank(batch.column(1)))
        empty += pc.sum(blank.cast("int64")).as_py() or 0
    return SplitStats(url, rows, empty)


def _blank(column):
    return pc.fill_null(pc.equal(pc.utf8_trim_whitespace(column.cast("string")), ""), True)


class TokenizePairs:
    """(article, summary) strings -> unpadded `input_ids` and `labels` (`pairs_dataset` has dropped the empty
    pairs already).

    input_ids are the article as the tokenizer encodes it (`[CLS] article [SEP]`, `<s> article </s>`); labels
    are the summary in the decoder's vocabulary (decoder_tokenizer, by default the same), without the start
    token its tokenizer puts first ([CLS], <s>) and ending with its end token ([SEP], </s>, GPT-2's
    <|endoftext|>, added where the tokenizer adds none): the decoder starts from decoder_start_token_id and
    learns to emit the summary and stop.
    """

    def __init__(self, tokenizer: Tokenizer, text_column: str, summary_column: str, max_source_tokens: int,
                 max_target_tokens: int, keep_reference: bool = False, decoder_tokenizer: Tokenizer | None = None):
        self.tok, self.text_column, self.summary_column = tokenizer, text_column, summary_column
        self.decoder_tok = decoder_tokenizer or tokenizer
        self.max_source_tokens, self.max_target_tokens = max_source_tokens, max_target_tokens
        self.keep_reference = keep_reference
        d = self.decoder_tok
        self.start = {i for i in (d.cls_token_id, d.bos_token_id) if i is not None}
        self.end = d.sep_token_id if d.sep_token_id is not None else d.eos_token_id
        if self.end is None:
            raise ValueError("the decoder's tokenizer has no end token (sep or eos): labels could not end")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(t) for t in batch[self.text_column]]
        summaries = [str(s) for s in batch[self.summary_column]]
        sources = self.tok.encode_batch(texts, self.max_source_tokens)
        # one more token than the limit: a leading start token is dropped from labels
        targets = self.decoder_tok.encode_batch(summaries, self.max_target_tokens + 1)
        out = {
            "input_ids": _ragged([np.asarray(ids, dtype=np.int32) for ids in sources]),
            "labels": _ragged([np.asarray(self.label(ids), dtype=np.int32) for ids in targets]),
        }
        if self.keep_reference:
            out["reference"] = np.asarray(summaries, dtype=object)
        return out


    def label(self, ids: list[int]) -> list[int]:
        """A summary's ids without a leading start token, ending with the end token, at most max_target_tokens."""
        ids = ids[1:] if ids and ids[0] in self.start else ids[:self.max_target_tokens]
        return ids if ids and ids[-1] == self.end else [*ids[:self.max_target_tokens - 1], self.end]


def load_pair_tokenizers(encoder_url: str, decoder_url: str | None = None,
                         storage_options: dict | None = None) -> tuple[Tokenizer, Tokenizer]:
    """The encoder's and the decoder's tokenizers: of one encoder-decoder folder (its decoder_tokenizer/ when
    the vocabularies differ), or of the two checkpoints a warm start reads (one tokenizer when they are the
    same folder)."""
    options = client_options(encoder_url, storage_options)
    if decoder_url is None or decoder_url == encoder_url:
        return load_tokenizers(encoder_url, options)
    return Tokenizer.from_pretrained(encoder_url, options), Tokenizer.from_pretrained(decoder_url, options)


def _ragged(rows: list[np.ndarray]) -> np.ndarray:
    out = np.empty(len(rows), dtype=object)
    out[:] = rows
    return out


def _drop_empty_pairs(batch: pa.Table, text_column: str, summary_column: str) -> pa.Table:
    empty = pc.or_kleene(_blank(batch.column(text_column)), _blank(batch.column(summary_column)))
    return batch.filter(pc.invert(empty))


def pairs_dataset(url: str, text_column: str, summary_column: str,
                  storage_options: dict | None = None) -> ray.data.Dataset:
    """Parquet -> (article, summary) text pairs, empty ones dropped, lazily; each epoch re-reads in a streaming
    fashion. Tokenizing waits for the worker (`PairBatches`), so that a resumed worker skips the batches it
    trained on before its checkpoint without tokenizing or padding them."""
    split = Location.of(url, storage_options)
    ds = ray.data.read_parquet(list_parquet(split), filesystem=arrow_fs(split))
    return ds.select_columns([text_column, summary_column]).map_batches(
        _drop_empty_pairs, batch_format="pyarrow", batch_size=None,
        fn_kwargs={"text_column": text_column, "summary_column": summary_column})


class PairBatches:
    """A worker's micro-batches of text pairs -> padded tensors on its device, from a saved position on.

    `batches(shard, epoch, skip)` iterates the worker's dataset shard in batches of `batch_size` (shuffled
    locally with a seed per epoch) and yields (index, batch) from micro-batch `skip` on: the batches before
    it are counted as Arrow batches only, never tokenized, padded or moved to the device."""

    def __init__(self, tokenize: TokenizePairs, pad_id: int, batch_size: int, shuffle_buffer: int, seed: int,
                 device: torch.device):
        self.tokenize, self.pad_id, self.device = tokenize, pad_id, device
        self.batch_size, self.shuffle_buffer, self.seed = batch_size, shuffle_buffer, seed

    def batches(self, shard, epoch: int, skip: int) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        raw = shard.iter_batches(batch_size=self.batch_size, batch_format="numpy", drop_last=True,
                                 local_shuffle_buffer_size=self.shuffle_buffer,
                                 local_shuffle_seed=self.seed * 100_003 + epoch)
        kept = itertools.islice(enumerate(raw), skip, None)
        # One micro-batch ahead: the next one is tokenized (the Rust tokenizer releases the GIL) and padded
        # while the caller trains on this one.
        with ThreadPoolExecutor(1, thread_name_prefix="pair-batches") as pool:
            ahead = None
            for i, batch in kept:
                ready, ahead = ahead, (i, pool.submit(self._padded, batch))
                if ready is not None:
                    yield ready[0], ready[1].result()
            if ahead is not None:
                yield ahead[0], ahead[1].result()

    def _padded(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        padded = collate(self.tokenize(batch), self.pad_id)
        return {k: v.to(self.device, non_blocking=True) for k, v in padded.items()}


def collate(batch: dict[str, np.ndarray], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad to the longest row of this batch: input_ids with pad_id (and a 0 mask), labels with -100."""
    input_ids, attention_mask = pad_ids(list(batch["input_ids"]), pad_id)
    labels, _ = pad_ids(list(batch["labels"]), -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
