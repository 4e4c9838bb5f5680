"""The summarize job's rows/s against bare in-process generate: same rows, model, batch size and threads.

    .venv/bin/python -m benchmarks.pipeline --rows 64 --batch-size 8

The job's time is its whole wall time as it reports it (preflight, Ray Data start-up, model load in the actor,
read, tokenize, generate, write, checkpoint bookkeeping); bare is tokenize + generate + decode in a loop, after
the model is loaded. The job runs twice, on the first half of the rows and on all of them: the difference
is its steady-state (marginal) throughput, with the fixed start-up cost (actor start, model load) taken out,
which is what a corpus-sized job sees. A 16-row run first warms Ray's worker processes.
Goal: the job keeps at least 85% of the bare throughput.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch

from jobs.demo import warm_start
from model import EncoderDecoderModel, Tokenizer
from pipeline.batch import GenerationOverrides, SummarizeConfig
from pipeline.batch.run import run
from pipeline.cluster import Replicas

DATA = pathlib.Path(__file__).resolve().parent.parent / "data" / "cnndm_200.jsonl"


def bare(model_dir: pathlib.Path, texts: list[str], batch_size: int, max_tokens: int, gen: dict) -> float:
    model, tok = EncoderDecoderModel.from_pretrained(model_dir), Tokenizer.from_pretrained(model_dir)
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = tok(texts[i:i + batch_size], max_length=max_tokens)
            tok.batch_decode(model.generate(enc["input_ids"], enc["attention_mask"], **gen))
    return len(texts) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=128, help="articles to summarize (a multiple of 32)")
    parser.add_argument("--batch-size", type=int, default=8, help="articles per generate call")
    parser.add_argument("--threads", type=int, default=2, help="torch threads, bare and per replica")
    parser.add_argument("--max-input-tokens", type=int, default=256, help="input truncation")
    args = parser.parse_args()
    gen = GenerationOverrides(num_beams=2, max_length=32)
    with open(DATA, encoding="utf-8") as f:
        rows = [json.loads(line) for _, line in zip(range(args.rows), f, strict=False)]
    work = pathlib.Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    model_dir = warm_start(work / "model")
    warm, half, full = 16, len(rows) // 2, len(rows)
    for n in (warm, half, full):
        (work / f"in{n}").mkdir()
        for s in range(0, n, 16):
            table = pa.Table.from_pylist([{"id": r["id"], "article": r["article"]} for r in rows[s:s + 16]])
            pq.write_table(table, work / f"in{n}" / f"part-{s:04d}.parquet")
    torch.set_num_threads(args.threads)
    bare_rps = bare(model_dir, [r["article"] for r in rows], args.batch_size, args.max_input_tokens,
                    gen.as_kwargs())
    ray.init(address="local", num_cpus=args.threads + 2, include_dashboard=False, log_to_driver=False)
    walls = {}
    for n in (warm, half, full):  # the first run in a fresh Ray also pays for starting its worker processes
        config = SummarizeConfig(input=str(work / f"in{n}"), output=str(work / f"out{n}"),
                                 model=str(model_dir), max_input_tokens=args.max_input_tokens, generation=gen,
                                 replicas=Replicas(1, 1, cpus=args.threads, batch_size=args.batch_size))
        result = run(config)
        assert result.rows_written == n, result
        walls[n] = result.wall_s
    job_rps, marginal_rps = full / walls[full], (full - half) / (walls[full] - walls[half])
    print(f"rows {len(rows)}, batch {args.batch_size}, threads {args.threads}, {gen.as_kwargs()}")
    print(f"bare generate: {bare_rps:.2f} rows/s")
    print(f"summarize job, end to end: {job_rps:.2f} rows/s (wall {walls[full]:.1f} s for {full} rows, "
          f"{walls[half]:.1f} s for {half})")
    print(f"summarize job, steady state: {marginal_rps:.2f} rows/s")
    print(f"job / bare: end to end {job_rps / bare_rps:.1%}, steady state {marginal_rps / bare_rps:.1%}")


if __name__ == "__main__":
    main()
