"""Greedy search and sampling: one decoder row per returned sequence (G per article). Ragged (in-flight
batching): each article has its own length so far (`cur`) and articles start at any step (`start`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .decode_policy import DecodePolicy
from .kv_cache import shared_prefix
from .logits_rules import process, rows_articles
from .search import column
from .settings import Plan
from .top_k import first_argmax


class GreedySearch:
    def __init__(self, p: Plan, policy: DecodePolicy, articles: int, rows: int, device: torch.device,
                 generator: torch.Generator | None = None, ragged: bool = False):
        g, m = p.num_return_sequences, p.rules.max_length
        self.p, self.group, self.m, self.generator, self.ragged = p, g, m, generator, ragged
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
        self.cur = torch.ones(rows, dtype=torch.long, device=device)  # ragged only: else the loop's length
        self.articles: torch.Tensor | None = None  # input ids by slot (article_ids), for the encoder rules

    def inputs(self, cur: int) -> tuple[torch.Tensor, int | torch.Tensor, int]:
        if self.ragged:
            last = (self.cur - 1)[:, None, None].expand(-1, self.group, 1)
            return self.seq.gather(2, last).reshape(-1, 1), last.reshape(-1), self.group
        return self.seq[:, :, cur - 1].reshape(-1, 1), cur - 1, self.group

    def advance(self, cur: int, logits: torch.Tensor) -> None:
        """Finished rows write the fill token and keep their score and length: they need no masking."""
        n, g, r = self.seq.shape[0], self.group, self.p.rules
        t = self.cur if self.ragged else cur
        if self.ragged:
            ids, lengths = self.seq.view(n * g, self.m), t.repeat_interleave(g)
        else:
            ids, lengths = self.seq[:, :, :cur].reshape(n * g, cur), None
        scores = process(ids, logits, r, lengths, rows_articles(self.articles, self.slot, g))  # raw logits
        if r.do_sample:
            tok = torch.multinomial(scores.softmax(-1), 1, generator=self.generator)[:, 0]
        else:
            tok = self.argmax(scores)
        tok = tok.view(n, g)
        if self.p.scores:
            logp = F.log_softmax(scores, -1).gather(1, tok.view(-1, 1)).view(n, g)
            self.score += torch.where(self.running, logp, 0.0)
        if self.ragged:  # a done article waiting for its place keeps its last token (it may be the one at M - 1)
            at = t[:, None, None].expand(-1, g, 1)
            kept = self.seq.gather(2, at)[:, :, 0]
            self.seq.scatter_(2, at, torch.where(self.running, tok, torch.where(self.done[:, None], kept,
                                                                                 self.p.fill))[:, :, None])
        else:
            self.seq[:, :, cur] = torch.where(self.running, tok, self.p.fill)
        ended = self.running & torch.isin(tok, self.eos)
        if r.stopping_criteria:  # on the sequences with this step's token; scores None, as transformers passes them
            seq = self.seq[:, :, :cur + 1].reshape(n * g, cur + 1)  # without output_scores
            for criterion in r.stopping_criteria:
                stop = torch.as_tensor(criterion(seq, None), device=tok.device).expand(n * g).view(n, g)
                ended = ended | (self.running & stop)
        self.length = torch.where(ended, column(t + 1), self.length)
        self.running = self.running & ~ended
        self.done = self.done | ~self.running.any(-1) | (t + 1 >= self.m)
        if self.ragged:  # an article done at max_length stops too: it may wait a few steps for its place
            self.running &= ~self.done[:, None]
            self.cur = (t + 1).clamp_(max=self.m - 1)

    def start(self, places: torch.Tensor, slots: torch.Tensor) -> None:
        """Ragged: new articles (input rows `slots`) begin at `places`, with only the start token."""
        self.seq[places] = self.p.fill
        self.seq[places, :, 0] = self.p.start
        self.score[places] = 0.0
        self.length[places] = self.m
        self.running[places] = True
        self.done[places] = False
        self.slot[places] = slots
        self.cur[places] = 1

    def cache_sources(self, cur: int, live: torch.Tensor | None):
        if live is None:
            return None  # rows never change places while every article runs
        g = self.group
        src = (live[:, None] * g + torch.arange(g, device=live.device)).flatten()
        if not self.shared_prefix:
            return src, None, None
        ends = (self.cur[live] - 1).repeat_interleave(g) if self.ragged else None
        return src, shared_prefix(self.seq.view(-1, self.m)[:, :cur], src, g), ends

    def take(self, rows: torch.Tensor) -> None:
        for name in ("seq", "score", "length", "running", "done", "slot", "cur"):
            setattr(self, name, getattr(self, name)[rows])

    def results(self) -> tuple[torch.Tensor, ...]:
        return self.seq, self.score, self.length
