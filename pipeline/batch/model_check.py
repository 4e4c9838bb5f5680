"""The model a run uses, checked before any work: readable config, weights and tokenizer, a tokenizer that fits the
encoder's vocabulary, generation settings the model can run."""

from __future__ import annotations

from dataclasses import dataclass

from model import (
    EncoderDecoderConfig,
    GenerationConfig,
    Tokenizer,
    check_generation,
    check_vocabularies,
    load_tokenizers,
    read_configs,
)

from ..io import fingerprints, storage
from ..io.storage import Location
from .config import SummarizeConfig


@dataclass(frozen=True)
class ModelInfo:
    config: EncoderDecoderConfig
    generation: GenerationConfig  # the checkpoint's settings with the job's overrides applied
    tokenizer: Tokenizer
    fingerprint: str  # model_fingerprint of the checkpoint: weights, config and tokenizer files
    decoder_tokenizer_fingerprint: str | None = None  # tokenizer_fingerprint of a decoder tokenizer given apart


def inspect_model(config: SummarizeConfig) -> ModelInfo:
    """Config, generation settings, tokenizer and weights fingerprint of the checkpoint; ValueError naming the
    URL if unreadable."""
    url, opts = config.model, storage.client_options(config.model, config.storage_options)
    try:
        model_config, generation = read_configs(url, opts)
        folder = Location.of(url, opts)
        if not any(storage.exists(folder.child(n)) for n in ("model.safetensors", "model.safetensors.index.json")):
            raise FileNotFoundError("no model.safetensors or model.safetensors.index.json")
        tokenizer, decoder_tokenizer = load_tokenizers(url, opts)
        decoder_folder = Location.of(config.decoder_tokenizer, opts) if config.decoder_tokenizer else None
        fingerprint, decoder_fingerprint = fingerprints.model_fingerprint(folder), None
        if decoder_folder is not None:
            decoder_tokenizer = Tokenizer.from_pretrained(config.decoder_tokenizer, opts)
            decoder_fingerprint = fingerprints.tokenizer_fingerprint(decoder_folder)
    except Exception as e:  # whatever the cause, the job cannot start without the model
        raise ValueError(f"model {url} is not readable: {type(e).__name__}: {e}") from e
    limit = model_config.encoder.max_positions
    if config.max_input_tokens is not None and config.max_input_tokens > limit:
        raise ValueError(f"max_input_tokens {config.max_input_tokens} exceeds the encoder's "
                         f"usable positions {limit}")
    try:
        check_vocabularies(model_config, tokenizer, decoder_tokenizer)
    except ValueError as e:
        raise ValueError(f"model {url}: {e}") from e
    generation = generation.updated(**config.generation.settings())
    try:
        check_generation(model_config, generation)
    except ValueError as e:
        raise ValueError(f"generation settings do not fit model {url}: {e}") from e
    return ModelInfo(model_config, generation, tokenizer, fingerprint, decoder_fingerprint)
