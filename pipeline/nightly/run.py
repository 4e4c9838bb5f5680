"""Nightly corpus processing: summarize every dated partition that is new, changed or incomplete, exactly once.

A run repairs interrupted switches (`repair`), plans the selected partitions (`partitions`), takes each one's
lease and starts its summarize run into the partition's staging (`partition_work`), runs all of them through
one actor pool (`shared_pool`), switches each partition by its marker as soon as its units are committed,
and writes its report (`report`). docs/nightly.md has the state diagram and the crash points.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from ..batch import ModelInfo, SummarizeConfig, inspect_model, run_settings
from ..cluster.metrics import record_partitions
from ..io import storage
from ..io.lease import Lease, new_owner, retried
from ..io.storage import Location
from .config import NightlyConfig
from .partition_work import PartitionWork, close_work, new_work, take_partition, wanted_now
from .partitions import LEASES, PartitionState, Roots, discover, state_of
from .repair import repair
from .report import NightlyReport, PartitionOutcome, utc
from .shared_pool import run_together

RUNS = "_runs"


def plan(config: NightlyConfig, roots: Roots, settings: dict[str, Any] | None = None
         ) -> tuple[list[PartitionState], list[str], int]:
    """The selected partitions' states, oldest first, the ignored files and the listings made. Reads only."""
    found = discover(roots.corpus, config.date, config.since)
    states = [state_of(p, roots.output, settings) for p in found.partitions]
    return states, found.ignored, found.listings


log = logging.getLogger(__name__)


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
    roots = Roots(Location.of(config.corpus, opts), Location.of(config.output, opts))
    report = NightlyReport(owner, config.corpus, config.output, dry_run, utc(start))
    works: list[PartitionWork] = []
    finished = False  # the body ran to its end (or was stopped by SIGTERM): a failed report write then raises
    try:
        # the model, tokenizer and generation settings are checked once per run, before any partition
        info = model_info(config) if info is None else info
        settings = run_settings(_template(config), info)
        if not dry_run:
            report.partitions.extend(repair(config, roots, owner))
        states, report.ignored_files, report.listings = plan(config, roots, settings)
        budget = config.max_partitions if config.max_partitions is not None else len(states)
        for state in states:
            outcome = _outcome_without_work(config, roots, state, owner, dry_run, budget)
            if outcome is None:
                works.append(new_work(config, roots, state, owner, settings))  # first: a SIGTERM from here releases it
                outcome = works[-1].outcome
                report.partitions.append(outcome)
                take_partition(config, works[-1], info)
            else:
                report.partitions.append(outcome)
            budget -= outcome.action in ("processed", "failed")
        run_together(config, works)
        finished = True
    except KeyboardInterrupt:
        report.stopped = "interrupted (SIGTERM or Ctrl-C); partitions not reached wait for the next run"
        finished = True
        if dry_run:
            raise
    finally:
        for w in works:
            close_work(w, "failed", "stopped before its switch")
        report.ended_at, report.wall_s = utc(time.time()), round(time.time() - start, 3)
        if not dry_run:
            record_partitions(report.partitions)
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(start))
            at = roots.output.child(RUNS, f"{stamp}-{owner.rsplit(':', 1)[-1]}.json")
            report.report_url = at.url
            try:
                retried(storage.write_json_atomic, at, report.to_dict())
            except Exception:
                if finished:
                    raise  # otherwise the error that ended the run is the one to see
    return report


def _outcome_without_work(config: NightlyConfig, roots: Roots, state: PartitionState, owner: str, dry_run: bool,
          budget: int) -> PartitionOutcome | None:
    """A selected partition's outcome when it is skipped or a dry run; None when it is to be taken."""
    name = state.partition.path
    wanted = wanted_now(state, config.reprocess)
    if not wanted and not (state.stray_files or state.staging):
        hint = " (pass --reprocess stale to redo it)" if state.reason == "stale" else ""
        return PartitionOutcome(name, "skipped", state.reason, state.detail + hint)
    if dry_run:
        lease = Lease(roots.output.child(LEASES, name), owner, config.lease_ttl_s)
        holder = lease.holder()
        leased = f" (leased by {holder['owner']} until {holder['expires']})" if holder else ""
        action = "would-process" if wanted else "skipped"
        reason = state.reason if wanted else f"{state.reason} (would tidy)"
        return PartitionOutcome(name, action, reason, state.detail + leased)
    if wanted and budget <= 0:
        return PartitionOutcome(name, "skipped", "over --max-partitions", state.reason)
    return None
