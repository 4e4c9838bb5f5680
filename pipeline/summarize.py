"""Batch summarization: Parquet shards in, one summary file per unit of work out, exactly once.

`preflight` checks, without Ray and from listings and footers only, everything that can make the job
meaningless (shards, columns, model, output). `run` then plans the units of work (`pipeline.units`), skips
those already committed by an earlier attempt of the same run (one listing), checks that ids are unique
(`pipeline.ids`, once per run), streams the rest through the dataflow (`pipeline.dataflow`) and ends with the
marker `_SUCCESS.json` naming the output's files; with `--overwrite` it writes into a staging folder and
publishes it into place once complete (`pipeline.commit`).
"""

from __future__ import annotations

import dataclasses
import logging
import posixpath
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from model import EncoderDecoderConfig, GenerationConfig, Tokenizer, check_generation, read_configs

from . import commit, dataflow, identity, ids, storage
from .config import Replicas, SummarizeConfig
from .lease import Lease, new_owner, owner_gone
from .scaling import scaled_pool
from .stages import unit_rows
from .units import DEFAULT_ID_COLUMN, DERIVED_ID_COLUMN, InputPlan, Unit, inspect_input, plan_units

log = logging.getLogger(__name__)

LEASE_NAME = "_lease"  # in the output: held by the run that writes it
RUN_LEASE_TTL_S = 60.0  # a run on another host that died holds the output this long at most


@dataclass(frozen=True)
class ModelInfo:
    config: EncoderDecoderConfig
    generation: GenerationConfig  # the checkpoint's settings with the job's overrides applied
    tokenizer: Tokenizer
    fingerprint: str  # model_fingerprint of the checkpoint: weights, config and tokenizer files


@dataclass
class SummarizeResult:
    """What a run did; the job prints it."""

    status: str  # "complete" (this run wrote the rest), "already-complete" (nothing to do)
    output: str
    rows_in: int
    rows_out: int = 0
    rows_written: int = 0  # by this run (fewer than rows_out after a resume)
    units: int = 0  # units of work (= output files) of the whole output
    units_written: int = 0  # by this run
    failed_by_reason: dict[str, int] = field(default_factory=dict)
    truncated: int = 0
    oom_splits: int = 0  # generate calls this run split in half after running out of device memory
    rows_by_replica: dict[str, int] = field(default_factory=dict)
    tokens_by_replica: dict[str, int] = field(default_factory=dict)
    generate_s_by_replica: dict[str, float] = field(default_factory=dict)  # inside model.generate
    busy_s_by_replica: dict[str, float] = field(default_factory=dict)  # whole units, decode and Arrow included
    node_by_replica: dict[str, str] = field(default_factory=dict)  # the Ray node id each replica ran on
    wall_s: float = 0.0
    plan_s: float = 0.0  # preflight, listing, id check and tally of earlier units, before the dataflow starts
    replicas: Replicas | None = None
    generation: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    stats: str = ""

    def add(self, unit: dict[str, Any], by_replica: bool) -> None:
        """Count one committed unit (its stats from the dataflow or from its file's footer)."""
        self.rows_out += unit["rows"]
        self.units += 1
        failed = Counter(self.failed_by_reason)
        failed.update(unit["failed_by_reason"])
        self.failed_by_reason = dict(failed)
        self.truncated += unit["truncated"]
        if not by_replica:
            return
        replica = unit["replica"]
        self.rows_written += unit["rows"]
        self.units_written += 1
        self.oom_splits += unit.get("oom_splits", 0)
        self.node_by_replica[replica] = unit["node"]
        for table, value in ((self.rows_by_replica, unit["rows"]),
                             (self.tokens_by_replica, unit["input_tokens"] + unit["summary_tokens"]),
                             (self.generate_s_by_replica, unit["generate_s"]),
                             (self.busy_s_by_replica, unit["busy_s"])):
            table[replica] = table.get(replica, 0) + value


def sibling(url: str, folder: str) -> str:
    """`s3://b/x/out` -> `s3://b/x/<folder>/out`: hidden from readers of `s3://b/x/`, next to the output."""
    parent, name = posixpath.split(url.rstrip("/"))
    return storage.join(parent, folder, name)


def staging_url(output: str) -> str:
    return sibling(output, "_staging")


def inspect_model(config: SummarizeConfig) -> ModelInfo:
    """Config, generation settings, tokenizer and weights fingerprint of the checkpoint; ValueError naming the
    URL if unreadable."""
    url, opts = config.model, config.storage_options
    try:
        model_config, generation = read_configs(url, opts)
        if not any(storage.exists(storage.join(url, n), opts)
                   for n in ("model.safetensors", "model.safetensors.index.json")):
            raise FileNotFoundError("no model.safetensors or model.safetensors.index.json")
        tokenizer = Tokenizer.from_pretrained(url, opts)
        fingerprint = identity.model_fingerprint(url, opts)
    except Exception as e:  # whatever the cause, the job cannot start without the model
        raise ValueError(f"model {url} is not readable: {type(e).__name__}: {e}") from e
    limit = model_config.encoder.max_position_embeddings
    if config.max_input_tokens is not None and config.max_input_tokens > limit:
        raise ValueError(f"max_input_tokens {config.max_input_tokens} exceeds the encoder's "
                         f"max_position_embeddings {limit}")
    if len(tokenizer) > model_config.encoder.vocab_size:
        raise ValueError(f"the tokenizer of model {url} has {len(tokenizer)} tokens, more than the encoder's "
                         f"vocabulary of {model_config.encoder.vocab_size}: its ids would index past the embeddings")
    generation = generation.updated(**config.generation.as_kwargs())
    try:
        check_generation(model_config, generation)
    except ValueError as e:
        raise ValueError(f"generation settings do not fit model {url}: {e}") from e
    if generation.num_return_sequences != 1:
        raise ValueError(f"model {url} asks for num_return_sequences {generation.num_return_sequences}: the batch "
                         "jobs write one summary per input row; set it to 1 in its generation_config.json")
    return ModelInfo(model_config, generation, tokenizer, fingerprint)


@dataclass(frozen=True)
class Checked:
    """A config whose input, model and output passed preflight (URLs made absolute)."""

    config: SummarizeConfig
    plan: InputPlan
    info: ModelInfo


def _check_apart(config: SummarizeConfig, plan: InputPlan) -> None:
    """The output must not be inside the input folder (the next run would read it as input), nor the reverse."""
    _, given = storage.url_to_fs(config.input, config.storage_options)
    _, out = storage.url_to_fs(config.output, config.storage_options)
    out, root = out.rstrip("/") + "/", plan.root.rstrip("/") + "/"
    if given.rstrip("/") == plan.root and out.startswith(root):
        raise ValueError(f"output {config.output} is inside the input folder {config.input}: the next run would "
                         "read the job's own output as input; choose an output outside it")
    if any(s.path.startswith(out) for s in plan.shards[:1]) or root.startswith(out):
        raise ValueError(f"input {config.input} is inside the output folder {config.output}; choose an output "
                         "outside it")


def preflight(config: SummarizeConfig, info: ModelInfo | None = None) -> Checked:
    """Everything that can make the job meaningless, checked without Ray from listings and footers: shards,
    columns, id types, model, tokenizer, generation settings, output. `info` (from `inspect_model` of the same
    model and settings) skips reading the model again."""
    config = dataclasses.replace(config, input=storage.absolute(config.input), output=storage.absolute(config.output),
                                 model=storage.absolute(config.model))
    plan = inspect_input(config)
    _check_apart(config, plan)
    info = inspect_model(config) if info is None else info
    storage.check_writable(config.output, config.storage_options)
    _check_same_run(config, run_identity(config, plan, info))
    return Checked(config, plan, info)


def _check_same_run(config: SummarizeConfig, wanted: dict[str, Any]) -> None:
    """Refuse to resume or re-run into an output made with other inputs or settings: its summaries would be
    mixed with this run's. Without --overwrite only; a pending publish is finished by `run` first."""
    opts = config.storage_options
    if config.overwrite or storage.exists(storage.join(staging_url(config.output), storage.MARKER_NAME), opts):
        return
    for name, state in ((storage.MARKER_NAME, "is complete, made"), (commit.RUN_NAME, "was started by a run")):
        record = storage.read_json(storage.join(config.output, name), opts)
        changed = identity.differences(record["identity"], wanted) if record and "identity" in record else []
        if changed:
            raise ValueError(f"output {config.output} {state} with other inputs or settings ({'; '.join(changed)}); "
                             "pass --overwrite to redo it, or choose another output")


def max_tokens(config: SummarizeConfig, info: ModelInfo) -> int:
    return config.max_input_tokens or info.config.encoder.max_position_embeddings


def generation_settings(generation: GenerationConfig) -> dict[str, Any]:
    """Every setting that `generate` honours, as resolved from the checkpoint and the job's overrides."""
    return {f.name: getattr(generation, f.name) for f in dataclasses.fields(generation) if f.name != "extra"}


def run_settings(config: SummarizeConfig, info: ModelInfo) -> dict[str, Any]:
    """Everything besides the input that determines the summaries (not how many replicas or how big the batches).
    The one source of a run's identity: resume, re-runs and --overwrite compare it (with the input, in
    `run_identity`), and so do the nightly job's reuse of unchanged shards and its stale check."""
    return {
        "identity_version": identity.IDENTITY_VERSION, "model": config.model, "model_sha256": info.fingerprint,
        "text_column": config.text_column, "id_column": config.id_column,
        "passthrough_columns": list(config.passthrough_columns), "max_input_tokens": max_tokens(config, info),
        "add_special_tokens": config.add_special_tokens, "dtype": config.dtype,
        "generation": generation_settings(info.generation),
    }


def run_identity(config: SummarizeConfig, plan: InputPlan, info: ModelInfo) -> dict[str, Any]:
    """The run's settings, its input (root and files) and the id column resolved from the input."""
    return {**run_settings(config, info), "input": config.input, "inputs_sha256": identity.inputs_digest(plan.shards),
            "id_column": plan.id_column}


def _run_record(target: str, wanted: dict[str, Any], config: SummarizeConfig, names: list[str],
                owner: str) -> dict[str, Any]:
    """The run record at `target`: the one of an earlier attempt of this run (preflight refused any other), or
    a new one. Data files without a record are another job's: resuming into them would mix two outputs."""
    opts = config.storage_options
    url = storage.join(target, commit.RUN_NAME)
    record = storage.read_json(url, opts)
    if record is None and names:
        raise RuntimeError(f"output {target} holds Parquet files from another job (no run record {url}); pass "
                           "--overwrite to replace them")
    if record is not None:
        return record
    record = {"attempt": commit.new_attempt(), "identity": wanted, "rows_per_file": config.rows_per_file,
              "ids_unique": False, "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "code_version": identity.code_version(), "owner": owner}
    if not storage.write_json_atomic(url, record, opts, exclusive=True):
        other = storage.read_json(url, opts) or {}
        raise RuntimeError(f"output {target} was started at the same moment by another run ({other.get('owner')}, "
                           f"attempt {other.get('attempt')}); this one stops. Run it again once that run has ended "
                           "to resume it or find it complete")
    return record


def _prepare_target(config: SummarizeConfig, wanted: dict[str, Any],
                    owner: str) -> tuple[str, dict[str, Any], list[str]]:
    """The folder this run writes into, its run record and the data files already there (one listing)."""
    opts = config.storage_options
    target = staging_url(config.output) if config.overwrite else config.output
    if config.overwrite:
        record = storage.read_json(storage.join(target, commit.RUN_NAME), opts)
        if record is None or identity.differences(record["identity"], wanted):
            storage.remove_tree(target, opts)  # a staging of other settings: nothing in it can be reused
    names = storage.data_names(target, opts)
    return target, _run_record(target, wanted, config, names, owner), names


def _finish_publish(config: SummarizeConfig) -> dict[str, Any] | None:
    """A complete staged output whose publish was interrupted is published first; returns the marker."""
    opts = config.storage_options
    staged = staging_url(config.output)
    marker = storage.read_json(storage.join(staged, storage.MARKER_NAME), opts)
    if marker is not None:
        commit.publish(staged, config.output, marker["files"], marker, opts)
    return marker


@dataclass
class Pending:
    """A run whose plan is made and whose target is ready: left to do are the dataflow over `todo`, then
    `finish`."""

    config: SummarizeConfig
    plan: InputPlan
    wanted: dict[str, Any]
    result: SummarizeResult
    target: str
    attempt: str
    units: list[Unit]
    todo: list[Unit]
    max_input_tokens: int
    started: float

    @property
    def complete(self) -> bool:
        return self.result.units == len(self.units)


def begin(config: SummarizeConfig, checked: Checked | None = None, owner: str | None = None
          ) -> Pending | SummarizeResult:
    """Everything of a run before its dataflow: finish a pending publish, plan the units, find the committed
    ones, check the ids once. A SummarizeResult when the output is already complete. `owner` (of
    `lease.new_owner`) is recorded in a new run record."""
    start = time.perf_counter()
    checked = preflight(config) if checked is None else dataclasses.replace(checked, config=dataclasses.replace(
        config, input=checked.config.input, output=checked.config.output, model=checked.config.model))
    config, plan, info = checked.config, checked.plan, checked.info
    opts = config.storage_options
    wanted = run_identity(config, plan, info)
    _check_same_run(config, wanted)  # again: another run may have written the output since preflight
    result = SummarizeResult(status="complete", output=config.output, rows_in=plan.rows,
                             generation=wanted["generation"])
    if plan.derived_id:
        result.notes.append(f"input has no {DEFAULT_ID_COLUMN!r} column: using the derived id column "
                            f"{DERIVED_ID_COLUMN!r} (a stable uint64 hash of shard name and row number)")
    published = _finish_publish(config)
    if published is not None:
        result.notes.append(f"finished publishing the complete staged output of an interrupted --overwrite into "
                            f"{config.output}")
        if published["identity"] == wanted:  # that was this very request
            config = dataclasses.replace(config, overwrite=False)
    marker = storage.read_json(storage.join(config.output, storage.MARKER_NAME), opts)
    if marker is not None and not config.overwrite:
        result.status, result.rows_out = "already-complete", marker["rows_out"]
        result.notes.append(f"output {config.output} is already complete ({marker['rows_out']} rows); nothing "
                            "written. Pass --overwrite to summarize again.")
        return result
    target, record, names = _prepare_target(config, wanted, owner or new_owner())
    attempt = record["attempt"]
    units = plan_units(plan.shards, record["rows_per_file"])
    planned = {u.name for u in units}
    done = {u: n for u, n in commit.committed_units(names, attempt).items() if u in planned}
    strays = sorted(set(names) - set(done.values()))
    if strays:
        raise RuntimeError(f"output {target} holds {len(strays)} file(s) that are not units of this run, e.g. "
                           f"{strays[0]}; pass --overwrite to replace them")
    todo = [u for u in units if u.name not in done]
    if done:
        result.notes.append(f"resuming attempt {attempt}: {len(done)} of {len(units)} units already committed")
    if not plan.derived_id and not record["ids_unique"]:
        ids.check_unique(plan, config.input, opts)
        record = {**record, "ids_unique": True}
        storage.write_json_atomic(storage.join(target, commit.RUN_NAME), record, opts)
    for stats in commit.read_stats(target, sorted(done.values()), opts):
        result.add(stats, by_replica=False)
    result.plan_s = time.perf_counter() - start
    return Pending(config, plan, wanted, result, target, attempt, units, todo, max_tokens(config, info), start)


def execute(pendings: list[Pending], config: SummarizeConfig,
            on_unit: Callable[[Pending], None] = lambda p: None) -> None:
    """One dataflow and one actor pool for the remaining units of every pending run (same model and settings,
    e.g. the nightly job's partitions); on_unit(pending) after each unit committed. Whatever on_unit raises
    stops the dataflow (Ray Data shuts the execution down when its iterator is dropped) and propagates."""
    rows = [row for i, p in enumerate(pendings) for row in
            unit_rows(p.todo, i, p.target, p.attempt, p.plan.id_column, p.plan.derived_id)]
    if not rows:
        return
    with scaled_pool(config.replicas, config.worker_wait_s, config.node_types) as (replicas, initial, notes):
        for p in pendings:
            p.result.replicas = replicas
            p.result.notes.extend(notes)
        ds = dataflow.build(config, rows, replicas, pendings[0].max_input_tokens, initial)
        for stats in dataflow.stream(ds, config.actor_start_timeout_s):
            pending = pendings[stats["job"]]
            pending.result.add(stats, by_replica=True)
            on_unit(pending)
    text = ds.stats()
    for p in pendings:
        p.result.stats = text


def finish(p: Pending, before_commit: Callable[[], None] = lambda: None) -> SummarizeResult:
    """Check that every unit is committed, write the marker (and publish a staged --overwrite); before_commit()
    runs right before the marker is written (a lease check)."""
    config, result, opts, attempt = p.config, p.result, p.config.storage_options, p.attempt
    if result.rows_out != p.plan.rows or result.units != len(p.units):
        raise RuntimeError(f"output {p.target} has {result.rows_out} rows in {result.units} files for "
                           f"{p.plan.rows} input rows in {len(p.units)} units")
    result.wall_s = time.perf_counter() - p.started
    files = sorted(commit.file_name(u.name, attempt) for u in p.units)
    shard_files: dict[str, list[str]] = {}
    for u in p.units:
        shard_files.setdefault(u.shard_name, []).append(commit.file_name(u.name, attempt))
    marker = {
        "rows_in": result.rows_in, "rows_out": result.rows_out, "failed_by_reason": result.failed_by_reason,
        "truncated": result.truncated, "id_column": p.plan.id_column, "input": config.input, "model": config.model,
        "generation": result.generation, "identity": p.wanted, "attempt": attempt, "files": files,
        "shard_files": shard_files,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "code_version": identity.code_version(),
    }
    before_commit()
    if config.overwrite:
        storage.write_json_atomic(storage.join(p.target, storage.MARKER_NAME), marker, opts)
        commit.publish(p.target, config.output, files, marker, opts)
    else:
        storage.write_json_atomic(storage.join(config.output, storage.MARKER_NAME), marker, opts)
        storage.remove_tree(storage.join(p.target, commit.RUN_NAME), opts)
    return result


def take_output(config: SummarizeConfig) -> Lease:
    """The output's lease, held (and renewed) for the whole run: two runs never write one output at once. A
    holder whose process is gone from this host is taken over at once; any other live holder is an error
    naming it."""
    lease = Lease(storage.join(storage.absolute(config.output), LEASE_NAME), new_owner(), RUN_LEASE_TTL_S,
                  config.storage_options)
    holder = lease.try_acquire()
    if holder is not None and owner_gone(holder):
        holder = lease.take_over()
    if holder is not None:
        raise RuntimeError(f"output {config.output} is being written by another run ({holder['owner']}, its lease "
                           f"runs until {holder['expires']} unless renewed); this one stops. Run it again once that "
                           "run has ended to resume it or find it complete, or choose another output")
    lease.keep_alive()
    return lease


def run(config: SummarizeConfig, checked: Checked | None = None) -> SummarizeResult:
    """Summarize `config.input` into `config.output`, exactly once per row, under the output's lease. Ray must
    be initialized. `checked` (from `preflight` of the same input, model and output) skips a second preflight."""
    checked = preflight(config) if checked is None else checked
    lease = take_output(config)
    try:
        pending = begin(config, checked, lease.owner)
        if isinstance(pending, SummarizeResult):
            return pending
        execute([pending], pending.config, lambda p: lease.ensure_held())
        return finish(pending, lease.check)
    finally:
        try:
            lease.release()
        except Exception as e:  # the lease expires on its own; the run's own outcome (or error) stands
            log.warning("the lease of output %s was not released (%s: %s); it expires at %s", config.output,
                        type(e).__name__, e, time.strftime("%H:%M:%S", time.gmtime(lease.expires_at)))
