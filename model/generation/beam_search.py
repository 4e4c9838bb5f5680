"""Beam search with transformers' semantics, as named steps over a small state: score the candidates, select
the running beams, finalize the hypotheses. The shared loop (loop.run) compacts finished articles.

Layout: [n] articles with k beams each; the first step decodes one row per article (all its beams hold the
start token alone) and its logits serve all k beams. Ragged (in-flight batching): each article has its own
length so far (`cur`), articles start at any step (`start`), and every step decodes k rows per article.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from .decode_policy import DecodePolicy
from .kv_cache import shared_prefix
from .logits_rules import process, rows_articles
from .search import column
from .settings import NEG, Plan
from .top_k import top_candidates


@dataclass
class Beams:
    running: torch.Tensor  # [n, k, M] the running beams' tokens
    running_scores: torch.Tensor  # [n, k] their log-prob sums
    held: torch.Tensor  # [n, k, M] the tokens the cache rows hold (the running beams before this step)
    parent: torch.Tensor  # [n, k] which beam of the article each running beam continues
    hyps: torch.Tensor  # [n, k, M] the best finished hypotheses
    hyp_scores: torch.Tensor  # [n, k] their length-penalised scores (NEG: an empty place)
    hyp_lengths: torch.Tensor  # [n, k]
    hyp_filled: torch.Tensor  # [n, k] bool
    open: torch.Tensor  # [n, 1] a running beam may still beat the worst hypothesis (transformers' heuristic)
    done: torch.Tensor  # [n] the hypotheses are final
    slot: torch.Tensor  # [n] input row (-1: padding)
    cur: torch.Tensor  # [n] tokens so far (ragged only: else every article has the loop's)


class BeamSearch:
    def __init__(self, p: Plan, policy: DecodePolicy, articles: int, rows: int, device: torch.device,
                 generator: torch.Generator | None = None, ragged: bool = False):
        r, k = p.rules, p.num_beams
        m = r.max_length
        self.p, self.k, self.m, self.group, self.generator, self.ragged = p, k, m, k, generator, ragged
        self.keep = max(2, 1 + len(r.eos)) * k  # candidates per article: enough to keep k running beams after EOS
        self.in_top_k = torch.arange(self.keep, device=device) < k
        self.eos = torch.tensor(r.eos, device=device, dtype=torch.long)
        self.topk = top_candidates if policy.blocked_topk else torch.topk
        self.shared_prefix = policy.shared_prefix_reorder
        self.keeps_done = ragged or policy.check_every > 1 or policy.row_buckets  # else done articles leave at once
        # cur ** length_penalty by length, as the Python float transformers divides by (one rounding to float32)
        self.penalties = torch.tensor([t ** p.length_penalty for t in range(m + 1)], device=device)
        running = torch.full((rows, k, m), p.fill, dtype=torch.long, device=device)
        running[:, :, 0] = p.start
        scores = torch.zeros(rows, k, device=device)
        scores[:, 1:] = NEG  # only beam 0 expands at the first step
        slot = torch.arange(rows, device=device).masked_fill_(torch.arange(rows, device=device) >= articles, -1)
        self.s = Beams(running=running, running_scores=scores, held=running, parent=torch.zeros_like(scores).long(),
                       hyps=running.clone(), hyp_scores=torch.full((rows, k), NEG, device=device),
                       hyp_lengths=torch.ones(rows, k, dtype=torch.long, device=device),
                       hyp_filled=torch.zeros(rows, k, dtype=torch.bool, device=device),
                       open=torch.ones(rows, 1, dtype=torch.bool, device=device), done=slot < 0, slot=slot,
                       cur=torch.ones(rows, dtype=torch.long, device=device))
        self.articles: torch.Tensor | None = None  # input ids by slot (article_ids), for the encoder rules

    @property
    def done(self) -> torch.Tensor:
        return self.s.done

    @property
    def slot(self) -> torch.Tensor:
        return self.s.slot

    def inputs(self, cur: int) -> tuple[torch.Tensor, int | torch.Tensor, int]:
        running = self.s.running
        if self.ragged:
            last = (self.s.cur - 1)[:, None, None].expand(-1, self.k, 1)
            return running.gather(2, last).reshape(-1, 1), last.reshape(-1), self.k
        if cur == 1:
            return running[:, 0, :1], 0, 1
        return running[:, :, cur - 1].reshape(-1, 1), cur - 1, self.k

    def advance(self, cur: int, logits: torch.Tensor) -> None:
        if cur == 1 and not self.ragged:
            logits = logits.repeat_interleave(self.k, 0)
        t = self.s.cur if self.ragged else cur
        top, beam, tok = self.score(t, logits)
        candidates = self.s.running.gather(1, beam[:, :, None].expand(-1, -1, self.m))  # [n, keep, M]
        if self.ragged:
            candidates.scatter_(2, t[:, None, None].expand(-1, self.keep, 1), tok[:, :, None])
        else:
            candidates[:, :, cur] = tok
        ends = torch.isin(tok, self.eos) | column(t + 1 >= self.m)
        self.s.held = self.s.running
        self.select(top, beam, candidates, ends)
        self.finalize(t, top, tok, candidates, ends)
        if self.ragged:  # a done article waiting for its place to be refilled stays at the last position
            self.s.cur = (t + 1).clamp_(max=self.m - 1)

    def start(self, places: torch.Tensor, slots: torch.Tensor) -> None:
        """Ragged: new articles (input rows `slots`) begin at `places`, with only the start token."""
        s, k = self.s, self.k
        s.running[places] = self.p.fill
        s.running[places, :, 0] = self.p.start
        s.running_scores[places] = NEG
        s.running_scores[places, 0] = 0.0
        s.hyps[places] = s.running[places]
        s.hyp_scores[places] = NEG
        s.hyp_lengths[places] = 1
        s.hyp_filled[places] = False
        s.parent[places] = torch.arange(k, device=places.device)
        s.open[places] = True
        s.done[places] = False
        s.slot[places] = slots
        s.cur[places] = 1

    def penalty(self, t: int | torch.Tensor) -> float | torch.Tensor:
        """t ** length_penalty: for the loop's length, or each article's ([n, 1])."""
        return t ** self.p.length_penalty if isinstance(t, int) else self.penalties[t][:, None]

    def score(self, t: int | torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The `keep` best continuations of each article: their scores, source beams and tokens, [n, keep] each."""
        s, r, n = self.s, self.p.rules, self.s.running.shape[0]
        if self.ragged:
            ids, lengths = s.running.view(n * self.k, self.m), t.repeat_interleave(self.k)
        else:
            ids, lengths = s.running[:, :, :t].reshape(n * self.k, t), None
        logp = process(ids, F.log_softmax(logits, dim=-1), r, lengths, rows_articles(self.articles, s.slot, self.k))
        v = logp.shape[-1]
        logp = logp.view(n, self.k, v).add_(s.running_scores[:, :, None]).view(n, self.k * v)  # fresh: in place
        if r.do_sample:
            idx = torch.multinomial(logp.softmax(-1), self.keep, generator=self.generator)
            top, order = logp.gather(1, idx).sort(-1, descending=True)
            idx = idx.gather(1, order)
        else:
            top, idx = self.topk(logp, self.keep)
        return top, idx // v, idx % v

    def select(self, top, beam, candidates, ends) -> None:
        """The k best candidates that did not end keep running."""
        s = self.s
        scores = top + ends.float() * NEG
        best = torch.topk(scores, self.k).indices
        s.running = candidates.gather(1, best[:, :, None].expand(-1, -1, self.m))
        s.running_scores = scores.gather(1, best)
        s.parent = beam.gather(1, best)

    def finalize(self, cur, top, tok, candidates, ends) -> None:
        """Ended candidates among the top k join the hypotheses if they rank within k; articles whose running
        beams cannot beat their worst hypothesis are done, and done articles' hypotheses stay as they are."""
        s, p = self.s, self.p
        ended = ends & self.in_top_k
        scores = top / self.penalty(cur)
        scores += (s.hyp_filled.all(-1, keepdim=True) & (p.early_stopping is True)).float() * NEG
        scores += (~s.open).float() * NEG
        scores += (~ended) * NEG
        merged = torch.cat((s.hyp_scores, scores), 1)
        best = torch.topk(merged, self.k).indices
        new = (torch.cat((s.hyps, candidates), 1).gather(1, best[:, :, None].expand(-1, -1, self.m)),
               merged.gather(1, best),
               torch.cat((s.hyp_lengths, torch.zeros_like(tok) + column(cur + 1)), 1).gather(1, best),
               torch.cat((s.hyp_filled, ended), 1).gather(1, best))
        if self.keeps_done:
            frozen = s.done[:, None]
            new = tuple(torch.where(frozen[:, :, None] if n.dim() == 3 else frozen, old, n)
                        for old, n in zip((s.hyps, s.hyp_scores, s.hyp_lengths, s.hyp_filled), new, strict=True))
        s.hyps, s.hyp_scores, s.hyp_lengths, s.hyp_filled = new

        best_len = self.m - 1 if p.early_stopping == "never" and p.length_penalty > 0.0 else cur
        best_running = s.running_scores[:, :1] / self.penalty(best_len)
        worst = torch.where(s.hyp_filled, s.hyp_scores.min(1, keepdim=True).values, NEG)
        s.open = s.open & (best_running > worst).any(-1, keepdim=True)
        s.done = s.done | ~s.open[:, 0] | (s.hyp_filled.all(-1) & (p.early_stopping is True)) | (cur + 1 >= self.m)

    def cache_sources(self, cur: int, live: torch.Tensor | None):
        if live is None:
            live = torch.arange(self.s.done.shape[0], device=self.s.done.device)
            parent = self.s.parent
        else:
            parent = self.s.parent[live]
        if cur == 1 and not self.ragged:  # the cache holds one row per article
            return live.repeat_interleave(self.k), None, None
        src = (live[:, None] * self.k + parent).flatten()
        if not self.shared_prefix:
            return src, None, None
        n = self.s.held.shape[0]
        shared = shared_prefix(self.s.held.view(n * self.k, self.m)[:, :cur], src, self.k)
        # ragged: each new row holds its article's positions so far (those of a just started one: none)
        ends = (self.s.cur[live] - 1).repeat_interleave(self.k) if self.ragged else None
        return src, shared, ends

    def take(self, rows: torch.Tensor) -> None:
        for f in fields(self.s):
            setattr(self.s, f.name, getattr(self.s, f.name)[rows])

    def results(self) -> tuple[torch.Tensor, ...]:
        return self.s.hyps, self.s.hyp_scores, self.s.hyp_lengths
