"""What a decode did: steps, row-steps, the live share, attention reads."""

from __future__ import annotations

from dataclasses import dataclass

from .search import Search


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
