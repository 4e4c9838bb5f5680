"""What a search is to the loop (`Search`: the state of [n] articles), and where finished articles' results go
(`Results`)."""

from __future__ import annotations

from typing import Protocol

import torch


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


def column(x: bool | torch.Tensor) -> bool | torch.Tensor:
    """A per-article [n] value as an [n, 1] column against [n, k] ones; a bool as it is."""
    return x[:, None] if isinstance(x, torch.Tensor) else x
