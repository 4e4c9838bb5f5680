"""The summarize job's typed config, validated before any cluster work starts.

`SummarizeConfig` holds no command-line notions, only what the dataflow needs: the nightly job builds one
per partition.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..cluster.pool import NodeType, Replicas

DTYPES = ("auto", "float32", "float16", "bfloat16")  # auto: bfloat16 on a GPU, float32 on a CPU


@dataclass(frozen=True)
class GenerationOverrides:
    """Generation settings that replace the checkpoint's generation_config.json (transformers' names and
    meanings); None keeps the checkpoint's. `seed` seeds sampling, each generate call the same way."""

    num_beams: int | None = None
    max_length: int | None = None
    min_length: int | None = None
    max_new_tokens: int | None = None
    min_new_tokens: int | None = None
    length_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    early_stopping: bool | str | None = None
    repetition_penalty: float | None = None
    do_sample: bool | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    bad_words_ids: tuple[tuple[int, ...], ...] | None = None
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | None = None
    num_return_sequences: int | None = None  # > 1: one output row per sequence, with its rank
    decoder_start_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("num_beams", "max_length", "max_new_tokens", "num_return_sequences"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        for name in ("min_length", "min_new_tokens", "no_repeat_ngram_size", "top_k"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        for name in ("temperature", "repetition_penalty"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_length is not None and self.min_length is not None and self.min_length > self.max_length:
            raise ValueError(f"min_length {self.min_length} is larger than max_length {self.max_length}")
        if self.bad_words_ids is not None:  # lists from JSON, kept as tuples: the config stays hashable
            if not all(isinstance(w, (list, tuple)) and w and all(isinstance(i, int) for i in w)
                       for w in self.bad_words_ids):
                raise ValueError("bad_words_ids must be a list of non-empty lists of token ids")
            object.__setattr__(self, "bad_words_ids", tuple(tuple(w) for w in self.bad_words_ids))
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def settings(self) -> dict[str, Any]:
        """The set generation settings, over the checkpoint's generation config (the seed apart)."""
        out = {name: v for name in self.names() if name != "seed" and (v := getattr(self, name)) is not None}
        if "bad_words_ids" in out:
            out["bad_words_ids"] = [list(w) for w in out["bad_words_ids"]]
        if isinstance(out.get("eos_token_id"), tuple):
            out["eos_token_id"] = list(out["eos_token_id"])
        return out

    def as_kwargs(self) -> dict[str, Any]:
        """The set settings and the seed, as keyword arguments of `EncoderDecoderModel.generate`."""
        return {**self.settings(), **({"seed": self.seed} if self.seed is not None else {})}


@dataclass(frozen=True)
class SummarizeConfig:
    """One batch-summarization run: Parquet shards in, Parquet summaries out."""

    input: str  # a Parquet file, a folder of shards or a glob, at any fsspec URL
    output: str  # a folder URL; data files, then the _SUCCESS.json marker
    model: str  # an HF-layout encoder-decoder folder (local or fsspec URL) with its tokenizer files
    decoder_tokenizer: str | None = None  # the decoder's tokenizer folder, for a model folder that holds only the
    # encoder's and a decoder with another vocabulary (default: the folder's decoder_tokenizer/, else the same)
    text_column: str = "article"
    id_column: str | None = None  # None: use "id" if the input has it, else derive one from path + row
    passthrough_columns: tuple[str, ...] = ()
    max_input_tokens: int | None = None  # None: the encoder's usable positions
    add_special_tokens: bool = True  # False: the text's tokens only (transformers' add_special_tokens=False)
    dtype: str = "auto"
    generation: GenerationOverrides = field(default_factory=GenerationOverrides)
    replicas: Replicas = field(default_factory=Replicas)
    storage_options: dict[str, Any] = field(default_factory=dict)  # fsspec options for input, output and model
    overwrite: bool = False
    keep_oom_errors: bool = False  # rows that ran out of device memory even alone are final errors; False: the
    # output is left without its marker and the next run summarizes their units again
    only_shards: tuple[str, ...] = ()  # summarize only these shards (names relative to the input folder); (): all
    rows_per_file: int = 10_000  # rows per output file (and per unit of work); smaller shards give one file each
    actor_start_timeout_s: float = 600.0  # fail if the minimum replica pool is not up by then
    worker_wait_s: float = 0.0  # > 0: ask the autoscaler for the replicas' nodes and wait this long for them
    node_types: tuple[NodeType, ...] = ()  # what the autoscaler may start: the pool is fitted to what they reach

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.max_input_tokens is not None and self.max_input_tokens < 3:
            raise ValueError(f"max_input_tokens must be >= 3 (a token and a tokenizer's special tokens), "
                             f"got {self.max_input_tokens}")
        if self.rows_per_file < 1:
            raise ValueError(f"rows_per_file must be >= 1, got {self.rows_per_file}")
        if not self.text_column:
            raise ValueError("text_column is empty")
        if self.input.rstrip("/") == self.output.rstrip("/"):
            raise ValueError(f"input and output are the same URL: {self.input}")
