"""pipeline("summarization", model=...): transformers' one-line way in, without Ray.

The texts of one call are tokenized together, then summarized by TextGenerator: sorted by length, cut into
generate calls by rows and token budget, out-of-memory calls split in half. Results keep the input order and
transformers' shapes; an input that is not a string, or is empty, gets a per-item error instead of failing
the call.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from ..architecture import EncoderDecoderModel
from ..devices import run_device, run_dtype
from ..generation import DEFAULT_BATCH_TOKENS, check_caps
from ..tokenization import Tokenizer, load_tokenizers
from .generator import TextGenerator, check_vocabularies

OUTPUT_KEYS = {"summarization": "summary_text", "translation": "translation_text",
               "text2text-generation": "generated_text"}


class Text2TextPipeline:
    """`pipe(text_or_texts, **generate_kwargs)`: one dict per input, in input order, with the task's key
    (`summary_text`, `translation_text`, `generated_text`), or that key None and `error` for a bad input.
    With num_return_sequences > 1, transformers' shapes: a list of that many dicts (best first) for one
    string, a list of such lists for a list. return_scores=True (ours: transformers' pipeline has no such
    flag) adds each dict's "score" (TextGenerator's: the length-penalised beam score, or the mean
    log-probability of the generated tokens for greedy search and sampling; None with an error)."""

    def __init__(self, task: str, model: EncoderDecoderModel, tokenizer: Tokenizer, batch_size: int = 64,
                 max_batch_tokens: int | None = DEFAULT_BATCH_TOKENS, decoder_tokenizer: Tokenizer | None = None,
                 batching: str = "auto"):
        self.task, self.key = task, OUTPUT_KEYS[task]
        self.model, self.tokenizer, self.decoder_tokenizer = model, tokenizer, decoder_tokenizer or tokenizer
        check_vocabularies(model.config, self.tokenizer, self.decoder_tokenizer)
        check_caps(batch_size=batch_size, max_batch_tokens=max_batch_tokens)
        self.batch_size, self.max_batch_tokens, self.batching = batch_size, max_batch_tokens, batching

    def __call__(self, inputs: str | Sequence[str | None], truncation: bool = True, max_input_tokens: int | None = None,
                 add_special_tokens: bool = True, return_scores: bool = False,
                 **generate_kwargs: Any) -> list[dict[str, Any]] | list[list]:
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        generator = TextGenerator(self.model, self.tokenizer, generate_kwargs, self.batch_size, self.max_batch_tokens,
                                  decoder_tokenizer=self.decoder_tokenizer, batching=self.batching)
        g = generator.sequences
        scored = {"score": None} if return_scores else {}
        out: list[list[dict[str, Any]]] = [[{self.key: None, **scored, "error": problem(t)}] * g for t in texts]
        good = [i for i, items in enumerate(out) if items[0]["error"] is None]
        limit = self.model.config.encoder.max_positions
        if max_input_tokens is not None and not 0 < max_input_tokens <= limit:
            raise ValueError(f"max_input_tokens must be in 1..{limit} (the encoder's usable positions), "
                             f"got {max_input_tokens}")
        # truncated to what the encoder can take (not the tokenizer's model_max_length, often 1e30); without
        # truncation a longer input gets a per-item error naming both lengths
        ids = self.tokenizer.encode_batch([texts[i] for i in good], max_input_tokens or limit, truncation,
                                          add_special_tokens)
        results = generator(ids)
        for n, i in enumerate(good):
            out[i] = [{self.key: r.text, **({"score": r.score} if return_scores else {}),
                       **({} if r.error is None else {"error": r.error})} for r in results[n * g:(n + 1) * g]]
        if isinstance(inputs, str):
            return out[0]
        return [items[0] for items in out] if g == 1 else out


def problem(text: object) -> str | None:
    if not isinstance(text, str):
        return f"not a string: {type(text).__name__}"
    if not text.strip():
        return "empty text"
    return None


def pipeline(task: str, model: str | os.PathLike | EncoderDecoderModel, tokenizer: str | os.PathLike | Tokenizer |
             None = None, device: torch.device | str | int | None = "auto", dtype: torch.dtype | str = "auto",
             batch_size: int = 64, max_batch_tokens: int | None = DEFAULT_BATCH_TOKENS,
             storage_options: dict[str, Any] | None = None,
             decoder_tokenizer: str | os.PathLike | Tokenizer | None = None,
             batching: str = "auto") -> Text2TextPipeline:
    """A summarization, translation or text2text-generation pipeline on a checkpoint folder (local or fsspec
    URL) or a loaded model. device "auto" is the GPU when there is one; dtype "auto" bfloat16 there and float32
    on a CPU. `tokenizer` (the inputs') defaults to the model's folder; the outputs are decoded with
    `decoder_tokenizer`, by default the folder's `decoder_tokenizer/` when the two vocabularies differ, else
    the same tokenizer. batching is TextGenerator's (model.BATCHING)."""
    task = "translation" if task.startswith("translation") else task  # translation_en_to_de and the like
    if task not in OUTPUT_KEYS:
        raise ValueError(f"task must be one of {sorted(OUTPUT_KEYS)}, got {task!r}")
    where = run_device(device)
    if isinstance(model, EncoderDecoderModel):
        if tokenizer is None:
            raise ValueError("pass tokenizer= (a Tokenizer or a folder) with a loaded model")
        loaded = model.to(where).eval()
    else:
        loaded = EncoderDecoderModel.from_pretrained(model, dtype=run_dtype(dtype, where), device=where,
                                                     storage_options=storage_options)
        tokenizer = model if tokenizer is None else tokenizer
    encoder_side, decoder_side = ((tokenizer, tokenizer) if isinstance(tokenizer, Tokenizer)
                                  else load_tokenizers(tokenizer, storage_options))
    if decoder_tokenizer is not None:
        decoder_side = (decoder_tokenizer if isinstance(decoder_tokenizer, Tokenizer)
                        else Tokenizer.from_pretrained(decoder_tokenizer, storage_options))
    return Text2TextPipeline(task, loaded, encoder_side, batch_size, max_batch_tokens, decoder_side, batching)
