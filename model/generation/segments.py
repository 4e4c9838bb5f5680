"""Self-attention over a cache whose rows hold different lengths (in-flight batching): runs of rows, each over its
own window."""

from __future__ import annotations

from collections.abc import Callable

import torch


class Segments:
    """Self-attention of one token per row over a cache whose rows hold different lengths (in-flight batching):
    the rows are taken in `order` (the cache's row order), cut into runs that each attend over their own
    window, and put back. runs: (first row, end row, window) in that order; masks: each run's additive mask
    [rows, 1, 1, window] (0 up to the row's position, -inf after)."""

    def __init__(self, order: torch.Tensor, runs: list[tuple[int, int, int]], masks: list[torch.Tensor]):
        self.order, self.runs, self.masks = order, runs, masks
        self.restore = torch.empty_like(order)
        self.restore[order] = torch.arange(order.shape[0], device=order.device)

    def attend(self, context: Callable, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [N, 1, C] in the step's row order; k, v [N, H, S, D] in the cache's. Attention.context per run."""
        q = q.index_select(0, self.order)
        out = [context(q[a:b], k[a:b, :, :w], v[a:b, :, :w], mask)
               for (a, b, w), mask in zip(self.runs, self.masks, strict=True)]
        return torch.cat(out).index_select(0, self.restore)
