"""Generation settings resolved and checked as transformers resolves them: what every search runs on."""

from __future__ import annotations

from dataclasses import dataclass

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


def check_generation(model_config: EncoderDecoderConfig, config: GenerationConfig) -> Plan:
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
                  min_tokens_to_keep=len(eos) + 1 if c.num_beams > 1 else 1)
    fill = c.pad_token_id if c.pad_token_id is not None else eos[0] if eos else -1
    return Plan(rules, start, fill, c.num_beams, c.num_return_sequences, c.length_penalty, c.early_stopping)
