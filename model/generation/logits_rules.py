"""Logits processors with transformers' rules, vectorised over all rows at once (no loops over hypotheses).

`process` applies them in transformers' order: repetition penalty, no-repeat n-gram, bad words, min length,
forced BOS, forced EOS, then (sampling only) temperature, top-k, top-p. Rows may be of one length (the
columns of `ids`) or each of its own (`lengths`, for in-flight batching, where articles start at any step).
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


def own_tokens(ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """ids with the places at or after each row's length holding the row's first token (one it has anyway)."""
    beyond = torch.arange(ids.shape[1], device=ids.device) >= lengths[:, None]
    return torch.where(beyond, ids[:, :1], ids)


def suffix(ids: torch.Tensor, lengths: torch.Tensor, n: int) -> torch.Tensor:
    """The last n tokens before each row's length, [N, n] (clamped to the row's start where it is shorter)."""
    at = lengths[:, None] - n + torch.arange(n, device=ids.device)
    return ids.gather(1, at.clamp(min=0))


def no_repeat_ngram(ids: torch.Tensor, scores: torch.Tensor, n: int,
                    lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Ban every token that would complete an n-gram already present in the row."""
    t, v = ids.shape[1], scores.shape[1]
    if t < n:
        return scores
    windows = ids.unfold(1, n, 1)  # [N, t - n + 1, n]
    if lengths is None:
        prefix = ids[:, t + 1 - n:]  # [N, n - 1]
        hit = (windows[..., :-1] == prefix[:, None]).all(-1)  # [N, t - n + 1]
    else:  # only the windows that end before the row's length
        prefix = suffix(ids, lengths, n - 1)
        inside = torch.arange(t - n + 1, device=ids.device) <= lengths[:, None] - n
        hit = (windows[..., :-1] == prefix[:, None]).all(-1) & inside
    banned = torch.zeros(scores.shape[0], v + 1, dtype=torch.bool, device=scores.device)
    banned.scatter_(1, torch.where(hit, windows[..., -1], v), True)
    return scores.masked_fill(banned[:, :v], -math.inf)


def bad_words(ids: torch.Tensor, scores: torch.Tensor, words: list[list[int]], eos: list[int],
              lengths: torch.Tensor | None = None) -> torch.Tensor:
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
        wanted = device_ids(tuple(prefix), ids.device)
        if lengths is None:
            match = (ids[:, ids.shape[1] - len(prefix):] == wanted).all(-1)
        else:
            match = (suffix(ids, lengths, len(prefix)) == wanted).all(-1) & (lengths >= len(prefix))
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


def process(ids: torch.Tensor, scores: torch.Tensor, rules: Rules, lengths: torch.Tensor | None = None
            ) -> torch.Tensor:
    """ids [N, t] (start token included), scores [N, V] float32 -> processed scores [N, V]. With lengths [N],
    row i holds ids[i, :lengths[i]] and the rest of it is ignored."""
    t = ids.shape[1] if lengths is None else lengths  # an int, or a tensor: the rules below take either
    if rules.repetition_penalty != 1.0:
        own = ids if lengths is None else own_tokens(ids, lengths)
        scores = repetition_penalty(own, scores, rules.repetition_penalty)
    if rules.no_repeat_ngram_size > 0:
        scores = no_repeat_ngram(ids, scores, rules.no_repeat_ngram_size, lengths)
    if rules.bad_words_ids:
        scores = bad_words(ids, scores, rules.bad_words_ids, rules.eos, lengths)
    if rules.eos:
        scores = ban(scores, t < rules.min_length, device_ids(tuple(rules.eos), scores.device))
    if rules.forced_bos_token_id is not None:
        scores = on_rows(t == 1, scores, lambda s: forced(s, rules.forced_bos_token_id))
    if rules.forced_eos_token_id is not None:
        scores = on_rows(t == rules.max_length - 1, scores, lambda s: forced(s, rules.forced_eos_token_id))
    if rules.do_sample:
        if rules.temperature != 1.0:
            scores = scores / rules.temperature
        if rules.top_k:
            scores = top_k_filter(scores, max(rules.top_k, rules.min_tokens_to_keep))
        if rules.top_p < 1.0:
            scores = top_p_filter(scores, rules.top_p, rules.min_tokens_to_keep)
    return scores


def on_rows(which: bool | torch.Tensor, scores: torch.Tensor, rule) -> torch.Tensor:
    """rule(scores) on the rows `which` selects: True/False for all of them, or an [N] bool tensor."""
    if isinstance(which, bool):
        return rule(scores) if which else scores
    return torch.where(which[:, None], rule(scores), scores)


def ban(scores: torch.Tensor, which: bool | torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """The columns set to -inf on the rows `which` selects (as on_rows), touching only those columns."""
    if isinstance(which, bool):
        return scores.index_fill(1, columns, -math.inf) if which else scores
    return scores.index_copy(1, columns, scores.index_select(1, columns).masked_fill(which[:, None], -math.inf))
