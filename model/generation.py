"""Greedy, sampling and beam search for the encoder-decoder, with transformers' semantics and tokens.

What differs from transformers is only the layout: the encoder and the cross-attention keys/values run once
per article and are shared by all its beams (the decoder stacks the beams' queries), the self-attention
cache is preallocated and reordered in place, copying only where a beam's new prefix differs from the one
its row held, finished articles leave the running batch, and a batch is sorted by length and cut into
buckets so that little padding is encoded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from .config import EncoderDecoderConfig, GenerationConfig
from .logits import Rules, process

if TYPE_CHECKING:
    from .encoder_decoder import EncoderDecoderModel

NEG = -1.0e9
DEFAULT_NEW_TOKENS = 20  # transformers' "removed" score for beams and hypotheses

# (tokens [N, 1], memory_kv, memory_mask, cache, pos, group) -> float logits [N, V]
DecodeStep = Callable[..., torch.Tensor]


@dataclass
class Plan:
    """Everything generate needs, resolved from the generation config and validated."""

    rules: Rules
    start: int
    fill: int
    num_beams: int
    num_return_sequences: int
    length_penalty: float
    early_stopping: bool | str
    scores: bool = True  # greedy and sampling skip the log-softmax of their chosen tokens without it


def plan(model_config: EncoderDecoderConfig, config: GenerationConfig) -> Plan:
    """Resolve lengths and ids as transformers does (max_new_tokens wins over max_length) and reject bad settings
    for a model of `model_config` (checkable before any weights load)."""
    c, positions, vocab = config, model_config.decoder.max_position_embeddings, model_config.decoder.vocab_size
    start = c.decoder_start_token_id if c.decoder_start_token_id is not None else c.bos_token_id
    if start is None:
        raise ValueError("decoder_start_token_id is not set (for BERT2BERT usually the [CLS] id)")
    eos = c.eos_token_id if c.eos_token_id is not None else []
    eos = [eos] if isinstance(eos, int) else list(eos)
    for name in ("max_new_tokens", "min_new_tokens", "max_length"):
        value = getattr(c, name)
        if value is not None and value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    for name in ("min_length", "no_repeat_ngram_size", "top_k"):
        if getattr(c, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(c, name)}")
    if c.num_beams < 1 or c.num_return_sequences < 1:
        raise ValueError(f"num_beams ({c.num_beams}) and num_return_sequences ({c.num_return_sequences}) must be >= 1")
    max_length = c.max_new_tokens + 1 if c.max_new_tokens is not None else c.max_length
    min_length = c.min_new_tokens + 1 if c.min_new_tokens is not None else c.min_length
    if max_length is None and not eos:
        raise ValueError("set max_length or max_new_tokens, or eos_token_id: otherwise generation never stops")
    if max_length is None:  # transformers' default: 20 new tokens after the start token
        max_length = min(DEFAULT_NEW_TOKENS + 1, positions)
    if max_length < 2:
        raise ValueError(f"max_length {max_length} leaves no room after the decoder start token (it counts it)")
    if max_length > positions:
        raise ValueError(f"max_length {max_length} exceeds the decoder's max_position_embeddings {positions}")
    for name, value in (("decoder_start_token_id", start), ("pad_token_id", c.pad_token_id),
                        *(("eos_token_id", e) for e in eos)):
        if value is not None and not 0 <= value < vocab:
            raise ValueError(f"{name} {value} is outside the decoder's vocabulary of {vocab} tokens")
    if c.num_beams > 1 and c.num_return_sequences > c.num_beams:
        raise ValueError(f"num_return_sequences ({c.num_return_sequences}) must be <= num_beams ({c.num_beams})")
    if c.num_beams == 1 and not c.do_sample and c.num_return_sequences > 1:
        raise ValueError("greedy search returns one sequence per input; use num_beams or do_sample")
    if c.early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {c.early_stopping!r}")
    if c.repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0, got {c.repetition_penalty}")
    if c.do_sample and (c.temperature <= 0 or not 0 < c.top_p <= 1):
        raise ValueError(f"sampling needs temperature > 0 and 0 < top_p <= 1, got {c.temperature}, {c.top_p}")
    if c.bad_words_ids is not None and not all(isinstance(w, list) and w for w in c.bad_words_ids):
        raise ValueError("bad_words_ids must be a list of non-empty lists of token ids")
    if c.pad_token_id is None and eos and c.num_beams == 1:
        raise ValueError("pad_token_id is needed to fill finished rows; set pad_token_id")
    rules = Rules(max_length=max_length, min_length=min_length, eos=eos, repetition_penalty=c.repetition_penalty,
                  no_repeat_ngram_size=c.no_repeat_ngram_size, bad_words_ids=c.bad_words_ids,
                  forced_bos_token_id=c.forced_bos_token_id, forced_eos_token_id=c.forced_eos_token_id,
                  do_sample=c.do_sample, temperature=c.temperature, top_k=c.top_k, top_p=c.top_p,
                  min_tokens_to_keep=len(eos) + 1 if c.num_beams > 1 else 1)
    fill = c.pad_token_id if c.pad_token_id is not None else eos[0] if eos else -1
    return Plan(rules, start, fill, c.num_beams, c.num_return_sequences, c.length_penalty, c.early_stopping)


def decode_step(model: EncoderDecoderModel) -> DecodeStep:
    """The default one-token step; wrap it (torch.compile) and pass it to generate to change how it runs."""
    def step(tokens, memory_kv, memory_mask, cache, pos, group):
        return model.decode(tokens, memory_kv, memory_mask, cache=cache, pos=pos, group=group)[:, -1].float()
    return step


def static_decode_step(model: EncoderDecoderModel,
                       wrap: Callable[[DecodeStep], DecodeStep] | None = None) -> DecodeStep:
    """A one-token step whose shapes do not change from one position to the next (only when rows leave).

    The position reaches the model as a [1] tensor and every layer attends over the whole preallocated
    cache under a mask, so `wrap` (for example `lambda f: torch.compile(f, mode="reduce-overhead")`, which
    captures CUDA graphs) compiles or captures the core once per row count instead of once per position.
    """
    def core(tokens, memory_kv, memory_mask, cache, position, group):
        return model.decode(tokens, memory_kv, memory_mask, cache=cache, pos=position, group=group)[:, -1].float()

    core = wrap(core) if wrap is not None else core

    def step(tokens, memory_kv, memory_mask, cache, pos, group):
        if wrap is not None:  # CUDA graphs then read the cache and cross K/V in place instead of copying them in
            for t in (cache.k, cache.v, *(t for kv in memory_kv for t in kv)):
                torch._dynamo.mark_static_address(t)
        return core(tokens, memory_kv, memory_mask, cache, torch.tensor([pos], device=tokens.device), group)
    return step


def keep_articles(live: torch.Tensor, memory_kv, memory_mask):
    """The cross-attention keys/values and mask of the articles still running (finished ones leave the batch)."""
    return [(k[live], v[live]) for k, v in memory_kv], None if memory_mask is None else memory_mask[live]


def shared_prefix(tokens: torch.Tensor, rows: torch.Tensor, group: int) -> torch.Tensor:
    """For KVCache.reorder: leading positions equal between old row rows[i] and old row i (tokens [R, t]).

    Equal tokens of the same article give equal keys/values; rows of different articles share nothing.
    """
    dst = torch.arange(rows.shape[0], device=rows.device)
    same = (tokens[rows] == tokens[: rows.shape[0]]).cumprod(1).sum(1)
    return torch.where(rows // group == dst // group, same, 0)


TOPK_BLOCK = 128


def top_candidates(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.topk(scores, k) over the last axis of [n, L], about 4x faster on beam search's long rows.

    The k largest values lie in the k blocks of TOPK_BLOCK with the largest maxima, so only those blocks
    (and the tail) are ranked. Equal values may come back in another order than torch.topk's.
    """
    n, length = scores.shape
    blocks = length // TOPK_BLOCK
    if blocks < 4 * k:
        return torch.topk(scores, k)
    maxima = scores[:, : blocks * TOPK_BLOCK].view(n, blocks, TOPK_BLOCK).amax(-1)
    best = torch.topk(maxima, k).indices
    idx = (best[:, :, None] * TOPK_BLOCK + torch.arange(TOPK_BLOCK, device=scores.device)).view(n, -1)
    tail = torch.arange(blocks * TOPK_BLOCK, length, device=scores.device).expand(n, -1)
    idx = torch.cat((idx, tail), 1)
    top, pick = torch.topk(scores.gather(1, idx), k)
    return top, idx.gather(1, pick)


def first_argmax(scores: torch.Tensor) -> torch.Tensor:
    """scores.argmax(-1) over [n, L] (the first index of the maximum, or of the first NaN), about 10x faster
    on a vocabulary-long row: the first block of TOPK_BLOCK holding the maximum is searched alone."""
    n, length = scores.shape
    blocks = length // TOPK_BLOCK
    if blocks < 4:
        return scores.argmax(-1)
    cut = blocks * TOPK_BLOCK
    maxima = scores[:, :cut].view(n, blocks, TOPK_BLOCK).amax(-1)  # NaN where a block holds one
    top = maxima.amax(-1, keepdim=True)
    block = ((maxima == top) | maxima.isnan()).byte().argmax(-1, keepdim=True)
    cols = block * TOPK_BLOCK + torch.arange(TOPK_BLOCK, device=scores.device)
    best = cols.gather(1, scores.gather(1, cols).argmax(-1, keepdim=True))
    if cut < length:  # the tail wins only with a larger value, or with a NaN when the rest has none
        tail = scores[:, cut:]
        tail_best = tail.argmax(-1, keepdim=True)
        head_value, tail_value = scores.gather(1, best), tail.gather(1, tail_best)
        wins = (tail_value > head_value) | (tail_value.isnan() & ~head_value.isnan())
        best = torch.where(wins, tail_best + cut, best)
    return best[:, 0]


def beam_search(model: EncoderDecoderModel, memory_kv, memory_mask, p: Plan, step: DecodeStep,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Beam search over B articles -> sequences [B, K, M], scores [B, K], lengths [B, K] (best first)."""
    r, k = p.rules, p.num_beams
    m, b = r.max_length, memory_kv[0][0].shape[0]
    dev = memory_kv[0][0].device
    keep = max(2, 1 + len(r.eos)) * k  # candidates per article: enough to keep k running beams after EOS
    top_k_mask = torch.arange(keep, device=dev) < k
    eos = torch.tensor(r.eos, device=dev, dtype=torch.long)

    seq = torch.full((b, k, m), p.fill, dtype=torch.long, device=dev)
    seq[:, :, 0] = p.start
    run_scores = torch.zeros(b, k, device=dev)
    run_scores[:, 1:] = NEG  # only beam 0 expands at the first step
    fin_seq, fin_scores = seq.clone(), torch.full((b, k), NEG, device=dev)
    fin_len, is_fin = torch.ones(b, k, dtype=torch.long, device=dev), torch.zeros(b, k, dtype=torch.bool, device=dev)
    open_ = torch.ones(b, 1, dtype=torch.bool, device=dev)  # transformers' "early stop heuristic unsatisfied"
    alive = torch.arange(b, device=dev)  # input row of each running article
    out_seq, out_scores, out_len = fin_seq.clone(), fin_scores.clone(), fin_len.clone()
    cache = model.new_cache(b * k, m)
    es_true = p.early_stopping is True

    for cur in range(1, m):  # cur = length so far, start token included
        n, prev = seq.shape[0], seq
        if cur == 1:  # all beams hold the start token alone: one row per article decodes, its logits serve all
            logits = step(seq[:, 0, :1], memory_kv, memory_mask, cache, 0, 1).repeat_interleave(k, 0)
        else:
            logits = step(seq[:, :, cur - 1].reshape(n * k, 1), memory_kv, memory_mask, cache, cur - 1, k)
        logp = F.log_softmax(logits, dim=-1)  # [n*k, V]
        logp = process(seq[:, :, :cur].reshape(n * k, cur), logp, r)
        v = logp.shape[-1]
        logp = logp.view(n, k, v).add_(run_scores[:, :, None]).view(n, k * v)  # a fresh tensor: added in place
        if r.do_sample:
            idx = torch.multinomial(logp.softmax(-1), keep, generator=generator)
            top, order = logp.gather(1, idx).sort(-1, descending=True)
            idx = idx.gather(1, order)
        else:
            top, idx = top_candidates(logp, keep)  # [n, keep]
        beam, tok = idx // v, idx % v
        cand = seq.gather(1, beam[:, :, None].expand(n, keep, m))  # [n, keep, M]
        cand[:, :, cur] = tok
        hits = torch.isin(tok, eos) | (cur + 1 >= m)

        # the k best unfinished candidates keep running
        run_top = top + hits.float() * NEG
        nxt = torch.topk(run_top, k).indices
        seq = cand.gather(1, nxt[:, :, None].expand(n, k, m))
        run_scores = run_top.gather(1, nxt)
        parent = beam.gather(1, nxt)

        # finished candidates among the top k join the hypotheses if they rank within k
        cand_scores = top / (cur ** p.length_penalty)
        cand_scores += (is_fin.all(-1, keepdim=True) & es_true).float() * NEG
        cand_scores += (~open_).float() * NEG
        cand_scores += (~(hits & top_k_mask)) * NEG
        merged = torch.cat((fin_scores, cand_scores), 1)
        best = torch.topk(merged, k).indices
        fin_scores = merged.gather(1, best)
        fin_seq = torch.cat((fin_seq, cand), 1).gather(1, best[:, :, None].expand(n, k, m))
        fin_len = torch.cat((fin_len, torch.full_like(tok, cur + 1)), 1).gather(1, best)
        is_fin = torch.cat((is_fin, hits & top_k_mask), 1).gather(1, best)

        # can a running beam still beat the worst hypothesis?
        if p.early_stopping == "never" and p.length_penalty > 0.0:
            best_len = m - 1
        else:
            best_len = cur
        best_running = run_scores[:, :1] / (best_len ** p.length_penalty)
        worst = torch.where(is_fin, fin_scores.min(1, keepdim=True).values, NEG)
        open_ = open_ & (best_running > worst).any(-1, keepdim=True)

        done = ~open_[:, 0] | (is_fin.all(-1) & es_true) | (cur + 1 >= m)
        if bool(done.any()):
            rows = alive[done]
            out_seq[rows], out_scores[rows], out_len[rows] = fin_seq[done], fin_scores[done], fin_len[done]
            if bool(done.all()):
                break
            live = (~done).nonzero()[:, 0]
            alive, seq, run_scores, parent = alive[live], seq[live], run_scores[live], parent[live]
            fin_seq, fin_scores, fin_len = fin_seq[live], fin_scores[live], fin_len[live]
            is_fin, open_ = is_fin[live], open_[live]
            memory_kv, memory_mask = keep_articles(live, memory_kv, memory_mask)
        else:
            live = torch.arange(n, device=dev)
        if cur == 1:  # the cache holds one row per article
            cache.reorder(live.repeat_interleave(k), cur)
        else:
            src = (live[:, None] * k + parent).flatten()
            cache.reorder(src, cur, shared_prefix(prev.view(n * k, m)[:, :cur], src, k))
    return out_seq, out_scores, out_len


def greedy_or_sample(model: EncoderDecoderModel, memory_kv, memory_mask, p: Plan, step: DecodeStep,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One row per returned sequence (G per article) -> sequences [B, G, M], sum of log-probs [B, G], lengths [B, G]."""
    r, g = p.rules, p.num_return_sequences
    m, b = r.max_length, memory_kv[0][0].shape[0]
    dev = memory_kv[0][0].device
    eos = torch.tensor(r.eos, device=dev, dtype=torch.long)
    seq = torch.full((b, g, m), p.fill, dtype=torch.long, device=dev)
    seq[:, :, 0] = p.start
    score, length = torch.zeros(b, g, device=dev), torch.full((b, g), m, dtype=torch.long, device=dev)
    running = torch.ones(b, g, dtype=torch.bool, device=dev)
    alive = torch.arange(b, device=dev)
    out_seq, out_score, out_len = seq.clone(), score.clone(), length.clone()
    cache = model.new_cache(b * g, m)

    for cur in range(1, m):
        n = seq.shape[0]
        logits = step(seq[:, :, cur - 1].reshape(n * g, 1), memory_kv, memory_mask, cache, cur - 1, g)
        scores = process(seq[:, :, :cur].reshape(n * g, cur), logits, r)  # raw logits, as transformers does here
        if r.do_sample:
            tok = torch.multinomial(scores.softmax(-1), 1, generator=generator)[:, 0]
        else:
            tok = first_argmax(scores)
        tok = tok.view(n, g)
        if p.scores:
            logp = F.log_softmax(scores, -1).gather(1, tok.view(-1, 1)).view(n, g)
            score += torch.where(running, logp, 0.0)
        seq[:, :, cur] = torch.where(running, tok, p.fill)
        ended = running & torch.isin(tok, eos)
        length = torch.where(ended, cur + 1, length)
        running = running & ~ended

        done = ~running.any(-1) | (cur + 1 >= m)
        if bool(done.any()):
            rows = alive[done]
            out_seq[rows], out_score[rows], out_len[rows] = seq[done], score[done], length[done]
            if bool(done.all()):
                break
            live = (~done).nonzero()[:, 0]
            src = (live[:, None] * g + torch.arange(g, device=dev)).flatten()
            cache.reorder(src, cur, shared_prefix(seq.view(n * g, m)[:, :cur], src, g))
            alive, seq, score, length, running = alive[live], seq[live], score[live], length[live], running[live]
            memory_kv, memory_mask = keep_articles(live, memory_kv, memory_mask)
    return out_seq, out_score, out_len


def buckets(attention_mask: torch.Tensor, size: int) -> list[tuple[torch.Tensor, int]]:
    """Input rows sorted by length (longest first), cut into groups of `size`, each with its trimmed width."""
    lengths = attention_mask.sum(1)
    order = torch.argsort(lengths, descending=True, stable=True)
    out = []
    for rows in order.split(size):
        used = attention_mask[rows].any(0).nonzero()
        out.append((rows, int(used.max()) + 1 if used.numel() else 1))
    return out


@torch.inference_mode()
def generate(model: EncoderDecoderModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
             return_scores: bool = False, seed: int | None = None, generator: torch.Generator | None = None,
             bucket_size: int = 64, step: DecodeStep | None = None, **kwargs: Any):
    """Summaries [B * num_return_sequences, T] starting with decoder_start_token_id, in input order.

    kwargs are generation settings with transformers' names, over model.generation_config. With
    return_scores=True also returns [B * num_return_sequences] scores: beam search's length-penalised
    scores (transformers' sequences_scores), else the sum of the chosen tokens' processed log-probs.
    bucket_size caps the articles encoded and searched together; step replaces the one-token decode.
    """
    p = dataclasses.replace(plan(model.config, model.generation_config.updated(**kwargs)), scores=return_scores)
    if bucket_size < 1:
        raise ValueError(f"bucket_size must be >= 1, got {bucket_size}")
    if seed is not None:
        generator = torch.Generator(model.device).manual_seed(seed)
    input_ids = input_ids.to(model.device)
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(model.device)
    step = step or decode_step(model)
    search = beam_search if p.num_beams > 1 else greedy_or_sample
    b, g = input_ids.shape[0], p.num_return_sequences
    seqs = torch.full((b, g, p.rules.max_length), p.fill, dtype=torch.long, device=model.device)
    scores = torch.zeros(b, g, device=model.device)
    lengths = torch.ones(b, g, dtype=torch.long, device=model.device)
    for rows, width in buckets(mask, bucket_size):
        ids, m = input_ids[rows, :width], mask[rows, :width]
        memory = model.encode(ids, m)
        memory_mask = None if bool(m.all()) else m.bool()[:, None, None, :]
        s, sc, ln = search(model, model.memory_kv(memory), memory_mask, p, step, generator)
        seqs[rows], scores[rows], lengths[rows] = s[:, :g], sc[:, :g], ln[:, :g]
    out = seqs[:, :, : int(lengths.max())].reshape(b * g, -1)
    return (out, scores.reshape(-1)) if return_scores else out
