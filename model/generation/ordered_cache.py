"""The in-flight table's self-attention cache under the CPU policy: articles kept in the order they began, so
that runs of rows of about the same age attend over windows of their own (segments.py).

In the table's own order (article places, refilled wherever an article finishes) the rows of one step hold
every age from 1 to the oldest article's, and one window as long as the oldest would read 2.4x the positions
the rows hold (workload (d)). Here each article has a block of `group` cache rows; the blocks in use are
contiguous and ordered by the step their article began, so ages fall along the blocks and a few runs cut
where ages drop (`runs`) read close to what the rows hold. Finished articles leave holes that are closed by
moving the cheaper side's blocks (only the positions they hold); newcomers take the blocks after the youngest.
"""

from __future__ import annotations

import numpy as np
import torch

from .kv_cache import CacheWrite, KVCache
from .segments import Segments

# A run's fixed cost (its matmuls, softmax, slicing) in the row-positions of keys and values it could read
# instead: about 50 us per layer against 0.24 us per row-position on a 2-core Xeon.
RUN_COST = 200


def runs(ages: np.ndarray, group: int, cost: int = RUN_COST) -> list[tuple[int, int, int]]:
    """Cuts of blocks whose ages do not rise (oldest first) into runs (first row, end row, window) that
    minimise the positions read plus `cost` per run (an exact search: a run's window is its first age)."""
    n = len(ages)
    best = np.full(n + 1, np.inf)
    best[0] = 0
    cut = np.zeros(n + 1, dtype=np.int64)
    for end in range(1, n + 1):
        first = np.arange(end)
        total = best[:end] + (end - first) * group * ages[:end] + cost
        cut[end] = int(total.argmin())
        best[end] = total[cut[end]]
    out, end = [], n
    while end > 0:
        start = int(cut[end])
        out.append((start * group, end * group, int(ages[start:end].max())))
        end = start
    return out[::-1]


class OrderedCache:
    """A KVCache of `blocks` article blocks (of `group` rows) behind the table's places; `block[p]` is place p's.

    The loop calls `prepare(ages)` before each step, `refill(places)` when places take new articles; the
    step writes through `at_position` and attends through `self_mask`'s Segments; `reorder` takes the
    search's cache sources (and, with fewer rows, a compaction of the places)."""

    def __init__(self, cache: KVCache, places: int, blocks: int, group: int):
        self.cache, self.group, self.blocks = cache, group, blocks
        self.k, self.v = cache.k, cache.v
        self.block = np.arange(places)  # place -> block, contiguous from block 0 in the order they began
        self.ages = np.zeros(places, dtype=np.int64)
        self.runs: list[tuple[int, int, int]] = []  # this step's, from prepare
        self.rows = torch.arange(places * group, device=cache.k.device)  # step row -> cache row
        self.order = self.rows  # cache row (from the first block in use) -> step row

    def prepare(self, ages: np.ndarray) -> None:
        """The positions each place's rows hold once this step is written (its length window)."""
        self.ages = ages
        by_block = np.argsort(self.block, kind="stable")
        self.runs = runs(ages[by_block], self.group)

    def self_mask(self, position: torch.Tensor) -> Segments:
        at = position.index_select(0, self.order)
        masks = [torch.zeros(b - a, 1, 1, w, dtype=self.k.dtype, device=at.device).masked_fill_(
            (torch.arange(w, device=at.device) > at[a:b, None])[:, None, None, :], -torch.inf) for a, b, w in self.runs]
        return Segments(self.order, self.runs, masks)

    def at_position(self, position: torch.Tensor) -> CacheWrite:
        first, end = self.span()
        ordered = position.index_select(0, self.order)

        def write(layer: int, k: torch.Tensor, v: torch.Tensor):
            at = ordered[:, None, None, None].expand(-1, k.shape[1], 1, k.shape[3])
            keys, values = self.k[layer, first:end], self.v[layer, first:end]
            keys.scatter_(2, at, k.index_select(0, self.order))
            values.scatter_(2, at, v.index_select(0, self.order))
            return keys, values
        return write

    def span(self) -> tuple[int, int]:
        """The cache rows in use."""
        first = int(self.block.min()) * self.group
        return first, first + len(self.block) * self.group

    def refill(self, places: np.ndarray) -> None:
        """New articles begin at `places` (their old ones are done)."""
        keep = np.arange(len(self.block))
        keep[places] = -1
        self.relayout(keep)

    def relayout(self, keep: np.ndarray) -> None:
        """Places renumbered: new place i continues old place keep[i] (-1: a new article). Survivors keep their
        order and close up, moving the side that holds fewer positions; new articles go after them."""
        g, old = self.group, keep[keep >= 0]
        ranked = old[np.argsort(self.block[old], kind="stable")]  # survivors, oldest first
        at = self.block[ranked]
        held = self.ages[ranked]
        newcomers = int((keep < 0).sum())
        starts = np.unique(np.concatenate(([0], at - np.arange(len(at)))))
        starts = starts[(starts >= 0) & (starts + len(keep) <= self.blocks)]
        moved = [int(held[at != s + np.arange(len(at))].sum()) for s in starts]
        first = int(starts[int(np.argmin(moved))])
        target = first + np.arange(len(at))
        # Block by block, as slices (index_select over a row index is several times slower on a CPU): those
        # moving down in rising order and those moving up in falling order, so no source is written first.
        down, up = np.flatnonzero(target < at), np.flatnonzero(target > at)[::-1]
        for j in np.concatenate((down, up)):
            a, b, h = at[j] * g, target[j] * g, held[j]
            for buf in (self.k, self.v):
                buf[:, b:b + g, :, :h] = buf[:, a:a + g, :, :h]
        block = np.empty(len(keep), dtype=np.int64)
        position = {int(p): int(b) for p, b in zip(ranked, target, strict=True)}
        block[keep >= 0] = [position[int(p)] for p in keep[keep >= 0]]
        block[keep < 0] = first + len(at) + np.arange(newcomers)
        self.ages = np.where(keep >= 0, self.ages[np.maximum(keep, 0)], 0)
        self.block = block
        rows = (block[:, None] * g + np.arange(g)).ravel()
        self.rows = torch.from_numpy(rows).to(self.k.device)
        self.order = torch.from_numpy(np.argsort(rows, kind="stable")).to(self.k.device)

    def reorder(self, rows: torch.Tensor, length: int, shared: torch.Tensor | None = None,
                ends: torch.Tensor | None = None) -> None:
        """KVCache.reorder in the table's row numbering: new row i takes old row rows[i]. Fewer rows than before
        compact the places (each new article continues one old one, the block moving with it)."""
        g = self.group
        if rows.shape[0] != len(self.block) * g:
            self.relayout(rows[::g].cpu().numpy() // g)
        base = self.rows[::g].repeat_interleave(g)  # each new row's block, in cache rows
        src, dst = base + rows % g, base + torch.arange(rows.shape[0], device=rows.device) % g
        if shared is None:
            need = src != dst
            src, dst = src[need], dst[need]
            end = torch.from_numpy(np.repeat(self.ages, g)).to(rows.device)[need].clamp(max=length)
            self.cache.reorder_ranges(src, dst, torch.zeros_like(end), end)
            return
        end = ends.clamp(max=length) if ends is not None else torch.full_like(shared, length)
        need = shared < end
        if bool(need.any()):
            self.cache.reorder_ranges(src[need], dst[need], shared[need], end[need])
