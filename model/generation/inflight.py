"""In-flight batching: a fixed table of article places that, as articles finish, take the next ones at once.

The calls loop (loop.run over `batches`) runs each batch until its slowest article is done, so the
batch thins out as articles finish. Here the articles wait in a queue, longest first; the places are sized
once by the token budget for the longest, and whenever articles finish their places are refilled with the
next ones: the newcomers are encoded together, their cross-attention keys/values written into the freed
rows of the memory buffers, and their search state reset (a ragged search: each article has its own
length, position and rules state; the self-attention cache needs no reset, as each row attends only up to
its own position). Once the queue is empty the table shrinks as in the calls loop.

Buffers keep their addresses and row counts while refilling, so a compiled step (CUDA graphs) is not
captured again per refill. Under the CPU policy, each step attends only over the widest input held at that
moment, and the self-attention cache is an OrderedCache: runs of rows of about the same age, each over
its own window (under the GPU policy every row reads the whole cache, masked).
"""

from __future__ import annotations

import numpy as np
import torch

from .cross_kv import CrossKVBuffers
from .decode_policy import DecodePolicy, bucket
from .decode_steps import DecodeStep, Seq2Seq
from .logits_rules import article_ids
from .loop import compact
from .ordered_cache import OrderedCache
from .search import Results
from .settings import Plan
from .stats import DecodeStats


class Queue:
    """Input rows waiting for a place, longest first."""

    def __init__(self, lengths: np.ndarray):
        self.lengths = lengths
        self.order = np.argsort(-lengths, kind="stable")
        self.next = 0

    def __len__(self) -> int:
        return len(self.order) - self.next

    def take(self, count: int) -> np.ndarray:
        rows = self.order[self.next:self.next + count]
        self.next += len(rows)
        return rows


def places_for(widest: int, group: int, max_length: int, articles: int, budget: int | None,
               max_articles: int | None, row_buckets: bool) -> int:
    """Article places within the budget of input tokens x decoder rows (the self-attention cache's length
    counted where it is the longer), sized for the longest article; at least one. Under row buckets a power
    of two, so that no padding place is ever filled past the budget."""
    fit = articles if budget is None else max(1, min(articles, budget // (max(widest, max_length) * group)))
    fit = fit if max_articles is None else min(fit, max_articles)
    return 1 << (fit.bit_length() - 1) if row_buckets and fit < articles else fit


def table_places(p: Plan, policy: DecodePolicy, lengths: np.ndarray, budget: int | None,
                 max_articles: int | None) -> int:
    """The article places of the table that decodes inputs of these lengths."""
    return places_for(max(int(lengths.max()), 1), p.rows_per_article, p.rules.max_length, len(lengths), budget,
                      max_articles, policy.row_buckets)


def run_inflight(model: Seq2Seq, search_type, p: Plan, policy: DecodePolicy, step: DecodeStep,
                 input_ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor | None, budget: int | None,
                 max_articles: int | None, results: Results, generator: torch.Generator | None = None,
                 stats: DecodeStats | None = None) -> None:
    """Every input row decoded through the in-flight table, its result written into results (by input row).

    search_type is BeamSearch or GreedySearch; step must take a position tensor (static_decode_step,
    compiled_decode_step)."""
    device = input_ids.device
    lengths = mask.sum(1).cpu().numpy()
    queue = Queue(lengths)
    m = p.rules.max_length
    group = p.rows_per_article
    widest = max(int(lengths.max()), 1)
    places = table_places(p, policy, lengths, budget, max_articles)
    rows = bucket(places) if policy.row_buckets else places
    trim = not policy.row_buckets  # CUDA graphs want the shapes they captured

    first = queue.take(places)
    at = torch.from_numpy(first).to(device)
    first_mask = mask[at, :widest]
    kv = model.memory_kv(model.encode(input_ids[at, :widest], first_mask,
                                      None if types is None else types[at, :widest]))
    memory = CrossKVBuffers(kv, first_mask.bool()[:, None, None, :], rows)
    if trim:  # half again the table's blocks (CPU memory): room for the blocks in use to drift as holes close
        blocks = rows + rows // 2 + 1
        cache = OrderedCache(model.new_cache(blocks * group, m), rows, blocks, group)
    else:
        cache = model.new_cache(rows * group, m)
    search = search_type(p, policy, 0, rows, device, generator, ragged=True)
    if p.rules.reads_encoder:
        search.articles = article_ids(input_ids, mask)
    search.start(torch.arange(places, device=device), at)
    began = np.zeros(rows, dtype=np.int64)  # the step after which each place's article began
    extent = np.ones(rows, dtype=np.int64)  # its input width
    extent[:places] = lengths[first]

    cur = 0
    while True:
        cur += 1
        n = search.done.shape[0]
        ages = np.minimum(m, cur - began[:n])  # the positions each place's rows hold after this step
        length = int(ages.max())
        width = int(extent[:n].max()) if trim else memory.kv[0][0].shape[2]
        if trim:
            cache.prepare(ages)
        if stats is not None:
            stats.count(search)
            window = sum((b - a) // group * w for a, b, w in cache.runs) if trim else n * m
            stats.read(window, int(ages.sum()), n * width, int(extent[:n].sum()))
        tokens, pos, g = search.inputs(cur)
        if trim:
            kv_view, mask_view = memory.view(width)
            logits = step(tokens, kv_view, mask_view, cache, pos, g)
        else:
            logits = step(tokens, memory.kv, memory.mask, cache, pos, g)
        search.advance(cur, logits)
        if cur % policy.check_every == 0:
            done = search.done.cpu().numpy()
            if done.all() and not len(queue):
                break
            free = np.flatnonzero(done)
            if len(free) and len(queue):
                results.emit(search, search.done)
                search.slot[search.done] = -1
                newcomers = queue.take(len(free))
                at = free[:len(newcomers)]
                refill(model, memory, search, input_ids, mask, types, torch.from_numpy(at).to(device),
                       torch.from_numpy(newcomers).to(device))
                began[at], extent[at] = cur, lengths[newcomers]
                if trim:
                    cache.refill(at)
            if not len(queue):
                live = compact(search, memory, cache, policy, length, length, results)  # reorders the cache too
                if live is not None:
                    kept = live.cpu().numpy()
                    began[:len(kept)], extent[:len(kept)] = began[kept], extent[kept]
                    began[len(kept):], extent[len(kept):] = cur, 1
                    continue
        sources = search.cache_sources(length, None)
        if sources is not None:
            cache.reorder(sources[0], length, *sources[1:])
    results.emit(search)


def refill(model: Seq2Seq, memory: CrossKVBuffers, search, input_ids: torch.Tensor, mask: torch.Tensor,
           types: torch.Tensor | None, places: torch.Tensor, rows: torch.Tensor) -> None:
    """Input rows `rows` encoded together and started at `places`."""
    part_mask = mask[rows]
    used = part_mask.any(0).nonzero()
    width = int(used.max()) + 1 if used.numel() else 1
    part_mask = part_mask[:, :width]
    part_types = None if types is None else types[rows, :width]
    kv = model.memory_kv(model.encode(input_ids[rows, :width], part_mask, part_types))
    memory.write(places, kv, part_mask.bool()[:, None, None, :])
    search.start(places, rows)
