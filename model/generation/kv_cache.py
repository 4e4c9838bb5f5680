"""The decoder's self-attention cache: preallocated keys and values, written by position, reordered for beams."""

from __future__ import annotations

from collections.abc import Callable

import torch


class KVCache:
    """Preallocated self-attention keys/values of every decoder layer: [L, N, H, S, D], written by position.

    Writes go to the first rows (as many as the new keys have). `reorder` moves beams in place; given how
    much of each row's prefix is already right, it copies only from where the new prefix differs: the beams
    of one article mostly share a long prefix, so beam search copies a small part of the cache per step.
    """

    def __init__(self, layers: int, rows: int, heads: int, max_len: int, head_dim: int, dtype, device):
        shape = (layers, rows, heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    def at(self, pos: int) -> CacheWrite:
        """Writes at positions pos.. that return the keys/values up to the last one written."""
        def write(layer: int, k: torch.Tensor, v: torch.Tensor):
            n, end = k.shape[0], pos + k.shape[2]
            self.k[layer, :n, :, pos:end] = k
            self.v[layer, :n, :, pos:end] = v
            return self.k[layer, :n, :, :end], self.v[layer, :n, :, :end]
        return write

    def at_position(self, position: torch.Tensor) -> CacheWrite:
        """Writes of one token per row at a position tensor, [1] (every row) or [N] (each row its own), that
        return the whole cache, whatever the position: fixed shapes for CUDA graphs and torch.compile; the
        caller masks the positions after it."""
        def write(layer: int, k: torch.Tensor, v: torch.Tensor):
            n = k.shape[0]
            if position.shape[0] == 1:
                self.k[layer, :n].index_copy_(2, position, k)
                self.v[layer, :n].index_copy_(2, position, v)
            else:
                at = position[:, None, None, None].expand_as(k)
                self.k[layer, :n].scatter_(2, at, k)
                self.v[layer, :n].scatter_(2, at, v)
            return self.k[layer, :n], self.v[layer, :n]
        return write

    def self_mask(self, position: torch.Tensor) -> torch.Tensor:
        """What rows at `position` ([1] or [N]) attend to over the whole cache: [N or 1, 1, 1, S] bool."""
        return (torch.arange(self.k.shape[3], device=position.device) <= position[:, None])[:, None, None, :]

    def reorder(self, rows: torch.Tensor, length: int, shared: torch.Tensor | None = None,
                ends: torch.Tensor | None = None) -> None:
        """New row i takes old row rows[i] (positions < length); rows may be fewer than before.

        shared[i] counts the leading positions that row i already holds equal to rows[i]'s; those are not
        copied, at the price of reading the counts on the host. Without it all positions are copied and
        nothing waits for the device. ends[i] (with shared: rows of different lengths, in-flight batching)
        is where row i's positions end: each row is copied from shared[i] to ends[i] only.
        """
        need = torch.arange(rows.shape[0], device=rows.device)
        first = 0
        if shared is not None:
            need = need[shared < (length if ends is None else ends.clamp(max=length))]
            if need.numel() == 0:
                return
            if ends is not None:
                return self.reorder_ranges(rows[need], need, shared[need], ends[need].clamp(max=length))
            first = int(shared[need].min())
        for buf in (self.k, self.v):
            for layer in buf:  # layer by layer: index_select over dim 1 of the 5-d view is 7x slower on a CPU
                part = layer[:, :, first:length]
                part.index_copy_(0, need, part.index_select(0, rows[need]))  # sources are read before any write

    def reorder_ranges(self, src: torch.Tensor, dst: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> None:
        """Row dst[i] takes row src[i]'s positions start[i]..end[i] - 1: one gather and one scatter of exactly
        those positions."""
        count = end - start
        row = torch.repeat_interleave(torch.arange(count.shape[0], device=count.device), count)
        pos = start[row] + torch.arange(row.shape[0], device=row.device) - (count.cumsum(0) - count)[row]
        for buf in (self.k, self.v):
            buf[:, dst[row], :, pos] = buf[:, src[row], :, pos]  # the right side is read whole before any write


CacheWrite = Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def shared_prefix(tokens: torch.Tensor, rows: torch.Tensor, group: int) -> torch.Tensor:
    """For KVCache.reorder: leading positions equal between old row rows[i] and old row i (tokens [R, t]).

    Equal tokens of the same article give equal keys/values; rows of different articles share nothing.
    """
    dst = torch.arange(rows.shape[0], device=rows.device)
    same = (tokens[rows] == tokens[: rows.shape[0]]).cumprod(1).sum(1)
    return torch.where(rows // group == dst // group, same, 0)
