"""A summarize run, exactly once per row: plan, dataflow, marker.

`plan_run` finishes an interrupted publish, plans the units of work (`units`), skips those already committed
by an earlier attempt of the same run (one listing) and checks once that ids are unique (`unique_ids`);
`run_planned` streams the rest of one or more planned runs through one dataflow (`dataflow`); `finish_run`
ends with the marker `_SUCCESS.json` naming the output's files, or with `--overwrite` publishes the staged
output into place (`pipeline.io.commit`). `run` does the three under the output's lease.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from model import ERR_OOM

from ..cluster.scaling import scaled_pool
from ..io import commit, fingerprints, storage
from ..io.lease import Lease, new_owner, owner_gone
from ..io.storage import Location
from . import dataflow, unique_ids
from .config import SummarizeConfig
from .inputs import DEFAULT_ID_COLUMN, DERIVED_ID_COLUMN, InputPlan
from .payload import unit_rows
from .preflight import Preflighted, check_same_run, preflight, staging
from .result import SummarizeResult
from .settings import max_tokens, run_identity
from .units import Unit, plan_units

log = logging.getLogger(__name__)

LEASE_NAME = "_lease"  # in the output: held by the run that writes it
RUN_LEASE_TTL_S = 60.0  # a run on another host that died holds the output this long at most


def _run_record(target: Location, wanted: dict[str, Any], config: SummarizeConfig, names: list[str],
                owner: str) -> dict[str, Any]:
    """The run record at `target`: the one of an earlier attempt of this run (preflight refused any other), or
    a new one. Data files without a record are another job's: resuming into them would mix two outputs."""
    at = target.child(commit.RUN_NAME)
    record = storage.read_json(at)
    if record is None and names:
        raise RuntimeError(f"output {target} holds Parquet files from another job (no run record {at}); pass "
                           "--overwrite to replace them")
    if record is not None:
        return record
    record = {"attempt": commit.new_attempt(), "identity": wanted, "rows_per_file": config.rows_per_file,
              "ids_unique": False, "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "code_version": fingerprints.code_version(), "owner": owner}
    ours, there = storage.create_json(at, record, "attempt")  # its own after a lost reply too: the attempt says
    if not ours:
        other = there or {}
        raise RuntimeError(f"output {target} was started at the same moment by another run ({other.get('owner')}, "
                           f"attempt {other.get('attempt')}); this one stops. Run it again once that run has ended "
                           "to resume it or find it complete")
    return record


def _prepare_target(config: SummarizeConfig, output: Location, wanted: dict[str, Any],
                    owner: str) -> tuple[Location, dict[str, Any], list[str]]:
    """The folder this run writes into, its run record and the data files already there (one listing)."""
    target = staging(output) if config.overwrite else output
    if config.overwrite:
        record = storage.read_json(target.child(commit.RUN_NAME))
        if record is None or fingerprints.differences(record["identity"], wanted):
            storage.remove_tree(target)  # a staging of other settings: nothing in it can be reused
    names = storage.data_names(target)
    return target, _run_record(target, wanted, config, names, owner), names


def _finish_publish(output: Location) -> dict[str, Any] | None:
    """A complete staged output whose publish was interrupted is published first; returns the marker."""
    staged = staging(output)
    marker = storage.read_json(staged.child(storage.MARKER_NAME))
    if marker is not None:
        commit.publish(staged, output, marker["files"], marker)
    return marker


@dataclass
class PlannedRun:
    """A run whose plan is made and whose target is ready: left to do are the dataflow over `todo`, then
    `finish_run`."""

    config: SummarizeConfig
    plan: InputPlan
    wanted: dict[str, Any]
    result: SummarizeResult
    output: Location  # config.output, resolved
    target: Location  # the output, or its staging with --overwrite
    attempt: str
    units: list[Unit]
    todo: list[Unit]
    max_input_tokens: int
    started: float

    @property
    def complete(self) -> bool:
        return self.result.units == len(self.units)


def plan_run(config: SummarizeConfig, checked: Preflighted | None = None, owner: str | None = None
          ) -> PlannedRun | SummarizeResult:
    """Everything of a run before its dataflow: finish a pending publish, plan the units, find the committed
    ones, check the ids once. A SummarizeResult when the output is already complete. `owner` (of
    `lease.new_owner`) is recorded in a new run record."""
    start = time.perf_counter()
    checked = preflight(config) if checked is None else dataclasses.replace(checked, config=dataclasses.replace(
        config, input=checked.config.input, output=checked.config.output, model=checked.config.model))
    config, plan, info, output = checked.config, checked.plan, checked.info, checked.output
    wanted = run_identity(config, plan, info)
    check_same_run(config, output, wanted)  # again: another run may have written the output since preflight
    result = SummarizeResult(status="complete", output=config.output, rows_in=plan.rows,
                             generation=wanted["generation"])
    if plan.derived_id:
        result.notes.append(f"input has no {DEFAULT_ID_COLUMN!r} column: using the derived id column "
                            f"{DERIVED_ID_COLUMN!r} (a stable uint64 hash of shard name and row number)")
    published = _finish_publish(output)
    if published is not None:
        result.notes.append(f"finished publishing the complete staged output of an interrupted --overwrite into "
                            f"{config.output}")
        if published["identity"] == wanted:  # that was this very request
            config = dataclasses.replace(config, overwrite=False)
    marker = storage.read_json(output.child(storage.MARKER_NAME))
    if marker is not None and not config.overwrite:
        result.status, result.rows_out = "already-complete", marker["rows_out"]
        result.notes.append(f"output {config.output} is already complete ({marker['rows_out']} rows); nothing "
                            "written. Pass --overwrite to summarize again.")
        return result
    target, record, names = _prepare_target(config, output, wanted, owner or new_owner())
    attempt = record["attempt"]
    units = plan_units(plan.shards, record["rows_per_file"])
    planned = {u.name for u in units}
    done = {u: n for u, n in commit.committed_units(names, attempt).items() if u in planned}
    strays = sorted(set(names) - set(done.values()))
    if strays:
        raise RuntimeError(f"output {target} holds {len(strays)} file(s) that are not units of this run, e.g. "
                           f"{strays[0]}; pass --overwrite to replace them")
    committed = dict(zip(done, commit.read_stats(target, list(done.values())), strict=True))
    redo = {} if config.keep_oom_errors else out_of_memory(committed)
    todo = [u for u in units if u.name not in done or u.name in redo]
    if done:
        result.notes.append(f"resuming attempt {attempt}: {len(done)} of {len(units)} units already committed")
    if redo:
        result.notes.append(f"{sum(redo.values())} row(s) in {len(redo)} committed unit(s) ran out of device memory "
                            "in an earlier run: summarizing those units again")
    if not plan.derived_id and not record["ids_unique"]:
        unique_ids.check_unique(plan)
        record = {**record, "ids_unique": True}
        storage.write_json_atomic(target.child(commit.RUN_NAME), record)
    for name, stats in committed.items():
        if name not in redo:
            result.add(stats, by_replica=False)
    result.plan_s = time.perf_counter() - start
    return PlannedRun(config, plan, wanted, result, output, target, attempt, units, todo, max_tokens(config, info),
                      start)


def run_planned(pendings: list[PlannedRun], config: SummarizeConfig,
            on_unit: Callable[[PlannedRun], None] = lambda p: None) -> None:
    """One dataflow and one actor pool for the remaining units of every pending run (same model and settings,
    e.g. the nightly job's partitions); on_unit(pending) after each unit committed. Whatever on_unit raises
    stops the dataflow (Ray Data shuts the execution down when its iterator is dropped) and propagates."""
    rows = [row for i, p in enumerate(pendings) for row in
            unit_rows(p.todo, i, p.target.url, p.attempt, p.plan.id_column, p.plan.derived_id)]
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


def out_of_memory(committed: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Unit name -> its rows that ran out of device memory even alone, for the committed units that have any."""
    return {name: n for name, stats in committed.items() if (n := stats["failed_by_reason"].get(ERR_OOM, 0))}


def finish_run(p: PlannedRun, before_commit: Callable[[], None] = lambda: None) -> SummarizeResult:
    """Check that every unit is committed, write the marker (and publish a staged --overwrite); before_commit()
    runs right before the marker is written (a lease check). Rows that ran out of device memory even alone
    leave the output without its marker (status "incomplete"): the next run of it summarizes their units
    again, unless `keep_oom_errors`."""
    config, result, attempt = p.config, p.result, p.attempt
    if result.rows_out != p.plan.rows or result.units != len(p.units):
        raise RuntimeError(f"output {p.target} has {result.rows_out} rows in {result.units} files for "
                           f"{p.plan.rows} input rows in {len(p.units)} units")
    result.wall_s = time.perf_counter() - p.started
    oom = result.failed_by_reason.get(ERR_OOM, 0)
    if oom and not config.keep_oom_errors:
        result.status = "incomplete"
        result.notes.append(f"{oom} row(s) ran out of device memory even alone ({ERR_OOM!r}): the output is not "
                            "marked complete; run again to retry them (or pass --keep-oom-errors to finish with "
                            "them as errors)")
        return result
    files = sorted(commit.file_name(u.name, attempt) for u in p.units)
    shard_files: dict[str, list[str]] = {}
    for u in p.units:
        shard_files.setdefault(u.shard_name, []).append(commit.file_name(u.name, attempt))
    marker = {
        "rows_in": result.rows_in, "rows_out": result.rows_out, "failed_by_reason": result.failed_by_reason,
        "truncated": result.truncated, "id_column": p.plan.id_column, "input": config.input, "model": config.model,
        "generation": result.generation, "identity": p.wanted, "attempt": attempt, "files": files,
        "shard_files": shard_files,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "code_version": fingerprints.code_version(),
    }
    before_commit()
    if config.overwrite:
        storage.write_json_atomic(p.target.child(storage.MARKER_NAME), marker)
        commit.publish(p.target, p.output, files, marker)
    else:
        storage.write_json_atomic(p.output.child(storage.MARKER_NAME), marker)
        storage.remove_tree(p.target.child(commit.RUN_NAME))
    return result


def take_output(output: Location) -> Lease:
    """The output's lease, held (and renewed) for the whole run: two runs never write one output at once. A
    holder whose process is gone from this host is taken over at once; any other live holder is an error
    naming it."""
    lease = Lease(output.child(LEASE_NAME), new_owner(), RUN_LEASE_TTL_S)
    holder = lease.try_acquire()
    if holder is not None and owner_gone(holder):
        holder = lease.take_over()
    if holder is not None:
        raise RuntimeError(f"output {output} is being written by another run ({holder['owner']}, its lease "
                           f"runs until {holder['expires']} unless renewed); this one stops. Run it again once that "
                           "run has ended to resume it or find it complete, or choose another output")
    lease.keep_alive()
    return lease


def run(config: SummarizeConfig, checked: Preflighted | None = None) -> SummarizeResult:
    """Summarize `config.input` into `config.output`, exactly once per row, under the output's lease. Ray must
    be initialized. `checked` (from `preflight` of the same input, model and output) skips a second preflight."""
    checked = preflight(config) if checked is None else checked
    lease = take_output(checked.output)
    try:
        pending = plan_run(config, checked, lease.owner)
        if isinstance(pending, SummarizeResult):
            return pending
        run_planned([pending], pending.config, lambda p: lease.ensure_held())
        return finish_run(pending, lease.check)
    finally:
        try:
            lease.release()
        except Exception as e:  # the lease expires on its own; the run's own outcome (or error) stands
            log.warning("the lease of output %s was not released (%s: %s); it expires at %s", config.output,
                        type(e).__name__, e, time.strftime("%H:%M:%S", time.gmtime(lease.expires_at)))
