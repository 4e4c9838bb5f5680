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
    """Generation settings that replace the checkpoint's generation_config.json; None keeps the checkpoint's."""

    num_beams: int | None = None
    max_length: int | None = None
    min_length: int | None = None
    length_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    early_stopping: bool | None = None

    def __post_init__(self) -> None:
        for name in ("num_beams", "max_length"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        for name in ("min_length", "no_repeat_ngram_size"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if self.max_length is not None and self.min_length is not None and self.min_length > self.max_length:
            raise ValueError(f"min_length {self.min_length} is larger than max_length {self.max_length}")

    def as_kwargs(self) -> dict[str, Any]:
        """The set settings only, as keyword arguments of `EncoderDecoderModel.generate`."""
        return {f.name: v for f in dataclasses.fields(self) if (v := getattr(self, f.name)) is not None}


@dataclass(frozen=True)
class SummarizeConfig:
    """One batch-summarization run: Parquet shards in, Parquet summaries out."""

    input: str  # a Parquet file, a folder of shards or a glob, at any fsspec URL
    output: str  # a folder URL; data files, then the _SUCCESS.json marker
    model: str  # an HF-layout encoder-decoder folder (local or fsspec URL) with its tokenizer files
    text_column: str = "article"
    id_column: str | None = None  # None: use "id" if the input has it, else derive one from path + row
    passthrough_columns: tuple[str, ...] = ()
    max_input_tokens: int | None = None  # None: the encoder's max_position_embeddings
    add_special_tokens: bool = True  # False: the text's tokens only (transformers' add_special_tokens=False)
    dtype: str = "auto"
    generation: GenerationOverrides = field(default_factory=GenerationOverrides)
    replicas: Replicas = field(default_factory=Replicas)
    storage_options: dict[str, Any] = field(default_factory=dict)  # fsspec options for input, output and model
    overwrite: bool = False
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
