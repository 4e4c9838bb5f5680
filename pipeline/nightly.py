"""Nightly corpus processing: summarize every dated partition that is new, changed or incomplete, exactly once.

Per partition, under its lease: summarize the partition's shards into `<output>/_staging/<partition>/run-<id>/`
(the summarize job's units of work make a re-run after a crash write only the uncommitted units; the run id
hashes the input manifest, the weights and the settings, so a re-run finds its own staging), then publish it
(`pipeline.commit.publish`): move the staged files next to the old ones under `<output>/<partition>/` (their
names carry the attempt, so they never collide), write the marker `_SUCCESS.json` naming exactly those files
(the switch, one atomic write), delete the old files and the staging. Every step is idempotent, so a run
killed at any point is finished by the next one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import posixpath
import re
import time
from dataclasses import dataclass, field
from typing import Any

from . import commit, storage
from .config import SummarizeConfig
from .identity import code_version
from .lease import Lease, new_owner
from .partitions import (
    LEASES,
    STAGING,
    Partition,
    PartitionState,
    discover,
    rescan,
    select,
    state_of,
)
from .summarize import ModelInfo, inspect_model, preflight
from .summarize import run as summarize

RUNS = "_runs"


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


@dataclass(frozen=True)
class NightlyConfig:
    """One nightly run. `summarize` carries the model, columns, generation, scaling and storage settings; its
    input and output are replaced per partition."""

    corpus: str  # root of the Hive-partitioned corpus (date=YYYY-MM-DD/...)
    output: str  # root of the mirrored output
    summarize: SummarizeConfig
    date: str | None = None  # only this date
    since: str | None = None  # this date and later
    max_partitions: int | None = None  # process at most this many (oldest first); the rest wait for the next run
    lease_ttl_s: float = 600.0  # a partition lease lasts this long unless renewed (every third of it)

    def __post_init__(self) -> None:
        for name in ("date", "since"):
            value = getattr(self, name)
            if value is not None and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
                raise ValueError(f"{name} must be YYYY-MM-DD, got {value!r}")
        if self.date and self.since:
            raise ValueError("give --date or --since, not both")
        if self.max_partitions is not None and self.max_partitions < 1:
            raise ValueError(f"max_partitions must be >= 1, got {self.max_partitions}")
        if self.lease_ttl_s <= 0:
            raise ValueError(f"lease_ttl_s must be > 0, got {self.lease_ttl_s}")
        corpus, output = self.corpus.rstrip("/") + "/", self.output.rstrip("/") + "/"
        if corpus.startswith(output) or output.startswith(corpus):
            raise ValueError(f"corpus {self.corpus} and output {self.output} must not contain each other")


@dataclass
class PartitionOutcome:
    partition: str
    action: str  # "processed", "skipped", "failed", or "would-process" in a dry run
    reason: str  # why it was (or would be) processed: new, changed, incomplete; or why not: done, leased, ...
    detail: str = ""
    rows_in: int = 0
    rows_out: int = 0
    rows_written: int = 0  # by this run (fewer than rows_out when it resumed a killed run)
    failed_rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class NightlyReport:
    run: str
    corpus: str
    output: str
    dry_run: bool
    started_at: str
    ended_at: str = ""
    wall_s: float = 0.0
    partitions: list[PartitionOutcome] = field(default_factory=list)
    ignored_files: list[str] = field(default_factory=list)  # Parquet files outside any dated partition
    report_url: str | None = None

    def count(self, action: str) -> int:
        return sum(o.action == action for o in self.partitions)

    @property
    def ok(self) -> bool:
        return self.count("failed") == 0

    def to_dict(self) -> dict[str, Any]:
        totals = {a: self.count(a) for a in ("processed", "skipped", "failed", "would-process")}
        rows = {k: sum(getattr(o, k) for o in self.partitions) for k in ("rows_in", "rows_out", "rows_written")}
        return {**dataclasses.asdict(self), "totals": {**totals, **rows}}


def plan(config: NightlyConfig) -> tuple[list[PartitionState], list[str]]:
    """The selected partitions' states, oldest first, and the ignored files. Reads only."""
    found = discover(config.corpus, config.summarize.storage_options)
    partitions = select(found.partitions, config.date, config.since)
    return [state_of(p, config.output, config.summarize.storage_options) for p in partitions], found.ignored


def _run_id(partition: Partition, fingerprint: str, template: SummarizeConfig) -> str:
    """Same inputs, weights and settings -> same id, so a re-run resumes the staging of a killed one."""
    settings = {"inputs": partition.manifest(), "weights": fingerprint, "model": template.model,
                "text_column": template.text_column, "id_column": template.id_column,
                "passthrough": template.passthrough_columns, "max_input_tokens": template.max_input_tokens,
                "add_special_tokens": template.add_special_tokens,
                "dtype": template.dtype, "generation": template.generation.as_kwargs()}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _tidy(state: PartitionState, output: str, opts: dict[str, Any]) -> str:
    """Finish an interrupted switch: delete data files the marker does not name, and staging leftovers."""
    storage.remove_files(storage.join(output, state.partition.path), list(state.stray_files), opts)
    if state.staging:
        storage.remove_tree(storage.join(output, STAGING, state.partition.path), opts)
    done = [f"removed {len(state.stray_files)} old file(s)"] if state.stray_files else []
    return ", ".join(done + (["removed staging leftovers"] if state.staging else []))


def _drop_other_runs(folder: str, keep: str, opts: dict[str, Any]) -> None:
    """Delete run-* folders other than `keep`: staging of other inputs, weights or settings."""
    fs, root = storage.url_to_fs(folder, opts)
    for path in fs.ls(root, detail=False) if fs.isdir(root) else []:
        name = posixpath.basename(path.rstrip("/"))
        if name.startswith("run-") and name != keep:
            fs.rm(path, recursive=True)


def _summarize(config: NightlyConfig, partition: Partition, info: ModelInfo, outcome: PartitionOutcome,
               lease: Lease) -> None:
    """Summarize one partition into its staging and switch it into place; raises on any failure."""
    opts, template = config.summarize.storage_options, config.summarize
    fingerprint = info.fingerprint
    run_id = _run_id(partition, fingerprint, template)
    staging_root = storage.join(config.output, STAGING, partition.path)
    staged = storage.join(staging_root, f"run-{run_id}")
    _drop_other_runs(staging_root, f"run-{run_id}", opts)
    started = time.time()
    job = dataclasses.replace(template, input=storage.join(config.corpus, partition.path, "*.parquet"), output=staged,
                              overwrite=False)
    result = summarize(job, preflight(job, info))
    now = rescan(config.corpus, partition, opts)
    if now is None or now.inputs != partition.inputs:
        raise RuntimeError(f"the inputs of {partition.path} changed during the run; the next run processes them")
    summary = storage.read_json(storage.join(staged, storage.MARKER_NAME), opts)
    if summary is None or summary["rows_out"] != summary["rows_in"]:  # never mark a partial partition done
        counts = f"{summary['rows_out']} rows for {summary['rows_in']} input rows" if summary else "no marker"
        raise RuntimeError(f"staged output {staged} is incomplete: {counts}")
    lease.check()  # renews: the switch below runs with a full TTL ahead
    marker = {
        "partition": partition.path, "keys": dict(partition.keys), "run_id": run_id, "inputs": partition.manifest(),
        "rows_in": summary["rows_in"], "rows_out": summary["rows_out"],
        "failed_rows": summary.get("failed_by_reason", {}), "truncated": summary.get("truncated", 0),
        "id_column": summary.get("id_column"),
        "model": {"path": template.model, "weights_sha256": fingerprint},
        "generation": result.generation, "generation_overrides": template.generation.as_kwargs(),
        "started_at": _utc(started), "ended_at": _utc(time.time()), "code_version": code_version(),
        "owner": lease.owner,
    }
    commit.publish(staged, storage.join(config.output, partition.path), summary["files"], marker, opts)
    storage.remove_tree(staging_root, opts)
    outcome.rows_in, outcome.rows_out = summary["rows_in"], summary["rows_out"]
    outcome.rows_written, outcome.failed_rows = result.rows_written, marker["failed_rows"]


def _process(config: NightlyConfig, state: PartitionState, owner: str, info: ModelInfo) -> PartitionOutcome:
    """Take the partition's lease, look again (another run may have done it), then summarize or tidy."""
    opts = config.summarize.storage_options
    partition = state.partition
    outcome = PartitionOutcome(partition.path, "processed", state.reason, state.detail)
    start = time.perf_counter()
    lease = Lease(storage.join(config.output, LEASES, partition.path), owner, config.lease_ttl_s, opts)
    holder = lease.try_acquire()
    if holder is not None:
        outcome.action, outcome.reason = "skipped", "leased"
        outcome.detail = f"another run ({holder['owner']}) holds it until {holder['expires']}"
        return outcome
    try:
        lease.keep_alive()
        current = rescan(config.corpus, partition, opts)
        if current is None:
            outcome.action, outcome.reason, outcome.detail = "skipped", "gone", "its input files were removed"
            return outcome
        fresh = state_of(current, config.output, opts)
        if not fresh.todo:
            outcome.action, outcome.reason = "skipped", "done"
            outcome.detail = _tidy(fresh, config.output, opts) or "completed by another run"
            return outcome
        _summarize(config, current, info, outcome, lease)
    except Exception as e:  # one partition's failure is reported; the others still run
        outcome.action, outcome.detail = "failed", f"{type(e).__name__}: {e}"
    finally:
        lease.release()
        outcome.seconds = round(time.perf_counter() - start, 3)
    return outcome


def committed_files(output: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """The data files that the partitions' markers name: what a reader that follows the markers reads."""
    fs, root = storage.url_to_fs(output, storage_options)
    files = []
    for path in sorted(fs.find(root.rstrip("/"))):
        rel = path[len(root.rstrip("/")) + 1:]
        if rel.endswith(f"/{storage.MARKER_NAME}") and not storage.is_hidden(posixpath.dirname(rel)):
            folder = posixpath.dirname(path)
            marker = storage.read_json(fs.unstrip_protocol(path), storage_options) or {}
            files.extend(fs.unstrip_protocol(f"{folder}/{name}") for name in marker.get("files", []))
    return files


def run_nightly(config: NightlyConfig, dry_run: bool = False) -> NightlyReport:
    """Process what is new, changed or incomplete, oldest first; write the report under `_runs/` unless a dry
    run, which only reads. Ray must be initialized unless `dry_run`."""
    start = time.time()
    owner = new_owner()
    opts = config.summarize.storage_options
    states, ignored = plan(config)
    report = NightlyReport(owner, config.corpus, config.output, dry_run, _utc(start), ignored_files=ignored)
    # the model, tokenizer and generation settings are checked once per run, before any partition
    info = inspect_model(dataclasses.replace(config.summarize, model=storage.absolute(config.summarize.model)))
    budget = config.max_partitions if config.max_partitions is not None else len(states)
    for state in states:
        name = state.partition.path
        if not state.todo and not (state.stray_files or state.staging):
            report.partitions.append(PartitionOutcome(name, "skipped", "done", state.detail))
        elif dry_run:
            holder = Lease(storage.join(config.output, LEASES, name), owner, config.lease_ttl_s, opts).holder()
            leased = f" (leased by {holder['owner']} until {holder['expires']})" if holder else ""
            action = "would-process" if state.todo else "skipped"
            reason = state.reason if state.todo else "done (would tidy)"
            report.partitions.append(PartitionOutcome(name, action, reason, state.detail + leased))
        elif state.todo and budget <= 0:
            report.partitions.append(PartitionOutcome(name, "skipped", "over --max-partitions", state.reason))
        else:
            outcome = _process(config, state, owner, info)
            budget -= outcome.action in ("processed", "failed")
            report.partitions.append(outcome)
    report.ended_at, report.wall_s = _utc(time.time()), round(time.time() - start, 3)
    if not dry_run:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(start))
        report.report_url = storage.join(config.output, RUNS, f"{stamp}-{owner.rsplit(':', 1)[-1]}.json")
        storage.write_json_atomic(report.report_url, report.to_dict(), opts)
    return report
