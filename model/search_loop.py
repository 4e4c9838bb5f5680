"""The decode loop that greedy search and beam search share: step, check, emit finished articles, compact.

A search keeps [n] articles of state (plus n * group decoder rows in the cache) and knows how to advance
them by one token; this loop decides, by policy, when finished articles leave the batch and where their
results go.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from .decode_policy import DecodePolicy, bucket
from .layers import KVCache
from .steps import DecodeStep, MemoryKV


def move_rows_(t: torch.Tensor, live: torch.Tensor, chunk: int | None) -> None:
    """Rows live[i] of t move to row i, in place; live is increasing, so live[i] >= i and a row is read before
    any chunk writes over it. chunk bounds the temporary copy (None: one copy of all live rows)."""
    step = live.shape[0] if chunk is None else chunk
    for start in range(0, live.shape[0], max(step, 1)):
        idx = live[start:start + step]
        t[start:start + idx.shape[0]] = t.index_select(0, idx)


class Memory:
    """The per-article cross-attention keys/values and padding mask ([n, ...] rows of buffers allocated
    once per batch: compaction moves rows within them, so the addresses a CUDA graph captured stay valid)."""

    def __init__(self, kv: MemoryKV, mask: torch.Tensor | None, rows: int):
        def padded(t: torch.Tensor) -> torch.Tensor:  # extra rows repeat article 0: finite and never emitted
            extra = rows - t.shape[0]
            return t if extra == 0 else torch.cat((t, t[:1].expand(extra, *t.shape[1:])))
        self.kv_buffers = [(padded(k), padded(v)) for k, v in kv]
        self.mask_buffer = padded(mask) if mask is not None else None
        self.kv, self.mask = self.kv_buffers, self.mask_buffer

    def keep(self, live: torch.Tensor, rows: int, chunk: int | None) -> None:
        """Move the articles at `live` to the first rows and keep `rows` rows (the live ones, then padding)."""
        for t in (*(t for kv in self.kv_buffers for t in kv), self.mask_buffer):
            if t is not None:
                move_rows_(t, live, chunk)
        self.kv = [(k[:rows], v[:rows]) for k, v in self.kv_buffers]
        self.mask = None if self.mask_buffer is None else self.mask_buffer[:rows]

    def write(self, places: torch.Tensor, kv: MemoryKV, mask: torch.Tensor) -> None:
        """New articles' keys/values ([f, H, w, D]) and mask ([f, 1, 1, w]) at `places`; w may be narrower than
        the buffers, whose positions past it are masked."""
        w = mask.shape[-1]
        for (k_buf, v_buf), (k, v) in zip(self.kv_buffers, kv, strict=True):
            k_buf[places, :, :w] = k
            v_buf[places, :, :w] = v
        self.mask_buffer[places] = False
        self.mask_buffer[places, :, :, :w] = mask

    def view(self, width: int) -> tuple[MemoryKV, torch.Tensor | None]:
        """The rows in use seen through their first `width` input positions."""
        kv = [(k[:, :, :width], v[:, :, :width]) for k, v in self.kv]
        return kv, None if self.mask is None else self.mask[..., :width]


@dataclass
class DecodeStats:
    """Decode steps, the decoder rows they ran (row-steps) and how many of those held a live article; and the
    attention positions the steps read, per article (self-attention: cache positions, cross-attention: input
    positions), with how many of those were the reading article's own (the rest are masked)."""

    steps: int = 0
    row_steps: int = 0
    live_row_steps: int = 0
    self_read: int = 0
    self_own: int = 0
    cross_read: int = 0
    cross_own: int = 0

    def count(self, search: Search) -> None:
        """The step `search` is about to take (reads its done flags: a host synchronisation, so only when
        asked for)."""
        live = int((~search.done & (search.slot >= 0)).sum())
        self.steps += 1
        self.row_steps += search.done.shape[0] * search.group
        self.live_row_steps += live * search.group

    def read(self, self_read: int, self_own: int, cross_read: int, cross_own: int) -> None:
        """One step's attention reads, summed over its articles: cache positions (self-attention) and input
        positions (cross-attention), and how many of each are the reading article's own."""
        self.self_read += self_read
        self.self_own += self_own
        self.cross_read += cross_read
        self.cross_own += cross_own

    @property
    def live_share(self) -> float:
        return self.live_row_steps / max(self.row_steps, 1)

    @property
    def self_share(self) -> float:
        return self.self_own / max(self.self_read, 1)

    @property
    def cross_share(self) -> float:
        return self.cross_own / max(self.cross_read, 1)


class Search(Protocol):
    """The state of one search over [n] articles; `slot` maps each to its input row (-1: padding)."""

    group: int  # decoder rows per article
    done: torch.Tensor  # [n] bool: this article's result is final
    slot: torch.Tensor  # [n] long

    def inputs(self, cur: int) -> tuple[torch.Tensor, int, int]:
        """Step inputs at length cur: tokens [rows, 1], the position they go to and the rows per article."""

    def advance(self, cur: int, logits: torch.Tensor) -> None:
        """Take step cur's logits [rows, V]: choose tokens, update the state and `done`."""

    def cache_sources(self, cur: int, live: torch.Tensor | None
                      ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None] | None:
        """Old cache row of each new row once `live` articles stay (None: all of them) or None when the cache
        is right as it is, and, for a shared-prefix reorder, the leading positions each new row already holds
        and (ragged) where each new row's positions end."""

    def take(self, rows: torch.Tensor) -> None:
        """Keep the articles at `rows`, in that order."""

    def results(self) -> tuple[torch.Tensor, ...]:
        """Per-article result tensors, [n, ...] each, in the order of `Results`."""


class Results:
    """Sequences [B, G, M], scores [B, G], lengths [B, G] by input row, filled as articles finish."""

    def __init__(self, b: int, g: int, m: int, fill: int, device: torch.device):
        self.tensors = (torch.full((b, g, m), fill, dtype=torch.long, device=device),
                        torch.zeros(b, g, device=device), torch.ones(b, g, dtype=torch.long, device=device))

    def emit(self, search: Search, which: torch.Tensor | None = None) -> None:
        """Write the results of the articles `which` selects ([n] bool; None: all), padding excluded."""
        real = search.slot >= 0 if which is None else which & (search.slot >= 0)
        rows = real.nonzero()[:, 0]
        g = self.tensors[0].shape[1]
        for out, value in zip(self.tensors, search.results(), strict=True):
            out[search.slot[rows]] = value[rows, :g]


def compact(search: Search, memory: Memory, cache: KVCache, policy: DecodePolicy, cur: int, length: int,
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


def run(search: Search, memory: Memory, cache: KVCache, step: DecodeStep, policy: DecodePolicy,
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
