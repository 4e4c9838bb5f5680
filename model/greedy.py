"""Greedy search and sampling: one decoder row per returned sequence (G per article)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .beam_search import shared_prefix
from .decode_policy import DecodePolicy
from .logits import process
from .plan import Plan
from .select import first_argmax


class GreedySearch:
    def __init__(self, p: Plan, policy: DecodePolicy, articles: int, rows: int, device: torch.device,
                 generator: torch.Generator | None = None):
        g, m = p.num_return_sequences, p.rules.max_length
        self.p, self.group, self.m, self.generator = p, g, m, generator
        self.eos = torch.tensor(p.rules.eos, device=device, dtype=torch.long)
        self.argmax = first_argmax if policy.blocked_topk else (lambda scores: scores.argmax(-1))
        self.shared_prefix = policy.shared_prefix_reorder
        self.seq = torch.full((rows, g, m), p.fill, dtype=torch.long, device=device)
        self.seq[:, :, 0] = p.start
        self.score = torch.zeros(rows, g, device=device)  # sum of the chosen tokens' processed log-probs
        self.length = torch.full((rows, g), m, dtype=torch.long, device=device)
        self.running = torch.ones(rows, g, dtype=torch.bool, device=device)
        self.slot = torch.arange(rows, device=device).masked_fill_(torch.arange(rows, device=device) >= articles, -1)
        self.done = self.slot < 0
        self.running &= ~self.done[:, None]

    def inputs(self, cur: int) -> tuple[torch.Tensor, int, int]:
        return self.seq[:, :, cur - 1].reshape(-1, 1), cur - 1, self.group

    def advance(self, cur: int, logits: torch.Tensor) -> None:
        """Finished rows write the fill token and keep their score and length: they need no masking."""
        n, g, r = self.seq.shape[0], self.group, self.p.rules
        scores = process(self.seq[:, :, :cur].reshape(n * g, cur), logits, r)  # raw logits, as transformers does
        if r.do_sample:
            tok = torch.multinomial(scores.softmax(-1), 1, generator=self.generator)[:, 0]
        else:
            tok = self.argmax(scores)
        tok = tok.view(n, g)
        if self.p.scores:
            logp = F.log_softmax(scores, -1).gather(1, tok.view(-1, 1)).view(n, g)
            self.score += torch.where(self.running, logp, 0.0)
        self.seq[:, :, cur] = torch.where(self.running, tok, self.p.fill)
        ended = self.running & torch.isin(tok, self.eos)
        self.length = torch.where(ended, cur + 1, self.length)
        self.running = self.running & ~ended
        self.done = self.done | ~self.running.any(-1) | (cur + 1 >= self.m)

    def cache_sources(self, cur: int, live: torch.Tensor | None):
        if live is None:
            return None  # rows never change places while every article runs
        g = self.group
        src = (live[:, None] * g + torch.arange(g, device=live.device)).flatten()
        if not self.shared_prefix:
            return src, None
        return src, shared_prefix(self.seq.view(-1, self.m)[:, :cur], src, g)

    def take(self, rows: torch.Tensor) -> None:
        for name in ("seq", "score", "length", "running", "done", "slot"):
            setattr(self, name, getattr(self, name)[rows])

    def results(self) -> tuple[torch.Tensor, ...]:
        return self.seq, self.score, self.length
