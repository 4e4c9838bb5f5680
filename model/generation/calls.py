"""generate: greedy, sampling and beam search for the encoder-decoder, with transformers' semantics and tokens.

What differs from transformers is only the layout: the encoder and the cross-attention keys/values run once
per article and are shared by all its beams (the decoder stacks the beams' queries), the self-attention
cache is preallocated and reordered in place, finished articles leave the running batch (how soon depends
on the device: decode_policy), and a batch is sorted by length and cut by a token budget so that little
padding is encoded. In flight (inflight.py), one table of article places refills itself from all the
inputs instead of running each batch to its slowest article.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..config import EncoderDecoderConfig, GenerationConfig
from .beam_search import BeamSearch
from .cross_kv import CrossKVBuffers
from .decode_policy import DecodePolicy, bucket, policy_for
from .decode_steps import DecodeStep, Seq2Seq, decode_step, static_decode_step
from .greedy import GreedySearch
from .inflight import run_inflight
from .logits_rules import article_ids
from .loop import run
from .search import Results
from .settings import Plan, check_generation
from .stats import DecodeStats

DEFAULT_BATCH_TOKENS = 65536  # input tokens x decoder rows per article, per search


def batches(lengths: Sequence[int] | np.ndarray, rows_per_article: int, max_tokens: int | None,
            max_articles: int | None = None) -> list[np.ndarray]:
    """Indices sorted longest first, cut into batches of at most max_tokens (articles x rows_per_article x
    the batch's longest input) and max_articles; an article over the budget alone still gets a batch."""
    lengths = np.asarray(lengths)
    order = np.argsort(-lengths, kind="stable")
    out, start = [], 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)
        fit = len(order) if max_tokens is None else max(1, max_tokens // (longest * rows_per_article))
        fit = fit if max_articles is None else min(fit, max_articles)
        out.append(order[start:start + fit])
        start += fit
    return out


def check_caps(**caps: int | None) -> None:
    """ValueError unless each cap is None (no cap) or a whole number >= 1."""
    for name, value in caps.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a whole number >= 1 (or None: no cap), got {value!r}")


def too_long(config: EncoderDecoderConfig, length: int) -> str | None:
    """Why an input of `length` tokens cannot be encoded, if it cannot."""
    limit = config.encoder.max_positions
    if length > limit:
        return (f"input of {length} tokens is longer than the encoder's {limit} usable positions "
                f"(max_position_embeddings {config.encoder.max_position_embeddings}): truncate it")
    return None


def check_inputs(config: EncoderDecoderConfig, input_ids: torch.Tensor, mask: torch.Tensor) -> None:
    if input_ids.dim() != 2 or input_ids.shape[0] == 0 or mask.shape != input_ids.shape:
        raise ValueError(f"input_ids must be [batch, length] with at least one row, and attention_mask of the same "
                         f"shape; got {tuple(input_ids.shape)} and {tuple(mask.shape)}")
    used = mask.any(0).nonzero()
    problem = too_long(config, int(used.max()) + 1 if used.numel() else 0)  # the widest the encoder runs over
    if problem:
        raise ValueError(problem)


@torch.inference_mode()
def generate(model: Seq2Seq, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
             token_type_ids: torch.Tensor | None = None, return_scores: bool = False, seed: int | None = None,
             generator: torch.Generator | None = None, max_batch_tokens: int | None = DEFAULT_BATCH_TOKENS,
             step: DecodeStep | None = None, policy: str | DecodePolicy | None = None,
             max_batch_articles: int | None = None, inflight: bool = False, stats: DecodeStats | None = None,
             generation_config: Any = None, return_dict_in_generate: bool = False, output_scores: bool = False,
             logits_processor: Sequence[Callable] | None = None, stopping_criteria: Sequence[Callable] | None = None,
             **kwargs: Any):
    """Summaries [B * num_return_sequences, T] starting with decoder_start_token_id, in input order.

    kwargs are generation settings with transformers' names, over model.generation_config. With
    return_scores=True also returns [B * num_return_sequences] scores: beam search's length-penalised
    scores (transformers' sequences_scores), else the sum of the chosen tokens' processed log-probs.
    max_batch_tokens caps input tokens x beams encoded and searched together (None: all at once) and
    max_batch_articles the articles (None: no cap); step
    replaces the one-token decode; policy ("cpu" or "gpu") overrides the device's decode policy.
    token_type_ids go to the encoder, as transformers passes a BERT tokenizer's output on.
    inflight=True decodes through one table of article places refilled as articles finish (inflight.py;
    the budget sizes the table, and step must take per-row positions: by default the static step) instead of
    one call per batch. stats, if given, counts the decode steps and row-steps (a host read per step).

    As in transformers: generation_config (ours, or any object with to_dict(), such as transformers') overrides
    the model's with the values it sets, and kwargs override both; return_dict_in_generate returns a
    GenerateOutput, with output_scores its sequences_scores (beam search); logits_processor callables
    (input_ids, scores) -> scores run after the built-in processors, before the sampling warpers, and
    stopping_criteria (input_ids, None) -> [N] bool end rows (greedy and sampling), both on the rows of
    the running batch (sorted by input length, finished articles gone) and not in flight.
    """
    config = model.generation_config
    if generation_config is not None:
        config = config.updated(**set_values(generation_config))
    if (logits_processor or stopping_criteria) and inflight:
        raise ValueError("logits_processor and stopping_criteria need rows of one length: use inflight=False")
    p = dataclasses.replace(check_generation(model.config, config.updated(**kwargs), logits_processor,
                                             stopping_criteria), scores=return_scores or output_scores)
    if return_dict_in_generate and output_scores and p.num_beams == 1:
        raise ValueError("output_scores gives sequences_scores for beam search; greedy search and sampling keep "
                         "no per-step scores (return_scores=True gives each sequence's sum of log-probs)")
    check_caps(max_batch_tokens=max_batch_tokens, max_batch_articles=max_batch_articles)
    device = model.device
    decode_policy = policy_for(device, policy)
    if seed is not None:
        generator = torch.Generator(device).manual_seed(seed)
    input_ids = input_ids.to(device)
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device)
    check_inputs(model.config, input_ids, mask)
    types = None if token_type_ids is None else token_type_ids.to(device)
    search = BeamSearch if p.num_beams > 1 else GreedySearch
    b, g, m = input_ids.shape[0], p.num_return_sequences, p.rules.max_length
    results = Results(b, g, m, p.fill, device)
    if inflight:
        run_inflight(model, search, p, decode_policy, step or static_decode_step(model), input_ids, mask, types,
                     max_batch_tokens, max_batch_articles, results, generator, stats)
    else:
        run_calls(model, search, p, decode_policy, step or decode_step(model), input_ids, mask, types,
                  max_batch_tokens, max_batch_articles, results, generator, stats)
    seqs, scores, lengths = results.tensors
    out = seqs[:, :, : int(lengths.max())].reshape(b * g, -1)
    if return_dict_in_generate:
        return GenerateOutput(out, scores.reshape(-1) if output_scores else None)
    return (out, scores.reshape(-1)) if return_scores else out


@dataclasses.dataclass
class GenerateOutput:
    """transformers' return_dict_in_generate output: the sequences, and with output_scores (beam search) each
    one's length-penalised score."""

    sequences: torch.Tensor
    sequences_scores: torch.Tensor | None = None


def set_values(config: Any) -> dict[str, Any]:
    """The settings a generation config sets: those not None and not at our defaults (transformers 5 merges a
    passed config over the model's the same way). Refused keys are refused, unknown ones warned about."""
    own = config if isinstance(config, GenerationConfig) else GenerationConfig.from_dict(config.to_dict())
    default = GenerationConfig()
    return {f.name: getattr(own, f.name) for f in dataclasses.fields(own)
            if f.name != "extra" and getattr(own, f.name) != getattr(default, f.name)}


def run_calls(model: Seq2Seq, search_type, p: Plan, policy: DecodePolicy, step: DecodeStep, input_ids: torch.Tensor,
              mask: torch.Tensor, types: torch.Tensor | None, budget: int | None, max_articles: int | None,
              results: Results, generator: torch.Generator | None = None, stats: DecodeStats | None = None) -> None:
    """Every input row decoded in batches (`batches`: longest first, cut by the budget), each run to its end."""
    device = input_ids.device
    g, m = p.num_return_sequences, p.rules.max_length
    group = p.rows_per_article
    for part in batches(mask.sum(1).tolist(), group, budget, max_articles):
        rows = torch.from_numpy(part).to(device)
        used = mask[rows].any(0).nonzero()
        width = int(used.max()) + 1 if used.numel() else 1
        ids, part_mask = input_ids[rows, :width], mask[rows, :width]
        articles = len(part)
        padded = bucket(articles) if policy.row_buckets else articles
        memory_mask = None if bool(part_mask.all()) else part_mask.bool()[:, None, None, :]
        part_types = None if types is None else types[rows, :width]
        memory = CrossKVBuffers(model.memory_kv(model.encode(ids, part_mask, part_types)), memory_mask, padded)
        state = search_type(p, policy, articles, padded, device, generator)
        if p.rules.reads_encoder:
            state.articles = article_ids(ids, part_mask)
        part_results = Results(articles, g, m, p.fill, device)
        run(state, memory, model.new_cache(padded * group, m), step, policy, m, part_results, stats)
        for out, value in zip(results.tensors, part_results.tensors, strict=True):
            out[rows] = value
