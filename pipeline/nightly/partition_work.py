"""One partition taken for a nightly run, from its lease to its switch: reuse of unchanged shards, the summarize
run of the rest into the partition's staging, the switch by marker."""

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

from ..batch import (
    ModelInfo,
    PlannedRun,
    check_unique,
    finish_run,
    generation_settings,
    inspect_input,
    plan_run,
    preflight,
)
from ..io import commit, storage
from ..io.fingerprints import code_version
from ..io.lease import Lease
from ..io.storage import Location
from .config import NightlyConfig
from .partitions import LEASES, STAGING, Partition, PartitionState, Roots, rescan, state_of
from .report import PartitionOutcome, utc

log = logging.getLogger(__name__)


def _run_id(partition: Partition, settings: dict[str, Any]) -> str:
    """Same inputs and settings -> same id, so a re-run resumes the staging of a killed one."""
    key = {"inputs": partition.manifest(), "settings": settings}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _drop_other_runs(folder: Location, keep: str) -> None:
    """Delete run-* folders other than `keep`: staging of other inputs, weights or settings."""
    fs = folder.fresh_fs()
    for path in fs.ls(folder.path, detail=False) if fs.isdir(folder.path) else []:
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


@dataclass
class PartitionWork:
    """One partition taken for this run, from its lease to its switch."""

    state: PartitionState
    roots: Roots
    lease: Lease
    outcome: PartitionOutcome
    run_id: str
    started: float
    settings: dict[str, Any]
    kept: dict[str, list[str]] = field(default_factory=dict)  # unchanged shard -> its committed output files
    totals: dict[str, Any] = field(default_factory=dict)
    summarized: bool = False  # some shards are summarized (into the staging), not all kept
    pending: PlannedRun | None = None  # that summarize run, unless its staging was complete already
    done: bool = False  # published, failed or skipped: nothing left to do


def start_partition(config: NightlyConfig, state: PartitionState, info: ModelInfo, settings: dict[str, Any],
           work: PartitionWork) -> None:
    """Everything before the dataflow: reuse the unchanged shards' summaries, check ids over the whole
    partition, plan the summarize run of the rest into the partition's staging."""
    template, partition, roots = config.summarize, state.partition, work.roots
    staging_root = roots.output.child(STAGING, partition.path)
    staged = staging_root.child(f"run-{work.run_id}")
    _drop_other_runs(staging_root, f"run-{work.run_id}")
    work.kept = _reusable(state, settings)
    todo = [f.name for f in partition.inputs if f.name not in work.kept]
    job = dataclasses.replace(template, input=roots.corpus.child(partition.path, "*.parquet").url, output=staged.url,
                              overwrite=False, only_shards=tuple(todo) if work.kept else ())
    totals = {"rows_in": 0, "rows_out": 0, "failed_by_reason": Counter(), "truncated": 0, "rows_written": 0,
              "oom_splits": 0,
              "shard_files": dict(work.kept), "files": sorted(f for files in work.kept.values() for f in files),
              "generation": generation_settings(info.generation),
              "id_column": (state.marker or {}).get("id_column")}
    for stats in commit.read_stats(roots.output.child(partition.path), totals["files"]):
        totals["rows_in"] += stats["rows"]
        totals["rows_out"] += stats["rows"]
        totals["failed_by_reason"].update(stats["failed_by_reason"])
        totals["truncated"] += stats["truncated"]
    work.totals = totals
    if work.kept:
        whole = inspect_input(dataclasses.replace(job, only_shards=()))
        if not whole.derived_id:  # the new shards' ids must not repeat the kept shards' ones
            check_unique(whole)
    work.summarized = bool(todo)
    if not todo:  # shards only removed: a staging folder all the same, so that `repair` finds a crashed switch
        storage.write_json_atomic(staged.child("_SWITCH.json"), {"partition": partition.path})
    if todo:
        begun = plan_run(job, preflight(job, info))
        work.pending = begun if isinstance(begun, PlannedRun) else None  # None: staged and complete already


def switch_partition(config: NightlyConfig, work: PartitionWork) -> None:
    """Check the staged run and switch the partition's new set of files into place; raises on any failure. A
    staged run left incomplete by rows that ran out of device memory is not switched: its outcome says so."""
    template, partition, roots = config.summarize, work.state.partition, work.roots
    staging_root = roots.output.child(STAGING, partition.path)
    staged = staging_root.child(f"run-{work.run_id}")
    totals = work.totals
    if work.pending is not None:
        result = finish_run(work.pending)
        totals["rows_written"], totals["generation"] = result.rows_written, result.generation
        totals["oom_splits"] = result.oom_splits
        if result.status == "incomplete":  # no marker in the staging: the partition stays "incomplete"
            o = work.outcome
            o.action, o.detail = "incomplete", result.notes[-1]
            o.rows_in, o.rows_out, o.rows_written = result.rows_in, result.rows_out, result.rows_written
            o.failed_rows, o.oom_splits = result.failed_by_reason, result.oom_splits
            return
    if work.summarized:
        summary = storage.read_json(staged.child(storage.MARKER_NAME))
        if summary is None or summary["rows_out"] != summary["rows_in"]:  # never mark a partial partition done
            counts = f"{summary['rows_out']} rows for {summary['rows_in']} input rows" if summary else "no marker"
            raise RuntimeError(f"staged output {staged} is incomplete: {counts}")
        for key in ("rows_in", "rows_out", "truncated"):
            totals[key] += summary[key]
        totals["failed_by_reason"].update(summary.get("failed_by_reason", {}))
        totals["shard_files"].update(summary["shard_files"])
        totals["files"] = sorted(totals["files"] + summary["files"])
        totals["id_column"] = summary.get("id_column")
    now = rescan(roots.corpus, partition)
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
        "reused_shards": sorted(work.kept), "started_at": utc(work.started), "ended_at": utc(time.time()),
        "code_version": code_version(), "owner": work.lease.owner,
    }
    commit.publish(staged, roots.output.child(partition.path), totals["files"], marker)
    storage.remove_tree(staging_root)
    o = work.outcome
    o.rows_in, o.rows_out, o.rows_written = marker["rows_in"], marker["rows_out"], totals["rows_written"]
    o.failed_rows, o.oom_splits = marker["failed_rows"], totals["oom_splits"]
    if work.kept:
        o.detail += f" ({len(work.kept)} unchanged shard(s) kept, {len(partition.inputs) - len(work.kept)} summarized)"


def release_lease(lease: Lease, outcome: PartitionOutcome) -> None:
    """Release the lease; a storage error here fails nothing: the lease expires on its own."""
    try:
        lease.release()
    except Exception as e:
        outcome.detail += (f"; the lease was not released ({type(e).__name__}: {e}), it expires at "
                           f"{utc(lease.expires_at)}")


def close_work(work: PartitionWork, action: str | None = None, detail: str = "") -> None:
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
    release_lease(work.lease, work.outcome)
    work.outcome.seconds = round(time.time() - work.started, 3)


def new_work(config: NightlyConfig, roots: Roots, state: PartitionState, owner: str,
             settings: dict[str, Any]) -> PartitionWork:
    partition = state.partition
    outcome = PartitionOutcome(partition.path, "processed", state.reason, state.detail)
    lease = Lease(roots.output.child(LEASES, partition.path), owner, config.lease_ttl_s)
    return PartitionWork(state, roots, lease, outcome, _run_id(partition, settings), time.time(), settings)


def take_partition(config: NightlyConfig, work: PartitionWork, info: ModelInfo) -> None:
    """Take the partition's lease, look again (another run may have done it), then tidy it or start its work.
    Any error, storage ones included, fails this partition only."""
    settings, lease, outcome, roots = work.settings, work.lease, work.outcome, work.roots
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
        current = rescan(roots.corpus, partition)
        if current is None:
            outcome.reason = "gone"
            close_work(work, "skipped", "its input files were removed")
            return
        fresh = state_of(current, roots.output, settings)
        work.state, work.run_id = fresh, _run_id(current, settings)
        if not wanted_now(fresh, config.reprocess):
            outcome.reason = fresh.reason
            tidied = tidy_partition(fresh, roots.output)
            done = "completed by another run" if fresh.reason == "done" else fresh.detail
            close_work(work, "skipped", tidied or done)
            return
        start_partition(config, fresh, info, settings, work)
    except Exception as e:  # one partition's failure is reported; the others still run
        close_work(work, "failed", f"{type(e).__name__}: {e}")


def wanted_now(state: PartitionState, reprocess: str) -> bool:
    return state.todo or reprocess == "all" or (reprocess == "stale" and state.reason == "stale")


def tidy_partition(state: PartitionState, output: Location) -> str:
    """Finish an interrupted switch: delete data files the marker does not name, and staging leftovers."""
    storage.remove_files(output.child(state.partition.path), list(state.stray_files))
    if state.staging:
        storage.remove_tree(output.child(STAGING, state.partition.path))
    done = [f"removed {len(state.stray_files)} old file(s)"] if state.stray_files else []
    return ", ".join(done + (["removed staging leftovers"] if state.staging else []))
