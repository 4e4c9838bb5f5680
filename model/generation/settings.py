"""Generation settings resolved and checked as transformers resolves them: what every search runs on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import EncoderDecoderConfig, GenerationConfig
from .logits_rules import Rules

NEG = -1.0e9  # transformers' "removed" score for beams and hypotheses
DEFAULT_NEW_TOKENS = 20  # transformers' length when none is set


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

    @property
    def rows_per_article(self) -> int:
        """Decoder rows an article holds: its beams, or its sampled sequences."""
        return self.num_beams if self.num_beams > 1 else self.num_return_sequences


def check_generation(model_config: EncoderDecoderConfig, config: GenerationConfig, logits_processor=(),
                     stopping_criteria=()) -> Plan:
    """Resolve lengths and ids as transformers does (max_new_tokens wins over max_length) and reject bad settings
    for a model of `model_config` (checkable before any weights load)."""
    c, positions, vocab = config, model_config.decoder.max_positions, model_config.decoder.vocab_size
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
        raise ValueError(f"max_length {max_length} exceeds the decoder's {positions} usable positions "
                         f"(max_position_embeddings {model_config.decoder.max_position_embeddings})")
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
                  min_tokens_to_keep=len(eos) + 1 if c.num_beams > 1 else 1, **checked_rules(c, vocab),
                  logits_processor=tuple(logits_processor or ()), stopping_criteria=tuple(stopping_criteria or ()))
    if c.num_beams > 1 and rules.stopping_criteria:
        raise ValueError("stopping_criteria run with greedy search and sampling (num_beams=1) only")
    fill = c.pad_token_id if c.pad_token_id is not None else eos[0] if eos else -1
    return Plan(rules, start, fill, c.num_beams, c.num_return_sequences, c.length_penalty, c.early_stopping)


def checked_rules(c: GenerationConfig, vocab: int) -> dict[str, Any]:
    """The processors and warpers beyond the classic ones, checked as transformers checks them."""
    if c.encoder_repetition_penalty <= 0:
        raise ValueError(f"encoder_repetition_penalty must be > 0, got {c.encoder_repetition_penalty}")
    if c.encoder_no_repeat_ngram_size < 0:
        raise ValueError(f"encoder_no_repeat_ngram_size must be >= 0, got {c.encoder_no_repeat_ngram_size}")
    biases = []
    for entry in c.sequence_bias or []:
        if not (isinstance(entry, list | tuple) and len(entry) == 2 and isinstance(entry[0], list | tuple)
                and entry[0] and all(isinstance(i, int) and 0 <= i < vocab for i in entry[0])
                and isinstance(entry[1], int | float)):
            raise ValueError(f"sequence_bias entries must be [[token ids in the vocabulary of {vocab}], bias], "
                             f"got {entry!r}")
        biases.append((tuple(entry[0]), float(entry[1])))
    if c.sequence_bias is not None and not biases:
        raise ValueError("sequence_bias must be a non-empty list of [[token ids], bias] (or a {tuple: bias} dict)")
    decay = c.exponential_decay_length_penalty
    if decay is not None:
        if not (isinstance(decay, list | tuple) and len(decay) == 2 and isinstance(decay[0], int)):
            raise ValueError(f"exponential_decay_length_penalty must be [start index, decay factor], got {decay!r}")
        decay = (int(decay[0]), float(decay[1]))
    for name in ("suppress_tokens", "begin_suppress_tokens"):
        ids = getattr(c, name)
        if ids is not None and not all(isinstance(i, int) and i >= 0 for i in ids):
            raise ValueError(f"{name} must be a list of token ids, got {ids!r}")
    if c.do_sample:
        if c.top_h is not None and not 0 < c.top_h <= 1:
            raise ValueError(f"top_h must be in (0, 1], got {c.top_h}")
        if c.min_p is not None and not 0 <= c.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {c.min_p}")
        if c.typical_p < 1.0 and not c.typical_p > 0:
            raise ValueError(f"typical_p must be > 0 and < 1, got {c.typical_p}")
        for name in ("epsilon_cutoff", "eta_cutoff"):
            if not 0.0 <= getattr(c, name) < 1.0:
                raise ValueError(f"{name} must be > 0 and < 1 (0: off), got {getattr(c, name)}")
    return dict(
        sequence_bias=tuple(biases), encoder_repetition_penalty=c.encoder_repetition_penalty,
        encoder_no_repeat_ngram_size=c.encoder_no_repeat_ngram_size, remove_invalid_values=c.remove_invalid_values,
        exponential_decay_length_penalty=decay,
        # ids past the vocabulary suppress nothing, as in transformers
        suppress_tokens=tuple(i for i in c.suppress_tokens or () if i < vocab),
        begin_suppress_tokens=tuple(i for i in c.begin_suppress_tokens or () if i < vocab),
        begin_index=1 if c.forced_bos_token_id is None else 2, top_h=c.top_h, min_p=c.min_p, typical_p=c.typical_p,
        epsilon_cutoff=c.epsilon_cutoff, eta_cutoff=c.eta_cutoff, renormalize_logits=c.renormalize_logits)
