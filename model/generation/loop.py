"""The decode loop that greedy search and beam search share: step, check, emit finished articles, compact.

A search keeps [n] articles of state (plus n * group decoder rows in the cache) and knows how to advance
them by one token; this loop decides, by policy, when finished articles leave the batch and where their
results go.
"""

from __future__ import annotations

import torch

from .cross_kv import CrossKVBuffers
from .decode_policy import DecodePolicy, bucket
from .decode_steps import DecodeStep
from .kv_cache import KVCache
from .search import Results, Search
from .stats import DecodeStats


def compact(search: Search, memory: CrossKVBuffers, cache: KVCache, policy: DecodePolicy, cur: int, length: int,
            results: Results) -> torch.Tensor | None:
    """Emit the done articles and move the live ones to the first rows (a power-of-two count under row
    buckets), reordering the cache for this step's choices over its first `length` positions. Returns the
    articles kept, in their new order, or None when the rows stay as they are (the cache not reordered)."""
    n = search.done.shape[0]
    live_count = n - int(search.done.sum())
    rows = bucket(live_count) if policy.row_buckets else live_count
    if live_count == 0 or rows >= n:
        return None
    results.emit(search, search.done)
    live = (~search.done).nonzero()[:, 0]
    fill = torch.arange(rows - live_count, device=live.device)  # padding: any rows, marked below
    sources = search.cache_sources(cur, live)
    search.take(torch.cat((live, fill)))
    search.done[live_count:], search.slot[live_count:] = True, -1
    memory.keep(live, rows, policy.move_chunk)
    if sources is not None:  # the padding rows after the live ones keep stale (finite) values
        kept = live_count * search.group
        src, shared, ends = (None if t is None else t[:kept] for t in sources)
        cache.reorder(src, length, shared, ends)
    return live


def run(search: Search, memory: CrossKVBuffers, cache: KVCache, step: DecodeStep, policy: DecodePolicy,
        max_length: int, results: Results, stats: DecodeStats | None = None) -> None:
    """Decode until every article is done or max_length is reached, writing into results."""
    for cur in range(1, max_length):
        if stats is not None:
            stats.count(search)
            n, width = search.done.shape[0], memory.kv[0][0].shape[2]
            own = n * width if memory.mask is None else int(memory.mask.sum())
            stats.read(n * cur, n * cur, n * width, own)  # every article began at step 1
        tokens, pos, group = search.inputs(cur)
        search.advance(cur, step(tokens, memory.kv, memory.mask, cache, pos, group))
        if cur + 1 >= max_length:
            break
        if cur % policy.check_every == 0:
            if bool(search.done.all()):
                break
            if compact(search, memory, cache, policy, cur, cur, results) is not None:
                continue
        sources = search.cache_sources(cur, None)
        if sources is not None:
            cache.reorder(sources[0], cur, *sources[1:])
    results.emit(search)
