"""Logits processors with transformers' rules, vectorised over all rows at once (no loops over hypotheses).

`process` applies them in transformers 5's order (`_get_logits_processor`): sequence bias, encoder repetition
penalty, repetition penalty, no-repeat n-gram, encoder no-repeat n-gram, bad words, min length, forced BOS,
forced EOS, inf/nan removal, exponential decay length penalty, suppressed tokens, suppressed tokens at the
beginning, then (sampling only) temperature, top-h, top-k, top-p, min-p, typical, epsilon, eta, and last
the renormalisation. Rows may be of one length (the columns of `ids`) or each of its own (`lengths`, for
in-flight batching, where articles start at any step). The encoder rules read each row's article (`encoder`,
its input ids with -1 on padding: the article's own tokens, as transformers sees an unpadded article).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


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
    sequence_bias: tuple[tuple[tuple[int, ...], float], ...] = ()  # in the order given, as transformers adds them
    encoder_repetition_penalty: float = 1.0
    encoder_no_repeat_ngram_size: int = 0
    remove_invalid_values: bool = False
    exponential_decay_length_penalty: tuple[int, float] | None = None  # (start after the start token, factor)
    suppress_tokens: tuple[int, ...] = ()
    begin_suppress_tokens: tuple[int, ...] = ()
    begin_index: int = 1  # the length at which begin_suppress_tokens apply (2 after a forced BOS)
    top_h: float | None = None
    min_p: float | None = None
    typical_p: float = 1.0
    epsilon_cutoff: float = 0.0
    eta_cutoff: float = 0.0
    renormalize_logits: bool = False
    logits_processor: tuple = ()  # the caller's (input_ids [N, t], scores [N, V]) -> scores, after the processors
    stopping_criteria: tuple = ()  # the caller's (input_ids [N, t], scores [N, V]) -> [N] bool, greedy and sampling

    @property
    def reads_encoder(self) -> bool:
        """The rules need each row's article ids (`encoder` of `process`)."""
        return self.encoder_repetition_penalty != 1.0 or self.encoder_no_repeat_ngram_size > 0


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


def sequence_bias(ids: torch.Tensor, scores: torch.Tensor, biases: tuple[tuple[tuple[int, ...], float], ...],
                  lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Add each sequence's bias to its last token where the row ends with the rest of it. The biases are summed
    into one [N, V] tensor first (single tokens, then by prefix length in order of first appearance) and added
    once, as transformers sums them (float addition is not associative)."""
    v = scores.shape[1]
    bias = torch.zeros_like(scores)
    single = torch.zeros(v, dtype=torch.float, device=scores.device)
    for word, value in biases:
        if len(word) == 1:
            single[word[0]] = value
    bias += single
    by_length: dict[int, list[tuple[tuple[int, ...], float]]] = {}
    for word, value in biases:
        if len(word) > 1:
            by_length.setdefault(len(word) - 1, []).append((word, value))
    for n, group in by_length.items():
        if n > ids.shape[1]:
            continue
        prefixes = device_ids(tuple(i for word, _ in group for i in word[:-1]), ids.device).view(len(group), n)
        last = device_ids(tuple(word[-1] for word, _ in group), ids.device)
        values = torch.tensor([value for _, value in group], dtype=torch.float, device=scores.device)
        if lengths is None:
            match = (ids[:, None, ids.shape[1] - n:] == prefixes).all(-1)  # [N, words]
        else:
            match = (suffix(ids, lengths, n)[:, None] == prefixes).all(-1) & (lengths >= n)[:, None]
        bias.index_add_(1, last, torch.where(match, values, 0.0).to(bias.dtype))
    return scores + bias


def encoder_repetition_penalty(encoder: torch.Tensor, scores: torch.Tensor, penalty: float) -> torch.Tensor:
    """The article's tokens made likelier (penalty > 1): transformers divides by the penalty's inverse."""
    own = torch.where(encoder < 0, encoder.max(1, keepdim=True).values, encoder)  # padding: a token of the row
    inverse = 1 / penalty
    picked = scores.gather(1, own)
    picked = torch.where(picked < 0, picked * inverse, picked / inverse)
    return scores.scatter(1, own, picked)


def encoder_no_repeat_ngram(ids: torch.Tensor, scores: torch.Tensor, encoder: torch.Tensor, n: int,
                            lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Ban every token that would complete an n-gram of the row's article (rows shorter than n - 1: none)."""
    v = scores.shape[1]
    if encoder.shape[1] < n:
        return scores
    windows = encoder.unfold(1, n, 1)  # [N, S - n + 1, n]
    if lengths is None:
        if ids.shape[1] < n - 1:
            return scores
        prefix, long_enough = ids[:, ids.shape[1] + 1 - n:], True
    else:
        prefix, long_enough = suffix(ids, lengths, n - 1), (lengths >= n - 1)[:, None]
    hit = (windows[..., :-1] == prefix[:, None]).all(-1) & (windows >= 0).all(-1) & long_enough
    banned = torch.zeros(scores.shape[0], v + 1, dtype=torch.bool, device=scores.device)
    banned.scatter_(1, torch.where(hit, windows[..., -1], v), True)
    return scores.masked_fill(banned[:, :v], -math.inf)


def remove_invalid(scores: torch.Tensor) -> torch.Tensor:
    """NaN to 0, +-inf to the dtype's largest finite values."""
    finfo = torch.finfo(scores.dtype)
    out = torch.where(scores != scores, 0.0, scores)
    out = torch.where(scores == math.inf, finfo.max, out)
    return torch.where(scores == -math.inf, finfo.min, out)


def exponential_decay(scores: torch.Tensor, t: int | torch.Tensor, start: int, factor: float,
                      eos: torch.Tensor) -> torch.Tensor:
    """EOS's score raised by |score| * (factor ** (t - start) - 1) once t passes start (start counts the start
    token); the multiplier is computed in double precision and rounded once, as transformers' Python float."""
    if isinstance(t, int):
        if t <= start:
            return scores
        multiplier = torch.tensor(pow(factor, t - start) - 1, dtype=torch.float64)
    else:
        steps = (t - start).to(torch.float64)
        multiplier = torch.where(steps > 0, torch.pow(torch.tensor(factor, dtype=torch.float64), steps) - 1, 0.0)
        multiplier = multiplier[:, None]
    at_eos = scores.index_select(1, eos)
    penalty = at_eos.abs() * multiplier.to(scores.dtype)
    penalties = torch.zeros_like(scores).index_copy(1, eos, penalty.masked_fill(~torch.isfinite(at_eos), 0.0))
    return scores + penalties


def top_h_filter(scores: torch.Tensor, top_h: float) -> torch.Tensor:
    """Keep the leading tokens of the 100 best whose cumulative entropy stays within top_h of their entropy."""
    top_n = min(100, scores.shape[-1])
    top, where = torch.topk(scores, top_n, dim=-1, largest=True, sorted=True)
    dist = torch.distributions.Categorical(logits=top)
    probs = dist.probs
    keep = torch.cumsum(-probs * torch.log(probs), -1) <= (dist.entropy() * top_h)[:, None]
    keep[:, 0] = True
    return scores.masked_fill(~torch.zeros_like(scores, dtype=torch.bool).scatter(1, where, keep), -math.inf)


def min_p_filter(scores: torch.Tensor, min_p: float, keep: int) -> torch.Tensor:
    probs = scores.softmax(-1)
    drop = probs < min_p * probs.amax(-1, keepdim=True)
    drop.scatter_(-1, torch.topk(probs, min(keep, probs.shape[-1]), dim=-1).indices, False)
    return scores.masked_fill(drop, -math.inf)


def typical_filter(scores: torch.Tensor, mass: float, keep: int) -> torch.Tensor:
    """Keep the tokens whose surprise is closest to the entropy, until they hold `mass` of the probability."""
    logp = F.log_softmax(scores, -1)
    entropy = -(logp * logp.exp()).nansum(-1, keepdim=True)
    distance, order = torch.sort((-logp - entropy).abs(), descending=False)
    held = scores.gather(-1, order).softmax(-1).cumsum(-1)
    last = (held < mass).sum(1).clamp_(max=distance.shape[-1] - 1)
    drop = distance > distance.gather(1, last.view(-1, 1))
    drop[..., :keep] = False
    return scores.masked_fill(drop.scatter(1, order, drop), -math.inf)


def cutoff_filter(scores: torch.Tensor, cutoff: float | torch.Tensor, keep: int) -> torch.Tensor:
    """Drop the tokens of probability under cutoff, but never the `keep` best."""
    drop = scores.softmax(-1) < cutoff
    drop &= scores < torch.topk(scores, min(keep, scores.shape[-1]))[0][..., -1, None]
    return scores.masked_fill(drop, -math.inf)


def eta_filter(scores: torch.Tensor, eta: float, keep: int) -> torch.Tensor:
    """The epsilon cutoff with the threshold min(eta, sqrt(eta) * exp(-entropy))."""
    epsilon = torch.tensor(eta, device=scores.device)
    entropy = torch.distributions.Categorical(logits=scores).entropy()
    return cutoff_filter(scores, torch.min(epsilon, torch.sqrt(epsilon) * torch.exp(-entropy))[..., None], keep)


def process(ids: torch.Tensor, scores: torch.Tensor, rules: Rules, lengths: torch.Tensor | None = None,
            encoder: torch.Tensor | None = None) -> torch.Tensor:
    """ids [N, t] (start token included), scores [N, V] float32 -> processed scores [N, V]. With lengths [N],
    row i holds ids[i, :lengths[i]] and the rest of it is ignored. encoder [N, S]: each row's article ids,
    -1 on padding (needed by the encoder rules only)."""
    t = ids.shape[1] if lengths is None else lengths  # an int, or a tensor: the rules below take either
    if rules.reads_encoder and encoder is None:
        raise ValueError("encoder_repetition_penalty and encoder_no_repeat_ngram_size need the rows' input ids")
    if rules.sequence_bias:
        scores = sequence_bias(ids, scores, rules.sequence_bias, lengths)
    if rules.encoder_repetition_penalty != 1.0:
        scores = encoder_repetition_penalty(encoder, scores, rules.encoder_repetition_penalty)
    if rules.repetition_penalty != 1.0:
        own = ids if lengths is None else own_tokens(ids, lengths)
        scores = repetition_penalty(own, scores, rules.repetition_penalty)
    if rules.no_repeat_ngram_size > 0:
        scores = no_repeat_ngram(ids, scores, rules.no_repeat_ngram_size, lengths)
    if rules.encoder_no_repeat_ngram_size > 0:
        scores = encoder_no_repeat_ngram(ids, scores, encoder, rules.encoder_no_repeat_ngram_size, lengths)
    if rules.bad_words_ids:
        scores = bad_words(ids, scores, rules.bad_words_ids, rules.eos, lengths)
    if rules.eos:
        scores = ban(scores, t < rules.min_length, device_ids(tuple(rules.eos), scores.device))
    if rules.forced_bos_token_id is not None:
        scores = on_rows(t == 1, scores, lambda s: forced(s, rules.forced_bos_token_id))
    if rules.forced_eos_token_id is not None:
        scores = on_rows(t == rules.max_length - 1, scores, lambda s: forced(s, rules.forced_eos_token_id))
    if rules.remove_invalid_values:
        scores = remove_invalid(scores)
    if rules.exponential_decay_length_penalty is not None and rules.eos:
        start, factor = rules.exponential_decay_length_penalty
        scores = exponential_decay(scores, t, start + 1, factor, device_ids(tuple(rules.eos), scores.device))
    if rules.suppress_tokens:
        scores = ban(scores, True, device_ids(rules.suppress_tokens, scores.device))
    if rules.begin_suppress_tokens:
        scores = ban(scores, t == rules.begin_index, device_ids(rules.begin_suppress_tokens, scores.device))
    if rules.logits_processor:
        if lengths is not None:
            raise ValueError("logits_processor needs rows of one length: it does not run in flight")
        for rule in rules.logits_processor:
            scores = rule(ids, scores)
    if rules.do_sample:
        keep = rules.min_tokens_to_keep
        if rules.temperature != 1.0:
            scores = scores / rules.temperature
        if rules.top_h is not None:
            scores = top_h_filter(scores, rules.top_h)
        if rules.top_k:
            scores = top_k_filter(scores, max(rules.top_k, keep))
        if rules.top_p < 1.0:
            scores = top_p_filter(scores, rules.top_p, keep)
        if rules.min_p is not None:
            scores = min_p_filter(scores, rules.min_p, keep)
        if rules.typical_p < 1.0:
            scores = typical_filter(scores, rules.typical_p, keep)
        if 0.0 < rules.epsilon_cutoff < 1.0:
            scores = cutoff_filter(scores, rules.epsilon_cutoff, keep)
        if 0.0 < rules.eta_cutoff < 1.0:
            scores = eta_filter(scores, rules.eta_cutoff, keep)
    if rules.renormalize_logits:
        scores = F.log_softmax(scores, -1)
    return scores


def article_ids(input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The encoder rules' view of a batch of articles: their input ids, -1 where the mask says padding."""
    return torch.where(mask.bool(), input_ids, -1)


def rows_articles(articles: torch.Tensor | None, slot: torch.Tensor, group: int) -> torch.Tensor | None:
    """Each decoder row's article ids ([N * group, S]) from the articles' input rows (slot; -1: none)."""
    return None if articles is None else articles[slot.clamp(min=0)].repeat_interleave(group, 0)


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
