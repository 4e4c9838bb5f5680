"""Nightly corpus processing: summarize the dated partitions that are new, changed or incomplete, exactly once.

    ray job submit --working-dir . -- python -m jobs.nightly \\
        --corpus s3://bucket/corpus/ --output s3://bucket/summaries/ --model s3://bucket/models/bert2bert_cnn/

A changed partition summarizes only its new and rewritten shards. Partitions done with another model or other
settings are listed as stale and left alone unless --reprocess says otherwise. SIGTERM (`ray job stop`) stops
the run at once: the leases it took are released and its report is still written. See
docs/nightly.md for a partition's life, the crash points and what readers see.

Exit codes: 0 every selected partition processed or skipped; 1 a partition failed (or the run was stopped);
3 a partition is incomplete: rows ran out of device memory even alone, so it is not switched and the next run
summarizes them again (--keep-oom-errors switches it with them as errors).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys

from jobs import common
from pipeline.cluster import connect
from pipeline.nightly import NightlyConfig, NightlyReport, model_info, run_nightly


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.job_parser("jobs.nightly", __doc__)
    parser.add_argument("--corpus", required=True, help="root of the corpus, partitioned as date=YYYY-MM-DD/")
    parser.add_argument("--output", required=True, help="root of the output; mirrors the corpus partitions")
    common.add_model_flags(parser)
    when = parser.add_mutually_exclusive_group()
    when.add_argument("--date", help="process only this date (YYYY-MM-DD)")
    when.add_argument("--since", help="process this date and later (YYYY-MM-DD)")
    parser.add_argument("--max-partitions", type=int, help="process at most this many partitions, oldest first")
    parser.add_argument("--dry-run", action="store_true",
                        help="list what would be processed and why, touching nothing (no Ray needed; the settings "
                             "compared include the replicas' dtype: with --dtype auto, give --gpus-per-replica as "
                             "the real run gets it, else CPU replicas (float32) are assumed)")
    parser.add_argument("--reprocess", choices=["none", "stale", "all"], default="none",
                        help="also redo partitions done with another model or settings (stale), or every selected "
                             "partition (all); default: list stale partitions in the report and leave them")
    parser.add_argument("--lease-ttl", type=float, default=600.0,
                        help="seconds a partition lease lasts unless renewed; a crashed run's partitions wait "
                             "this long before another run takes them")
    common.add_generation_flags(parser)
    common.add_scaling_flags(parser)
    common.add_storage_flags(parser)
    return parser.parse_args(argv)


def print_report(report: NightlyReport) -> None:
    title = "dry run" if report.dry_run else "run"
    print(f"== nightly {title} {report.run}: {report.corpus} -> {report.output} ==")
    for o in report.partitions:
        rows = f"  rows {o.rows_in} in, {o.rows_out} out, {o.rows_written} written now" if o.rows_in else ""
        failed = f", failed rows {o.failed_rows}" if o.failed_rows else ""
        seconds = f"  {o.seconds:.1f} s" if o.seconds else ""
        print(f"{o.action:>13}  {o.partition}  [{o.reason}] {o.detail}{rows}{failed}{seconds}")
    print(f"discovery made {report.listings} listing(s)")
    if report.stopped:
        print(f"stopped: {report.stopped}")
    if report.ignored_files:
        print(f"ignored {len(report.ignored_files)} Parquet file(s) outside date=YYYY-MM-DD partitions, e.g. "
              f"{report.ignored_files[0]}")
    totals = report.to_dict()["totals"]
    print("totals: " + json.dumps(totals) + f"  wall {report.wall_s:.1f} s")
    if report.report_url:
        print(f"report: {report.report_url}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        template = common.summarize_config(args, args.corpus, args.output)
        config = NightlyConfig(corpus=args.corpus, output=args.output, summarize=template, date=args.date,
                               since=args.since, max_partitions=args.max_partitions, lease_ttl_s=args.lease_ttl,
                               reprocess=args.reprocess)
        info = model_info(config)  # before Ray: a model the job cannot use fails in seconds
        if not args.dry_run:
            connect(config.summarize.replicas.max, config.summarize.replicas.cpus)
            config = dataclasses.replace(config, summarize=common.cluster_defaults(template, args))
        common.log_config("nightly config", config)
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # run_nightly writes its report on the way out
        report = run_nightly(config, dry_run=args.dry_run, info=info)
    except Exception as e:  # the job's contract: one clear line and a non-zero exit code
        return common.fail("nightly", e, args.storage_options)
    print_report(report)
    return 1 if not report.ok else common.EXIT_INCOMPLETE if report.count("incomplete") else 0


if __name__ == "__main__":
    sys.exit(main())
