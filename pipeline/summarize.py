"""Batch summarization on Ray Data: Parquet shards -> tokenize -> Summarizer actor pool -> Parquet.

`run(config)` checks everything that can make the job meaningless before any actor starts (shards,
columns, duplicate ids, model, output), then streams the dataflow with Ray Data's job-level checkpointing
keyed on the id column: a re-run of a job that died writes only the rows that are missing. A complete output
ends with `_SUCCESS.json`; a re-run then writes nothing. `--overwrite` runs into a staging folder and
replaces the old output only once the new one is complete.
"""

from __future__ import annotations

import dataclasses
import posixpath
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import ray.data
from ray.data import ActorPoolStrategy
from ray.data.checkpoint import CheckpointConfig
from ray.data.checkpoint.checkpoint_writer import PENDING_CHECKPOINT_SUFFIX

from model import EncoderDecoderConfig, GenerationConfig, Tokenizer, read_configs

from . import storage
from .config import Replicas, SummarizeConfig
from .stages import Summarizer, tokenize

DEFAULT_ID_COLUMN = "id"
DERIVED_ID_COLUMN = "row_hash"  # Ray's include_row_hash: uint64 of (file path, row number), stable across reads
# Logical CPUs left free for read/tokenize/write tasks and the checkpoint-filter actor of a resumed run;
# without them a resumed run can wait forever for a CPU that the model actors hold.
CPU_HEADROOM = 2


@dataclass(frozen=True)
class InputPlan:
    """What preflight found at the input URL."""

    shards: list[str]  # protocol-less paths for the pyarrow filesystem
    columns: list[str]
    rows: int
    id_column: str
    derived_id: bool


@dataclass(frozen=True)
class ModelInfo:
    config: EncoderDecoderConfig
    generation: GenerationConfig  # the checkpoint's settings with the job's overrides applied
    tokenizer: Tokenizer


@dataclass
class SummarizeResult:
    """What a run did; the job prints it."""

    status: str  # "complete" (this run wrote the rest), "already-complete" (nothing to do)
    output: str
    rows_in: int
    rows_out: int = 0
    rows_written: int = 0  # by this run (fewer than rows_out after a resume)
    failed_by_reason: dict[str, int] = field(default_factory=dict)
    truncated: int = 0
    rows_by_replica: dict[str, int] = field(default_factory=dict)
    tokens_by_replica: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    replicas: Replicas | None = None
    generation: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    stats: str = ""


def sibling(url: str, folder: str) -> str:
    """`s3://b/x/out` -> `s3://b/x/<folder>/out`: hidden from readers of `s3://b/x/`, next to the output."""
    parent, name = posixpath.split(url.rstrip("/"))
    return storage.join(parent, folder, name)


def checkpoint_url(output: str) -> str:
    return sibling(output, "_checkpoints")


def staging_url(output: str) -> str:
    return sibling(output, "_staging")


def _shard_schema(fs: Any, path: str) -> tuple[pa.Schema, int]:
    try:
        with fs.open(path, "rb") as f:
            meta = pq.ParquetFile(f).metadata
            return meta.schema.to_arrow_schema(), meta.num_rows
    except Exception as e:  # pyarrow raises several types for a damaged file; all mean the same here
        raise ValueError(f"corrupt Parquet shard {storage.to_url(fs, path)}: {e}") from e


def inspect_input(config: SummarizeConfig) -> InputPlan:
    """Shards, schema, row count and id column; every problem raises naming the shard or the columns."""
    shards = storage.list_parquet(config.input, config.storage_options)
    fs, _ = storage.url_to_fs(config.input, config.storage_options)
    with ThreadPoolExecutor(8) as pool:
        schemas = list(pool.map(lambda p: _shard_schema(fs, p), shards))
    columns = list(dict.fromkeys(name for schema, _ in schemas for name in schema.names))
    needed = [config.text_column, *config.passthrough_columns]
    if config.id_column is not None:
        needed.append(config.id_column)
    for (schema, _), shard in zip(schemas, shards, strict=True):
        missing = [c for c in needed if c not in schema.names]
        if missing:
            raise ValueError(f"input shard {storage.to_url(fs, shard)} has no column(s) {', '.join(missing)}; "
                             f"its columns are: {', '.join(schema.names)}")
    rows = sum(n for _, n in schemas)
    id_column = config.id_column or (DEFAULT_ID_COLUMN if all(DEFAULT_ID_COLUMN in s.names for s, _ in schemas)
                                     else None)
    if id_column is None:
        return InputPlan(shards, columns, rows, DERIVED_ID_COLUMN, derived_id=True)
    with ThreadPoolExecutor(8) as pool:
        ids = pa.chunked_array([c for t in pool.map(lambda p: pq.read_table(p, columns=[id_column], filesystem=fs),
                                                    shards) for c in t.column(0).chunks])
    if ids.null_count:
        raise ValueError(f"{ids.null_count} row(s) have a null id in column {id_column!r}")
    counts = pc.value_counts(ids)
    dupes = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(dupes):
        examples = ", ".join(repr(v) for v in dupes.field("values")[:5].to_pylist())
        raise ValueError(f"{len(dupes)} duplicate id(s) in column {id_column!r} of the input, e.g. {examples}; "
                         "ids must be unique for exactly-once output")
    return InputPlan(shards, columns, rows, id_column, derived_id=False)


def inspect_model(config: SummarizeConfig) -> ModelInfo:
    """Config, generation settings and tokenizer of the checkpoint; ValueError naming the URL if unreadable."""
    url, opts = config.model, config.storage_options
    try:
        model_config, generation = read_configs(url, opts)
        if not any(storage.exists(storage.join(url, n), opts)
                   for n in ("model.safetensors", "model.safetensors.index.json")):
            raise FileNotFoundError("no model.safetensors or model.safetensors.index.json")
        tokenizer = Tokenizer.from_pretrained(url, opts)
    except Exception as e:  # whatever the cause, the job cannot start without the model
        raise ValueError(f"model {url} is not readable: {type(e).__name__}: {e}") from e
    limit = model_config.encoder.max_position_embeddings
    if config.max_input_tokens is not None and config.max_input_tokens > limit:
        raise ValueError(f"max_input_tokens {config.max_input_tokens} exceeds the encoder's "
                         f"max_position_embeddings {limit}")
    return ModelInfo(model_config, generation.updated(**config.generation.as_kwargs()), tokenizer)


def fit_replicas(replicas: Replicas, resources: dict[str, float]) -> tuple[Replicas, list[str]]:
    """Shrink the pool's maximum to what the cluster holds, or raise if even the minimum does not fit."""
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    limits = [(cpus - CPU_HEADROOM) / replicas.cpus] if replicas.cpus else []
    if replicas.gpus:
        limits.append(gpus / replicas.gpus)
    fit = int(min(limits) + 1e-9)
    if fit < replicas.min:
        raise RuntimeError(
            f"{replicas.min} replica(s) with {replicas.cpus} CPU and {replicas.gpus} GPU each, plus {CPU_HEADROOM} "
            f"CPUs for reading, tokenizing, writing and checkpoint filtering, do not fit the cluster "
            f"({cpus:g} CPU, {gpus:g} GPU); lower --replicas, --cpus-per-replica or --gpus-per-replica")
    if fit >= replicas.max:
        return replicas, []
    return dataclasses.replace(replicas, max=fit), [f"replicas capped at {fit} (the cluster has {cpus:g} CPU, "
                                                    f"{gpus:g} GPU)"]


def cluster_resources(replicas: Replicas, wait_s: float) -> dict[str, float]:
    """The cluster's resources; with wait_s > 0, first ask the autoscaler for the minimum pool (a cluster that
    scales GPU workers from zero has none at submit time) and wait up to wait_s for it to appear."""
    resources = ray.cluster_resources()
    if wait_s <= 0:
        return resources
    from ray.autoscaler.sdk import request_resources

    bundle = {k: v for k, v in {"CPU": replicas.cpus, "GPU": replicas.gpus}.items() if v}
    request_resources(bundles=[bundle] * replicas.min + [{"CPU": 1}] * CPU_HEADROOM)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            fit_replicas(replicas, resources)
            break
        except RuntimeError:
            time.sleep(5)
            resources = ray.cluster_resources()
    return resources


def build_dataset(config: SummarizeConfig, plan: InputPlan, info: ModelInfo, replicas: Replicas) -> ray.data.Dataset:
    """read -> blocks of one batch each -> tokenize (tasks) -> summarize (actor pool)."""
    fs, _ = storage.arrow_fs(config.input, config.storage_options)
    columns = list(dict.fromkeys([plan.id_column, config.text_column, *config.passthrough_columns]))
    ds = ray.data.read_parquet(plan.shards, filesystem=fs, include_row_hash=plan.derived_id).select_columns(columns)
    # The Parquet reader packs small files into one block, which only one replica would get.
    ds = ds.repartition(target_num_rows_per_block=replicas.batch_size)
    max_tokens = config.max_input_tokens or info.config.encoder.max_position_embeddings
    ds = ds.map_batches(tokenize, batch_format="pyarrow", batch_size=replicas.batch_size,
                        fn_kwargs={"tokenizer": info.tokenizer, "text_column": config.text_column,
                                   "max_input_tokens": max_tokens})
    generation = config.generation.as_kwargs()
    return ds.map_batches(
        Summarizer,
        fn_constructor_kwargs={"model_url": config.model, "generation": generation, "dtype": config.dtype,
                               "threads": max(1, int(replicas.cpus)), "storage_options": config.storage_options},
        # Two batches per actor: the next one is queued while the current one generates.
        compute=ActorPoolStrategy(min_size=replicas.min, max_size=replicas.max, max_tasks_in_flight_per_actor=2),
        num_cpus=replicas.cpus,
        num_gpus=replicas.gpus,
        batch_size=replicas.batch_size,
        batch_format="pyarrow",
    )


def _finish_checkpoint_commits(checkpoint: str, opts: dict[str, Any]) -> None:
    """Ray Data commits a block's checkpoint by renaming `X.pending.parquet` to `X.parquet` after writing the block,
    which on object stores is a copy, then a delete. A run killed between the two leaves both files, and the
    next run's recovery deletes the block's data (it has a pending checkpoint) while its ids count as written:
    those rows would be lost. Finish such renames before resuming."""
    fs, root = storage.url_to_fs(checkpoint, opts)
    names = {posixpath.basename(p) for p in fs.ls(root, detail=False)} if fs.isdir(root) else set()
    pending = f"{PENDING_CHECKPOINT_SUFFIX}.parquet"
    for name in names:
        if name.endswith(pending) and f"{name[:-len(pending)]}.parquet" in names:
            fs.rm(f"{root.rstrip('/')}/{name}")


def _write(ds: ray.data.Dataset, target: str, id_column: str, storage_options: dict[str, Any],
           actor_start_timeout_s: float) -> str:
    """Stream the dataset into `target` with job-level checkpointing; returns Ray Data's per-operator stats."""
    ctx = ds.context  # the dataset's own copy of the DataContext: no global state changes
    _finish_checkpoint_commits(checkpoint_url(target), storage_options)
    ckpt_fs, _ = storage.arrow_fs(checkpoint_url(target), storage_options)
    ctx.checkpoint_config = CheckpointConfig(id_column=id_column, checkpoint_path=checkpoint_url(target),
                                             delete_checkpoint_on_success=False, override_filesystem=ckpt_fs)
    # Start work only once the minimum pool is up: every replica gets a share, and a pool the cluster cannot
    # place fails with a timeout instead of waiting forever.
    ctx.wait_for_min_actors_s = actor_start_timeout_s
    fs, path = storage.arrow_fs(target, storage_options)
    ds.write_parquet(path, filesystem=fs)
    return ds.stats()


def _tally(result: SummarizeResult, target: str, new_files: set[str], storage_options: dict[str, Any],
           id_column: str) -> None:
    fs, _ = storage.arrow_fs(target, storage_options)
    files = storage.data_files(target, storage_options)
    cols = [id_column, "error", "truncated", "input_tokens", "summary_tokens", "replica"]
    tables = [pq.read_table(f, columns=cols, filesystem=fs) for f in files]
    table = pa.concat_tables(tables) if tables else None
    if table is None:
        return
    result.rows_out = table.num_rows
    if pc.count_distinct(table.column(id_column)).as_py() != table.num_rows:
        raise RuntimeError(f"output {target} holds duplicate ids")
    result.failed_by_reason = dict(Counter(e for e in table.column("error").to_pylist() if e is not None))
    result.truncated = pc.sum(table.column("truncated").cast(pa.int64())).as_py() or 0
    for f, t in zip(files, tables, strict=True):
        if f not in new_files:
            continue
        result.rows_written += t.num_rows
        tokens = pc.add(pc.fill_null(t.column("input_tokens"), 0), pc.fill_null(t.column("summary_tokens"), 0))
        for replica, n, tok in zip(t.column("replica").to_pylist(), [1] * t.num_rows, tokens.to_pylist(),
                                   strict=True):
            result.rows_by_replica[replica] = result.rows_by_replica.get(replica, 0) + n
            result.tokens_by_replica[replica] = result.tokens_by_replica.get(replica, 0) + tok


@dataclass(frozen=True)
class Checked:
    """A config whose input, model and output passed preflight (URLs made absolute)."""

    config: SummarizeConfig
    plan: InputPlan
    info: ModelInfo


def preflight(config: SummarizeConfig) -> Checked:
    """Everything that can make the job meaningless, checked without Ray: shards, columns, ids, model, output."""
    config = dataclasses.replace(config, input=storage.absolute(config.input), output=storage.absolute(config.output),
                                 model=storage.absolute(config.model))
    plan = inspect_input(config)
    info = inspect_model(config)
    storage.check_writable(config.output, config.storage_options)
    return Checked(config, plan, info)


def run(config: SummarizeConfig, checked: Checked | None = None) -> SummarizeResult:
    """Summarize `config.input` into `config.output`, exactly once per id. Ray must be initialized.
    `checked` (from `preflight` of the same input, model and output) skips a second preflight."""
    start = time.perf_counter()
    checked = preflight(config) if checked is None else dataclasses.replace(checked, config=dataclasses.replace(
        config, input=checked.config.input, output=checked.config.output, model=checked.config.model))
    config, plan, info = checked.config, checked.plan, checked.info
    opts = config.storage_options
    result = SummarizeResult(status="complete", output=config.output, rows_in=plan.rows,
                             generation={k: getattr(info.generation, k) for k in (
                                 "num_beams", "max_length", "min_length", "length_penalty",
                                 "no_repeat_ngram_size", "early_stopping")})
    if plan.derived_id:
        result.notes.append(f"input has no {DEFAULT_ID_COLUMN!r} column: using the derived id column "
                            f"{DERIVED_ID_COLUMN!r} (a stable uint64 hash of file path and row number)")
    marker = storage.read_json(storage.join(config.output, storage.MARKER_NAME), opts)
    if marker is not None and not config.overwrite:
        result.status, result.rows_out = "already-complete", marker["rows_out"]
        result.notes.append(f"output {config.output} is already complete ({marker['rows_out']} rows); nothing "
                            "written. Pass --overwrite to summarize again.")
        return result
    target = staging_url(config.output) if config.overwrite else config.output
    if config.overwrite:
        storage.remove_tree(target, opts)
        storage.remove_tree(checkpoint_url(target), opts)
    elif storage.data_files(target, opts) and not storage.exists(checkpoint_url(target), opts):
        raise RuntimeError(f"output {target} holds Parquet files from another job (no checkpoint at "
                           f"{checkpoint_url(target)}); pass --overwrite to replace them")
    elif storage.exists(checkpoint_url(target), opts):
        result.notes.append(f"resuming from checkpoint {checkpoint_url(target)}")
    replicas, notes = fit_replicas(config.replicas, cluster_resources(config.replicas, config.worker_wait_s))
    result.replicas = replicas
    result.notes.extend(notes)
    before = set(storage.data_files(target, opts))
    ds = build_dataset(config, plan, info, replicas)
    result.stats = _write(ds, target, plan.id_column, opts, config.actor_start_timeout_s)
    _tally(result, target, set(storage.data_files(target, opts)) - before, opts, plan.id_column)
    if result.rows_out != plan.rows:
        raise RuntimeError(f"output {target} has {result.rows_out} rows for {plan.rows} input rows")
    result.wall_s = time.perf_counter() - start
    if config.overwrite:
        storage.remove_tree(storage.join(config.output, storage.MARKER_NAME), opts)
        storage.remove_tree(config.output, opts)
        storage.move_tree(target, config.output, opts)
    storage.write_json_atomic(storage.join(config.output, storage.MARKER_NAME), {
        "rows_in": result.rows_in, "rows_out": result.rows_out, "failed_by_reason": result.failed_by_reason,
        "truncated": result.truncated, "id_column": plan.id_column, "input": config.input, "model": config.model,
        "generation": result.generation, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }, opts)
    storage.remove_tree(checkpoint_url(target), opts)
    return result
