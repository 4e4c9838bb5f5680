"""Logits processors with transformers' rules, vectorised over all rows at once (no loops over hypotheses).

`process` applies them in transformers' order: repetition penalty, no-repeat n-gram, bad words, min length,
forced BOS, forced EOS, then (sampling only) temperature, top-k, top-p.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch


@dataclass
class Rules:
    """Resolved processor settings; lengths count the decoder start token, as in transformers."""

    max_length: int
    min_length: int
    eos: list[int]
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    bad_words_ids: list[list[int]] | None = None
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | list[int] | None = None
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_tokens_to_keep: int = 1


def repetition_penalty(ids: torch.Tensor, scores: torch.Tensor, penalty: float) -> torch.Tensor:
    picked = scores.gather(1, ids)
    picked = torch.where(picked < 0, picked * penalty, picked / penalty)
    return scores.scatter(1, ids, picked)


def no_repeat_ngram(ids: torch.Tensor, scores: torch.Tensor, n: int) -> torch.Tensor:
    """Ban every token that would complete an n-gram already present in the row."""
    t, v = ids.shape[1], scores.shape[1]
    if t < n:
        return scores
    windows = ids.unfold(1, n, 1)  # [N, t - n + 1, n]
    prefix = ids[:, t + 1 - n:]  # [N, n - 1]
    hit = (windows[..., :-1] == prefix[:, None]).all(-1)  # [N, t - n + 1]
    banned = torch.zeros(scores.shape[0], v + 1, dtype=torch.bool, device=scores.device)
    banned.scatter_(1, torch.where(hit, windows[..., -1], v), True)
    return scores.masked_fill(banned[:, :v], -math.inf)


def bad_words(ids: torch.Tensor, scores: torch.Tensor, words: list[list[int]], eos: list[int]) -> torch.Tensor:
    """Ban the last token of each bad sequence wherever the row ends with the rest of it (EOS alone is never banned)."""
    scores = scores.clone()
    for word in words:
        if len(word) == 1 and word[0] in eos:
            continue
        *prefix, last = word
        if len(prefix) > ids.shape[1]:
            continue
        if not prefix:
            scores[:, last] = -math.inf
            continue
        match = (ids[:, ids.shape[1] - len(prefix):] == device_ids(tuple(prefix), ids.device)).all(-1)
        scores[:, last] = scores[:, last].masked_fill(match, -math.inf)
    return scores


@functools.lru_cache(maxsize=256)
def device_ids(ids: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Token ids as a tensor on device, made once: a copy from host memory at every step would make the host
    wait for the device on a GPU."""
    return torch.tensor(ids, dtype=torch.long, device=device)


def forced(scores: torch.Tensor, token: int | list[int]) -> torch.Tensor:
    out = torch.full_like(scores, -math.inf)
    out[:, token] = 0
    return out


def top_k_filter(scores: torch.Tensor, k: int) -> torch.Tensor:
    k = min(k, scores.shape[-1])
    return scores.masked_fill(scores < torch.topk(scores, k)[0][..., -1:], -math.inf)


def top_p_filter(scores: torch.Tensor, p: float, keep: int) -> torch.Tensor:
    sorted_scores, order = torch.sort(scores, descending=False)
    cumulative = sorted_scores.softmax(-1).cumsum(-1)
    drop = cumulative <= 1 - p
    drop[..., -keep:] = False
    return scores.masked_fill(drop.scatter(1, order, drop), -math.inf)


def process(ids: torch.Tensor, scores: torch.Tensor, rules: Rules) -> torch.Tensor:
    """ids [N, t] (start token included), scores [N, V] float32 -> processed scores [N, V]."""
    t = ids.shape[1]
    if rules.repetition_penalty != 1.0:
        scores = repetition_penalty(ids, scores, rules.repetition_penalty)
    if rules.no_repeat_ngram_size > 0:
        scores = no_repeat_ngram(ids, scores, rules.no_repeat_ngram_size)
    if rules.bad_words_ids:
        scores = bad_words(ids, scores, rules.bad_words_ids, rules.eos)
    if rules.eos and t < rules.min_length:
        scores = scores.index_fill(1, device_ids(tuple(rules.eos), scores.device), -math.inf)
    if rules.forced_bos_token_id is not None and t == 1:
        scores = forced(scores, rules.forced_bos_token_id)
    if rules.forced_eos_token_id is not None and t == rules.max_length - 1:
        scores = forced(scores, rules.forced_eos_token_id)
    if rules.do_sample:
        if rules.temperature != 1.0:
            scores = scores / rules.temperature
        if rules.top_k:
            scores = top_k_filter(scores, max(rules.top_k, rules.min_tokens_to_keep))
        if rules.top_p < 1.0:
            scores = top_p_filter(scores, rules.top_p, rules.min_tokens_to_keep)
    return scores
