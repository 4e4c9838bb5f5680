"""A run's identity: everything that determines its summaries, recorded with the output and compared by every
caller (resume, re-run, --overwrite, the nightly job's reuse and stale check) so that no output mixes two."""

from __future__ import annotations

import dataclasses
from typing import Any

from model import GenerationConfig, run_dtype

from ..io import fingerprints
from .config import SummarizeConfig
from .inputs import InputPlan
from .model_check import ModelInfo


def max_tokens(config: SummarizeConfig, info: ModelInfo) -> int:
    return config.max_input_tokens or info.config.encoder.max_positions


def replica_dtype(config: SummarizeConfig) -> str:
    """The dtype the replicas compute in, the one the identity records: `config.dtype`, or for "auto" bfloat16
    on GPU replicas (`config.replicas.gpus` > 0) and float32 on CPU ones."""
    device = "cuda" if config.replicas.gpus > 0 else "cpu"
    return str(run_dtype(config.dtype, device)).removeprefix("torch.")


def generation_settings(generation: GenerationConfig) -> dict[str, Any]:
    """Every setting that `generate` honours, as resolved from the checkpoint and the job's overrides."""
    return {f.name: getattr(generation, f.name) for f in dataclasses.fields(generation) if f.name != "extra"}


def run_settings(config: SummarizeConfig, info: ModelInfo) -> dict[str, Any]:
    """Everything besides the input that determines the summaries (not how many replicas or how big the batches).
    The one source of a run's identity: resume, re-runs and --overwrite compare it (with the input, in
    `run_identity`), and so do the nightly job's reuse of unchanged shards and its stale check."""
    return {
        "identity_version": fingerprints.IDENTITY_VERSION, "model": config.model, "model_sha256": info.fingerprint,
        "text_column": config.text_column, "id_column": config.id_column,
        "passthrough_columns": list(config.passthrough_columns), "max_input_tokens": max_tokens(config, info),
        "add_special_tokens": config.add_special_tokens, "dtype": replica_dtype(config),
        "decoder_tokenizer": config.decoder_tokenizer, "decoder_tokenizer_sha256": info.decoder_tokenizer_fingerprint,
        "generation": generation_settings(info.generation), "seed": config.generation.seed,
    }


def run_identity(config: SummarizeConfig, plan: InputPlan, info: ModelInfo) -> dict[str, Any]:
    """The run's settings, its input (root and files) and the id column resolved from the input."""
    return {**run_settings(config, info), "input": config.input,
            "inputs_sha256": fingerprints.inputs_digest(plan.shards), "id_column": plan.id_column}
