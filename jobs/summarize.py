"""Batch summarization: Parquet shards at any fsspec URL -> summaries as Parquet.

    ray job submit --working-dir . -- python -m jobs.summarize \\
        --input s3://bucket/articles/ --output s3://bucket/summaries/ --model s3://bucket/models/bert2bert_cnn/

Exit codes: 0 complete (or already complete); 1 failed (one line on stderr); 3 incomplete: every unit is
committed but rows ran out of device memory even alone, so the output has no _SUCCESS.json marker yet; the
same command again summarizes their units again (--keep-oom-errors finishes with them as errors).
"""

from __future__ import annotations

import argparse
import sys

from jobs import common
from pipeline.batch import preflight, run
from pipeline.cluster import connect


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.job_parser("jobs.summarize", __doc__)
    parser.add_argument("--input", required=True, help="Parquet file, folder of shards or glob (local or s3://...)")
    parser.add_argument("--output", required=True, help="output folder URL for the summary Parquet files")
    common.add_model_flags(parser)
    parser.add_argument("--overwrite", action="store_true",
                        help="summarize again; the old output is replaced once the new one is complete")
    common.add_generation_flags(parser)
    common.add_scaling_flags(parser)
    common.add_storage_flags(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = common.summarize_config(args, args.input, args.output, overwrite=args.overwrite)
        # before Ray: a meaningless job fails in seconds, with no cluster work; "auto"'s dtype follows the GPUs
        checked = preflight(config, dtype_settled=args.gpus_per_replica is not None)
        connect(config.replicas.max, config.replicas.cpus)
        config = common.cluster_defaults(config, args)
        common.log_config("summarize config", config)
        result = run(config, checked)
    except Exception as e:  # the job's contract: one clear line and a non-zero exit code
        return common.fail("summarize", e, args.storage_options)
    common.print_report(result)
    return common.EXIT_INCOMPLETE if result.status == "incomplete" else 0


if __name__ == "__main__":
    sys.exit(main())
