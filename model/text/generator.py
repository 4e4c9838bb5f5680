"""Generation over many texts' token ids: what a replica, the pipeline() one-liner and the command line share.

Two ways to batch (`BATCHING`): "calls" sorts rows by length and cuts them into generate calls by row count
and token budget (`batches`), each run to its slowest article; "inflight" runs all rows in one generate
call whose table of article places is refilled as articles finish (model/generation/inflight.py). "auto" is in-flight
under the CPU decode policy (1.03x the calls' articles/s on workload (d), docs/benchmarks.md) and calls under
the GPU policy (a GPU, or a compiled step), where calls measured faster on a CPU (in-flight keeps every row's
cross-attention at the widest article's width) and no GPU has measured the two yet. A call that runs out of
device memory is split in half and retried, down to one row, and a row that does not fit alone gets a
per-row error instead of failing the others. Results come back in input order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from ..architecture import EncoderDecoderModel
from ..config import EncoderDecoderConfig
from ..generation import (
    DEFAULT_BATCH_TOKENS,
    GPU,
    DecodeStats,
    DecodeStep,
    batches,
    check_caps,
    check_generation,
    policy_for,
    table_places,
    too_long,
)
from ..tokenization import DECODER_TOKENIZER, Tokenizer, pad_ids

log = logging.getLogger(__name__)

ERR_OOM = "out of device memory even alone"
BATCHING = ("auto", "inflight", "calls")


class Generated(NamedTuple):
    text: str | None
    tokens: int | None  # the output's length in tokens, special tokens excluded
    error: str | None
    score: float | None = None  # beams: the length-penalised beam score; greedy, sampling: mean token log-prob


def check_vocabularies(config: EncoderDecoderConfig, tokenizer: Tokenizer, decoder_tokenizer: Tokenizer) -> None:
    """ValueError unless the tokenizers fit the model: the inputs' ids within the encoder's embeddings, and the
    outputs decoded with a tokenizer of the decoder's vocabulary (two vocabularies need two tokenizers)."""
    encoder, decoder = config.encoder.vocab_size, config.decoder.vocab_size
    if len(tokenizer) > encoder:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens, more than the encoder's vocabulary of "
                         f"{encoder}: its ids would index past the embeddings")
    if decoder_tokenizer is tokenizer and decoder != encoder:
        raise ValueError(f"the decoder's vocabulary ({decoder} tokens) is not the encoder's ({encoder}) and only "
                         "one tokenizer was found: save the decoder's tokenizer in the model folder's "
                         f"{DECODER_TOKENIZER}/ or pass a decoder tokenizer")
    if len(decoder_tokenizer) > decoder:
        raise ValueError(f"the decoder tokenizer has {len(decoder_tokenizer)} tokens, more than the decoder's "
                         f"vocabulary of {decoder}: it is not the decoder's")


class TextGenerator:
    """`generator(rows)`: `sequences` Generated per row of token ids (num_return_sequences, best first; rows
    one after the other, as generate's [B * num_return_sequences] output), with the model's generate and the
    settings given (transformers' names, over the checkpoint's generation config). Outputs are decoded with
    decoder_tokenizer (the decoder's vocabulary), by default `tokenizer`. batching is one of BATCHING;
    batch_size caps the articles decoded together either way. Counts its generate calls, their seconds and
    its out-of-memory splits; on_call(seconds) is told of each call; stats, if given, counts decode steps and
    row-steps."""

    def __init__(self, model: EncoderDecoderModel, tokenizer: Tokenizer, generation: dict[str, Any] | None = None,
                 batch_size: int = 256, max_batch_tokens: int | None = DEFAULT_BATCH_TOKENS,
                 step: DecodeStep | None = None, policy: str | None = None,
                 on_call: Callable[[float], None] | None = None, decoder_tokenizer: Tokenizer | None = None,
                 batching: str = "auto", stats: DecodeStats | None = None):
        if batching not in BATCHING:
            raise ValueError(f"batching must be one of {BATCHING}, got {batching!r}")
        check_caps(max_batch_tokens=max_batch_tokens, batch_size=batch_size)
        self.model, self.tokenizer = model, tokenizer
        self.decoder_tokenizer = decoder_tokenizer or tokenizer  # decodes the outputs: the decoder's vocabulary
        check_vocabularies(model.config, tokenizer, self.decoder_tokenizer)
        self.generation = dict(generation or {})
        # every setting checked before any work, as generate would check it
        settings = {k: v for k, v in self.generation.items() if k != "seed"}  # seed: generate's, not a setting
        self.plan = check_generation(model.config, model.generation_config.updated(**settings))
        self.sequences = self.plan.num_return_sequences
        self.batch_size, self.max_batch_tokens = batch_size, max_batch_tokens
        self.step, self.policy, self.on_call, self.stats = step, policy, on_call, stats
        self.decode_policy = policy_for(model.device, policy)
        self.inflight = batching == "inflight" or (batching == "auto" and self.decode_policy != GPU)
        self.special = torch.tensor(sorted(self.decoder_tokenizer.all_special_ids), device=model.device)
        self.eos = torch.tensor(self.plan.rules.eos, dtype=torch.long, device=model.device)
        self.calls, self.generate_s, self.oom_splits = 0, 0.0, 0

    def __call__(self, rows: Sequence[Sequence[int]]) -> list[Generated]:
        g = self.sequences
        out: list[Generated | None] = [None] * (len(rows) * g)
        good = []
        for i, row in enumerate(rows):
            error = "no input tokens" if not len(row) else too_long(self.model.config, len(row))
            if error:
                out[i * g:(i + 1) * g] = [Generated(None, None, error)] * g
            else:
                good.append(i)
        if not good:
            return out
        good = np.asarray(good)
        if self.inflight:  # one call: the table of places refills itself from all the rows
            parts = [good]
        else:
            parts = [good[part] for part in batches([len(rows[i]) for i in good], self.plan.rows_per_article,
                                                    self.max_batch_tokens, self.batch_size)]
        for part in parts:
            results = self.generate_or_split([rows[i] for i in part], self.batch_size)
            for n, i in enumerate(part):
                out[i * g:(i + 1) * g] = results[n * g:(n + 1) * g]
        return out

    @torch.inference_mode()
    def generate(self, rows: Sequence[Sequence[int]], places: int | None = None
                 ) -> tuple[list[str], list[int], list[float]]:
        """One generate call: the decoded outputs, their lengths in tokens and their scores (mean_scores). In
        flight, `places` caps the table's article places (default batch_size)."""
        tokens, mask = pad_ids(rows, self.tokenizer.pad_token_id)
        device = self.model.device
        start = time.perf_counter()
        try:
            # calls: the rows are one batch already; in flight: the budget and the places size the table
            budget, articles = (self.max_batch_tokens, places or self.batch_size) if self.inflight else (None, None)
            out = self.model.generate(tokens.to(device), mask.to(device), max_batch_tokens=budget,
                                      max_batch_articles=articles, step=self.step, policy=self.policy,
                                      inflight=self.inflight, stats=self.stats, return_scores=True,
                                      **self.generation)
            out, scores = out
            counts = (~torch.isin(out, self.special)).sum(dim=1).tolist()
            if self.plan.num_beams == 1:  # generate's sum over the generated tokens: their mean
                scores = scores / generated_tokens(out, self.eos, self.plan.fill)
        finally:
            seconds = time.perf_counter() - start
            self.generate_s += seconds
            self.calls += 1
            if self.on_call:
                self.on_call(seconds)
        return self.decoder_tokenizer.batch_decode(out, skip_special_tokens=True), counts, scores.tolist()

    def table_places(self, rows: Sequence[Sequence[int]], places: int) -> int:
        """The article places of the in-flight table that decodes these rows under a cap of `places`."""
        lengths = np.array([len(r) for r in rows])
        return table_places(self.plan, self.decode_policy, lengths, self.max_batch_tokens, places)

    def generate_or_split(self, rows: Sequence[Sequence[int]], places: int | None = None) -> list[Generated]:
        """One call for the rows; out of device memory, each half is tried on its own (in flight, with a table
        of half the places that failed)."""
        places = places or self.batch_size
        try:
            texts, counts, scores = self.generate(rows, places)
            return [Generated(t, c, None, s) for t, c, s in zip(texts, counts, scores, strict=True)]
        except (RuntimeError, MemoryError) as e:  # torch.OutOfMemoryError is a RuntimeError
            if not out_of_memory(e):
                raise
            reason = str(e).splitlines()[0]
        # Retried only here, outside the except block: inside it the traceback keeps the failed call's frames,
        # and with them its cache and activations, alive, so nothing could be freed for the halves.
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if len(rows) == 1:
            log.warning("one input of %d tokens does not fit alone: %s", len(rows[0]), reason)
            return [Generated(None, None, ERR_OOM)] * self.sequences
        self.oom_splits += 1
        if self.inflight:
            places = max(1, self.table_places(rows, places) // 2)
        half = len(rows) // 2
        return self.generate_or_split(rows[:half], places) + self.generate_or_split(rows[half:], places)


def generated_tokens(out: torch.Tensor, eos: torch.Tensor, fill: int) -> torch.Tensor:
    """[N] tokens each row of generate's [N, T] output generated: the decoder start token excluded, the first
    EOS included (what greedy search and sampling sum log-probs over); a row without EOS (max_length, or a
    stopping criterion) up to its last token that is not the fill."""
    tail = out[:, 1:]
    at = torch.arange(1, out.shape[1], device=out.device).expand_as(tail)
    first_eos = torch.where(torch.isin(tail, eos), at, out.shape[1]).min(dim=1).values
    last = torch.where(tail != fill, at, 0).max(dim=1).values
    return torch.where(first_eos < out.shape[1], first_eos, last).clamp(min=1)


ALLOC_FAILED = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED",
                "can't allocate memory", "std::bad_alloc")


def out_of_memory(error: BaseException) -> bool:
    """Whether an error is a failed allocation: torch's out-of-memory error, or one that cuBLAS, cuDNN or the
    CPU allocator report as a plain RuntimeError (then only their message tells)."""
    if isinstance(error, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    return isinstance(error, RuntimeError) and any(s in str(error) for s in ALLOC_FAILED)
