"""Nightly corpus processing: summarize every dated partition that is new, changed or incomplete, exactly once.

Per partition, under its lease: summarize the partition's new or rewritten shards into
`<output>/_staging/<partition>/run-<id>/` (the summarize job's units of work make a re-run after a crash write
only the uncommitted units; the run id hashes the input manifest and the settings, so a re-run finds its own
staging), then publish it (`pipeline.commit.publish`): move the staged files next to the old ones under
`<output>/<partition>/` (their names carry the attempt, so they never collide), write the marker
`_SUCCESS.json` naming exactly the new set of files (the switch, one atomic write), delete the files it no
longer names and the staging. Every step is idempotent, so a run killed at any point is finished by the next
one; a switch interrupted before its old files were deleted is repaired at the start of the next run, whatever
partitions it selects. docs/nightly.md has the state diagram and the crash points.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import posixpath
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from . import commit, storage
from .config import SummarizeConfig
from .identity import code_version
from .ids import check_unique
from .lease import Lease, LeaseLost, new_owner, retried
from .metrics import record_partitions
from .nightly_config import NightlyConfig, NightlyReport, PartitionOutcome
from .partitions import (
    LEASES,
    STAGING,
    Partition,
    PartitionState,
    discover,
    partition_keys,
    rescan,
    state_of,
)
from .summarize import (
    ModelInfo,
    Pending,
    begin,
    execute,
    finish,
    generation_settings,
    inspect_model,
    preflight,
    run_settings,
)
from .units import inspect_input

RUNS = "_runs"


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def plan(config: NightlyConfig, settings: dict[str, Any] | None = None
         ) -> tuple[list[PartitionState], list[str], int]:
    """The selected partitions' states, oldest first, the ignored files and the listings made. Reads only."""
    found = discover(config.corpus, config.summarize.storage_options, config.date, config.since)
    states = [state_of(p, config.output, config.summarize.storage_options, settings) for p in found.partitions]
    return states, found.ignored, found.listings


def _run_id(partition: Partition, settings: dict[str, Any]) -> str:
    """Same inputs and settings -> same id, so a re-run resumes the staging of a killed one."""
    key = {"inputs": partition.manifest(), "settings": settings}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


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


def _reusable(state: PartitionState, settings: dict[str, Any]) -> dict[str, list[str]]:
    """Shard name -> committed output files, for the shards of a done partition that are unchanged now
    (same name, size and version, same settings): their summaries are kept, not redone."""
    marker = state.marker or {}
    if state.reason != "changed" or marker.get("settings") != settings or not marker.get("shard_files"):
        return {}
    before = {f["name"]: f for f in marker.get("inputs", [])}
    return {f.name: marker["shard_files"][f.name] for f in state.partition.inputs
            if before.get(f.name) == f.as_dict() and f.name in marker["shard_files"]}


class _NothingLeft(Exception):
    """Every partition of the run is switched or failed: the dataflow is stopped."""


log = logging.getLogger(__name__)


@dataclass
class Work:
    """One partition taken for this run, from its lease to its switch."""

    state: PartitionState
    lease: Lease
    outcome: PartitionOutcome
    run_id: str
    started: float
    settings: dict[str, Any]
    kept: dict[str, list[str]] = field(default_factory=dict)  # unchanged shard -> its committed output files
    totals: dict[str, Any] = field(default_factory=dict)
    summarized: bool = False  # some shards are summarized (into the staging), not all kept
    pending: Pending | None = None  # that summarize run, unless its staging was complete already
    done: bool = False  # published, failed or skipped: nothing left to do


def _start(config: NightlyConfig, state: PartitionState, info: ModelInfo, settings: dict[str, Any],
           work: Work) -> None:
    """Everything before the dataflow: reuse the unchanged shards' summaries, check ids over the whole
    partition, plan the summarize run of the rest into the partition's staging."""
    opts, template, partition = config.summarize.storage_options, config.summarize, state.partition
    out = storage.join(config.output, partition.path)
    staging_root = storage.join(config.output, STAGING, partition.path)
    staged = storage.join(staging_root, f"run-{work.run_id}")
    _drop_other_runs(staging_root, f"run-{work.run_id}", opts)
    work.kept = _reusable(state, settings)
    todo = [f.name for f in partition.inputs if f.name not in work.kept]
    job = dataclasses.replace(template, input=storage.join(config.corpus, partition.path, "*.parquet"), output=staged,
                              overwrite=False, only_shards=tuple(todo) if work.kept else ())
    totals = {"rows_in": 0, "rows_out": 0, "failed_by_reason": Counter(), "truncated": 0, "rows_written": 0,
              "oom_splits": 0,
              "shard_files": dict(work.kept), "files": sorted(f for files in work.kept.values() for f in files),
              "generation": generation_settings(info.generation),
              "id_column": (state.marker or {}).get("id_column")}
    for stats in commit.read_stats(out, totals["files"], opts):
        totals["rows_in"] += stats["rows"]
        totals["rows_out"] += stats["rows"]
        totals["failed_by_reason"].update(stats["failed_by_reason"])
        totals["truncated"] += stats["truncated"]
    work.totals = totals
    if work.kept:
        whole = inspect_input(dataclasses.replace(job, only_shards=()))
        if not whole.derived_id:  # the new shards' ids must not repeat the kept shards' ones
            check_unique(whole, job.input, opts)
    work.summarized = bool(todo)
    if not todo:  # shards only removed: a staging folder all the same, so that `repair` finds a crashed switch
        storage.write_json_atomic(storage.join(staged, "_SWITCH.json"), {"partition": partition.path}, opts)
    if todo:
        begun = begin(job, preflight(job, info))
        work.pending = begun if isinstance(begun, Pending) else None  # None: staged and complete already


def _switch(config: NightlyConfig, work: Work) -> None:
    """Check the staged run and switch the partition's new set of files into place; raises on any failure."""
    opts, template, partition = config.summarize.storage_options, config.summarize, work.state.partition
    out = storage.join(config.output, partition.path)
    staging_root = storage.join(config.output, STAGING, partition.path)
    staged = storage.join(staging_root, f"run-{work.run_id}")
    totals = work.totals
    if work.pending is not None:
        result = finish(work.pending)
        totals["rows_written"], totals["generation"] = result.rows_written, result.generation
        totals["oom_splits"] = result.oom_splits
    if work.summarized:
        summary = storage.read_json(storage.join(staged, storage.MARKER_NAME), opts)
        if summary is None or summary["rows_out"] != summary["rows_in"]:  # never mark a partial partition done
            counts = f"{summary['rows_out']} rows for {summary['rows_in']} input rows" if summary else "no marker"
            raise RuntimeError(f"staged output {staged} is incomplete: {counts}")
        for key in ("rows_in", "rows_out", "truncated"):
            totals[key] += summary[key]
        totals["failed_by_reason"].update(summary.get("failed_by_reason", {}))
        totals["shard_files"].update(summary["shard_files"])
        totals["files"] = sorted(totals["files"] + summary["files"])
        totals["id_column"] = summary.get("id_column")
    now = rescan(config.corpus, partition, opts)
    if now is None or now.inputs != partition.inputs:
        raise RuntimeError(f"the inputs of {partition.path} changed during the run; the next run processes them")
    work.lease.check()  # renews: the switch below runs with a full TTL ahead
    marker = {
        "partition": partition.path, "keys": dict(partition.keys), "run_id": work.run_id,
        "inputs": partition.manifest(), "rows_in": totals["rows_in"], "rows_out": totals["rows_out"],
        "failed_rows": dict(totals["failed_by_reason"]), "truncated": totals["truncated"],
        "id_column": totals["id_column"],
        "model": {"path": template.model, "model_sha256": work.settings["model_sha256"]},
        "settings": work.settings, "generation": totals["generation"],
        "generation_overrides": template.generation.as_kwargs(), "shard_files": totals["shard_files"],
        "reused_shards": sorted(work.kept), "started_at": _utc(work.started), "ended_at": _utc(time.time()),
        "code_version": code_version(), "owner": work.lease.owner,
    }
    commit.publish(staged, out, totals["files"], marker, opts)
    storage.remove_tree(staging_root, opts)
    o = work.outcome
    o.rows_in, o.rows_out, o.rows_written = marker["rows_in"], marker["rows_out"], totals["rows_written"]
    o.failed_rows, o.oom_splits = marker["failed_rows"], totals["oom_splits"]
    if work.kept:
        o.detail += f" ({len(work.kept)} unchanged shard(s) kept, {len(partition.inputs) - len(work.kept)} summarized)"


def _release(lease: Lease, outcome: PartitionOutcome) -> None:
    """Release the lease; a storage error here fails nothing: the lease expires on its own."""
    try:
        lease.release()
    except Exception as e:
        outcome.detail += (f"; the lease was not released ({type(e).__name__}: {e}), it expires at "
                           f"{_utc(lease.expires_at)}")


def _close(work: Work, action: str | None = None, detail: str = "") -> None:
    """The partition is finished with (published, failed or skipped): release its lease, time it."""
    if work.done:
        return
    if action is not None:
        work.outcome.action = action
    if detail:
        work.outcome.detail = detail
    if action == "failed":  # the report holds one line; the job's log gets the traceback
        log.warning("partition %s failed: %s", work.outcome.partition, detail, exc_info=sys.exc_info()[0] is not None)
    work.done = True
    _release(work.lease, work.outcome)
    work.outcome.seconds = round(time.time() - work.started, 3)


def _work(config: NightlyConfig, state: PartitionState, owner: str, settings: dict[str, Any]) -> Work:
    partition = state.partition
    outcome = PartitionOutcome(partition.path, "processed", state.reason, state.detail)
    lease = Lease(storage.join(config.output, LEASES, partition.path), owner, config.lease_ttl_s,
                  config.summarize.storage_options)
    return Work(state, lease, outcome, _run_id(partition, settings), time.time(), settings)


def _take(config: NightlyConfig, work: Work, info: ModelInfo) -> None:
    """Take the partition's lease, look again (another run may have done it), then tidy it or start its work.
    Any error, storage ones included, fails this partition only."""
    opts, settings, lease, outcome = config.summarize.storage_options, work.settings, work.lease, work.outcome
    partition = work.state.partition
    try:
        holder = lease.try_acquire()
    except Exception as e:
        outcome.action, outcome.detail = "failed", f"could not take the lease: {type(e).__name__}: {e}"
        work.done = True
        return
    if holder is not None:
        outcome.action, outcome.reason = "skipped", "leased"
        outcome.detail = f"another run ({holder['owner']}) holds it until {holder['expires']}"
        work.done = True
        return
    try:
        lease.keep_alive()
        current = rescan(config.corpus, partition, opts)
        if current is None:
            outcome.reason = "gone"
            _close(work, "skipped", "its input files were removed")
            return
        fresh = state_of(current, config.output, opts, settings)
        work.state, work.run_id = fresh, _run_id(current, settings)
        if not _wanted(fresh, config.reprocess):
            outcome.reason = fresh.reason
            tidied = _tidy(fresh, config.output, opts)
            _close(work, "skipped", tidied or ("completed by another run" if fresh.reason == "done" else fresh.detail))
            return
        _start(config, fresh, info, settings, work)
    except Exception as e:  # one partition's failure is reported; the others still run
        _close(work, "failed", f"{type(e).__name__}: {e}")


def _run_all(config: NightlyConfig, works: list[Work]) -> None:
    """The remaining units of every taken partition through one dataflow and one actor pool; each partition
    switches as soon as its units are committed, oldest first. A partition whose lease is lost is failed and
    never switched (its units still flowing land in its staging, where the lease's next holder resumes them)."""
    live = [w for w in works if not w.done]
    by_pending = {id(w.pending): w for w in live if w.pending is not None}

    def switch_ready(in_order: bool = True) -> None:
        for w in live:
            if w.done:
                continue
            if w.pending is not None and not w.pending.complete:
                if in_order:
                    return  # oldest first: a later partition waits for this one
                continue
            try:
                _switch(config, w)
                _close(w)
            except Exception as e:
                _close(w, "failed", f"{type(e).__name__}: {e}")

    def on_unit(pending: Pending) -> None:
        w = by_pending[id(pending)]
        try:
            if not w.done:
                w.lease.ensure_held()
        except LeaseLost as e:
            _close(w, "failed", f"LeaseLost: {e}; stopped before its switch")
        switch_ready()
        if all(w.done for w in live):
            raise _NothingLeft  # cancel the dataflow: no partition wants its remaining units

    switch_ready()
    pendings = [w.pending for w in live if w.pending is not None and not w.done]
    try:
        if pendings:
            execute(pendings, pendings[0].config, on_unit)
        switch_ready()
    except _NothingLeft:
        pass
    except Exception as e:
        # The shared dataflow failed (a unit that cannot be read or written, say): the partitions that are
        # complete switch anyway, and each unfinished one is retried alone, so one bad partition fails only
        # itself and cannot block the newer ones night after night.
        switch_ready(in_order=False)
        shared_error = f"{type(e).__name__}: {e}"
        for w in live:
            if not w.done:
                _alone(config, w, shared_error)
    finally:
        for w in live:
            _close(w, "failed", "stopped before its switch")


def _alone(config: NightlyConfig, w: Work, shared_error: str) -> None:
    """Finish one partition in a dataflow of its own, after the shared one failed."""
    try:
        w.lease.ensure_held()
        begun = begin(w.pending.config)  # a fresh look at what is committed
        w.pending = begun if isinstance(begun, Pending) else None
        if w.pending is not None:
            execute([w.pending], w.pending.config, lambda p: w.lease.ensure_held())
        _switch(config, w)
        _close(w)
    except Exception as e:
        _close(w, "failed", f"{type(e).__name__}: {e} (retried alone after the shared dataflow failed: "
                            f"{shared_error})")


def _wanted(state: PartitionState, reprocess: str) -> bool:
    return state.todo or reprocess == "all" or (reprocess == "stale" and state.reason == "stale")


def repair(config: NightlyConfig, owner: str) -> list[PartitionOutcome]:
    """Finish switches that a crash interrupted, in any partition (selected or not): a partition whose marker
    is current but whose folder still holds files the marker does not name. Such a partition still has its
    staging folder, so one listing of `_staging/` finds them all; each is tidied under its lease."""
    opts = config.summarize.storage_options
    fs, root = storage.url_to_fs(storage.join(config.output, STAGING), opts)
    root = root.rstrip("/")
    try:
        paths = fs.find(root, withdirs=True, detail=False)
    except FileNotFoundError:
        return []
    folders = sorted({posixpath.dirname(p[len(root) + 1:]) for p in paths
                      if posixpath.basename(p).startswith("run-") and fs.isdir(p)})
    outcomes = []
    for folder in folders:
        keys = partition_keys(folder)
        current = rescan(config.corpus, Partition(folder, keys, ()), opts) if keys else None
        state = state_of(current, config.output, opts) if current else None
        if state is None or state.reason != "done" or not state.stray_files:
            continue
        outcome = PartitionOutcome(folder, "repaired", "interrupted switch")
        lease = Lease(storage.join(config.output, LEASES, folder), owner, config.lease_ttl_s, opts)
        try:
            if lease.try_acquire() is not None:
                continue  # another run holds it and finishes the switch itself
            outcome.detail = _tidy(state_of(current, config.output, opts), config.output, opts)
        except Exception as e:
            outcome.action, outcome.detail = "failed", f"repair: {type(e).__name__}: {e}"
        finally:
            _release(lease, outcome)
        outcomes.append(outcome)
    return outcomes


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


def model_info(config: NightlyConfig) -> ModelInfo:
    """The model, tokenizer and generation settings of a nightly run, checked (no Ray needed)."""
    return inspect_model(_template(config))


def _template(config: NightlyConfig) -> SummarizeConfig:
    return dataclasses.replace(config.summarize, model=storage.absolute(config.summarize.model))


def run_nightly(config: NightlyConfig, dry_run: bool = False, info: ModelInfo | None = None) -> NightlyReport:
    """Repair interrupted switches, then process what is new, changed, incomplete (and stale, if asked):
    every selected partition's lease is taken, all of their remaining units flow through one actor pool, and
    each partition switches on its own, oldest first. Writes the report under `_runs/` unless a dry run, which
    only reads; also when the run is interrupted (KeyboardInterrupt: jobs.nightly turns SIGTERM into one).
    Ray must be initialized unless `dry_run`. `info` (`model_info` of the same config) skips checking the
    model again."""
    start = time.time()
    owner = new_owner()
    opts = config.summarize.storage_options
    report = NightlyReport(owner, config.corpus, config.output, dry_run, _utc(start))
    works: list[Work] = []
    finished = False  # the body ran to its end (or was stopped by SIGTERM): a failed report write then raises
    try:
        # the model, tokenizer and generation settings are checked once per run, before any partition
        info = model_info(config) if info is None else info
        settings = run_settings(_template(config), info)
        if not dry_run:
            report.partitions.extend(repair(config, owner))
        states, report.ignored_files, report.listings = plan(config, settings)
        budget = config.max_partitions if config.max_partitions is not None else len(states)
        for state in states:
            outcome = _step(config, state, owner, dry_run, budget)
            if outcome is None:
                works.append(_work(config, state, owner, settings))  # first: a SIGTERM from here releases it
                outcome = works[-1].outcome
                report.partitions.append(outcome)
                _take(config, works[-1], info)
            else:
                report.partitions.append(outcome)
            budget -= outcome.action in ("processed", "failed")
        _run_all(config, works)
        finished = True
    except KeyboardInterrupt:
        report.stopped = "interrupted (SIGTERM or Ctrl-C); partitions not reached wait for the next run"
        finished = True
        if dry_run:
            raise
    finally:
        for w in works:
            _close(w, "failed", "stopped before its switch")
        report.ended_at, report.wall_s = _utc(time.time()), round(time.time() - start, 3)
        if not dry_run:
            record_partitions(report.partitions)
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(start))
            report.report_url = storage.join(config.output, RUNS, f"{stamp}-{owner.rsplit(':', 1)[-1]}.json")
            try:
                retried(storage.write_json_atomic, report.report_url, report.to_dict(), opts)
            except Exception:
                if finished:
                    raise  # otherwise the error that ended the run is the one to see
    return report


def _step(config: NightlyConfig, state: PartitionState, owner: str, dry_run: bool,
          budget: int) -> PartitionOutcome | None:
    """A selected partition's outcome when it is skipped or a dry run; None when it is to be taken."""
    name = state.partition.path
    wanted = _wanted(state, config.reprocess)
    if not wanted and not (state.stray_files or state.staging):
        hint = " (pass --reprocess stale to redo it)" if state.reason == "stale" else ""
        return PartitionOutcome(name, "skipped", state.reason, state.detail + hint)
    if dry_run:
        lease = Lease(storage.join(config.output, LEASES, name), owner, config.lease_ttl_s,
                      config.summarize.storage_options)
        holder = lease.holder()
        leased = f" (leased by {holder['owner']} until {holder['expires']})" if holder else ""
        action = "would-process" if wanted else "skipped"
        reason = state.reason if wanted else f"{state.reason} (would tidy)"
        return PartitionOutcome(name, action, reason, state.detail + leased)
    if wanted and budget <= 0:
        return PartitionOutcome(name, "skipped", "over --max-partitions", state.reason)
    return None
