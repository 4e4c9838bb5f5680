"""A backfill of several partitions in one nightly run (one actor pool, one model load per replica) against
the same partitions run one by one (`--date` each: one pool and one model load per partition), on one local
Ray, local disk, a small random bert2bert (MiniLM's vocabulary), greedy. Prints both wall times, their ratio
and the model loads (distinct replica processes in the output).

    .venv/bin/python -m benchmarks.nightly --partitions 5 --rows 2000
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile
import time

import pyarrow.parquet as pq
import ray

from benchmarks.scale import write_corpus
from pipeline.batch import GenerationOverrides, SummarizeConfig
from pipeline.cluster import Replicas
from pipeline.nightly.config import NightlyConfig
from pipeline.nightly.run import run_nightly
from tests.helpers import random_bert2bert


def replicas_used(output: pathlib.Path) -> int:
    return len(set(pq.read_table(output, columns=["replica"], partitioning="hive").column("replica").to_pylist()))


def timed(corpus: pathlib.Path, output: pathlib.Path, model: pathlib.Path, dates: list[str | None]) -> float:
    template = SummarizeConfig(input=str(corpus), output=str(output), model=str(model),
                               generation=GenerationOverrides(num_beams=1, max_length=8),
                               replicas=Replicas(1, 1, batch_size=256))
    start = time.perf_counter()
    for date in dates:
        report = run_nightly(NightlyConfig(corpus=str(corpus), output=str(output), summarize=template, date=date))
        assert report.ok, report.to_dict()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--partitions", type=int, default=5)
    parser.add_argument("--rows", type=int, default=2000, help="rows per partition")
    parser.add_argument("--hidden", type=int, default=64, help="hidden size of the random model")
    args = parser.parse_args()
    root = pathlib.Path(tempfile.mkdtemp(prefix="bench-nightly-"))
    model = random_bert2bert(root / "model", hidden=args.hidden, layers=2, intermediate=4 * args.hidden)
    corpus = root / "corpus"
    dates = [f"2026-10-{d + 1:02d}" for d in range(args.partitions)]
    for date in dates:
        write_corpus(corpus / f"date={date}", args.rows, args.rows)
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    one = timed(corpus, root / "one-run", model, [None])
    each = timed(corpus, root / "per-partition", model, dates)
    print(f"{args.partitions} partitions x {args.rows} rows, hidden {args.hidden}")
    print(f"one run (one pool):         {one:7.1f} s, model loads: {replicas_used(root / 'one-run')}")
    print(f"one run per partition:      {each:7.1f} s, model loads: {replicas_used(root / 'per-partition')}")
    print(f"speed-up of the single run: {each / one:.2f}x")


if __name__ == "__main__":
    main()
