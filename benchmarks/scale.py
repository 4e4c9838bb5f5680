"""The summarize job at corpus scale, run as a user runs it (`python -m jobs.summarize`), with a model that costs
almost nothing (MiniLM's vocabulary, hidden 16, one layer, greedy, 4 tokens), so that what is measured is the
pipeline: wall time, rows/s, output files and their median rows, the driver's peak RSS (VmHWM, sampled from
/proc), the replicas' time outside generate, S3 requests per 1M rows (with --s3: moto's server on loopback,
counted from its request log); with --kill-at-half, instead, a run killed once about half its rows are
committed, then re-run: rows committed before the kill, rows written again (redone), the re-run's figures.

    .venv/bin/python -m benchmarks.scale --rows 100000 --rows-per-shard 1000
    .venv/bin/python -m benchmarks.scale --rows 1000000 --rows-per-shard 100000 --kill-at-half
    .venv/bin/python -m benchmarks.scale --rows 20000 --rows-per-shard 1000 --s3
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io import storage
from tests.helpers import random_bert2bert

ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "cnndm_200.jsonl"
AWS_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


def write_corpus(folder: pathlib.Path, rows: int, per_shard: int) -> None:
    """80-word articles cut from the repo's CNN/DailyMail sample, ids 0..rows-1 in shards of per_shard rows."""
    with open(DATA, encoding="utf-8") as f:
        words = [json.loads(line)["article"].split() for line in f]
    texts = [" ".join(w[i:i + 80]) for w in words for i in range(0, len(w) - 80, 80)]
    folder.mkdir(parents=True)
    for s, start in enumerate(range(0, rows, per_shard)):
        ids = range(start, min(rows, start + per_shard))
        pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "article": [texts[i % len(texts)] for i in ids]}),
                       folder / f"part-{s:05d}.parquet")


def start_moto(log: pathlib.Path) -> tuple[subprocess.Popen, str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            return proc, endpoint
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("moto did not start")


def requests_in(log: pathlib.Path) -> int:
    return sum(1 for line in open(log, encoding="utf-8", errors="replace") if '" 20' in line or '" 30' in line
               or '" 4' in line)


def job(args: list[str], env: dict, log) -> subprocess.Popen:
    """The job with its output to a file: a pipe nobody reads would fill and block the driver's logging."""
    return subprocess.Popen([sys.executable, "-m", "jobs.summarize", *args], cwd=ROOT, env=env, text=True,
                            start_new_session=True, stdout=log, stderr=subprocess.STDOUT)


def peak_rss_mb(pid: int) -> float:
    try:
        found = re.search(r"VmHWM:\s+(\d+)", open(f"/proc/{pid}/status").read())
    except OSError:
        return 0.0
    return int(found.group(1)) / 1024 if found else 0.0  # an exited process has no VmHWM


def run_job(args: list[str], env: dict, kill_when=None) -> dict:
    """Run one job to its end (or kill it once kill_when() is true); wall, peak driver RSS and its report."""
    start, peak = time.perf_counter(), 0.0
    with tempfile.TemporaryFile("w+") as log:
        proc = job(args, env, log)
        while proc.poll() is None:
            peak = max(peak, peak_rss_mb(proc.pid))
            if kill_when is not None and kill_when():
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return {"killed": True, "wall_s": time.perf_counter() - start, "rss_mb": peak}
            time.sleep(0.2)
        log.seek(0)
        report = log.read()
    if proc.returncode:
        raise RuntimeError(f"job failed:\n{report[-4000:]}")
    return {"killed": False, "wall_s": time.perf_counter() - start, "rss_mb": peak, "report": report}


def figures(result: dict, rows: int, output: str, opts: dict) -> dict:
    report = result["report"]
    folder = storage.Location.of(output, opts)
    files, fs = storage.data_files(folder), storage.arrow_fs(folder)
    sizes = [pq.read_metadata(f, filesystem=fs).num_rows for f in files]
    busy = [(float(b), float(o)) for b, o in re.findall(r"busy ([\d.]+) s, ([\d.]+)% of it outside", report)]
    return {
        "wall_s": round(result["wall_s"], 1), "rows_per_s": round(rows / result["wall_s"], 1),
        "written": int(re.search(r"written by this run: (\d+)", report).group(1)),
        "files": len(files), "median_rows_per_file": statistics.median(sizes) if sizes else 0,
        "driver_peak_rss_mb": round(result["rss_mb"]), "plan_s": float(re.search(r"planned in ([\d.]+) s", report)
                                                                           .group(1)),
        "replica_outside_generate_pct": busy[0][1] if busy else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rows-per-shard", type=int, default=1000)
    parser.add_argument("--s3", action="store_true", help="input, output and model on a moto S3 endpoint")
    parser.add_argument("--kill-at-half", action="store_true", help="kill a run at about half and re-run it")
    parser.add_argument("--job-args", default="", help="extra jobs.summarize flags, e.g. '--rows-per-file 50000'")
    args = parser.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="bench_scale_"))
    write_corpus(work / "in", args.rows, args.rows_per_shard)
    random_bert2bert(work / "model", hidden=16, layers=1, intermediate=32)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    src, out, model, opts, moto = str(work / "in"), str(work / "out"), str(work / "model"), {}, None
    if args.s3:
        moto, endpoint = start_moto(work / "moto.log")
        env.update({**AWS_ENV, "AWS_ENDPOINT_URL": endpoint})
        os.environ.update({**AWS_ENV, "AWS_ENDPOINT_URL": endpoint})
        import s3fs

        fs = s3fs.S3FileSystem()
        fs.mkdir("bench")
        fs.put(src, "bench/in", recursive=True)
        fs.put(model, "bench/model", recursive=True)
        src, out, model = "s3://bench/in", "s3://bench/out", "s3://bench/model"
    flags = ["--input", src, "--output", out, "--model", model, "--num-beams", "1", "--max-length", "4",
             *args.job_args.split()]
    print(f"rows {args.rows} in {-(-args.rows // args.rows_per_shard)} shards of {args.rows_per_shard}; "
          f"{'moto S3' if args.s3 else 'local disk'}; jobs.summarize {' '.join(flags[6:])}", flush=True)
    try:
        if not args.kill_at_half:
            before = requests_in(work / "moto.log") if moto else 0
            full = figures(run_job(flags, env), args.rows, out, opts)
            if moto:
                full["s3_requests_per_1M_rows"] = round((requests_in(work / "moto.log") - before) * 1e6 / args.rows)
            print("full run: " + json.dumps(full), flush=True)
            return
        per_file, folder = None, storage.Location.of(out, opts)

        def half_committed() -> bool:
            nonlocal per_file
            files = storage.data_files(folder)
            if files and per_file is None:
                per_file = pq.read_metadata(files[0], filesystem=storage.arrow_fs(folder)).num_rows
            return bool(files) and len(files) * per_file >= args.rows // 2

        killed = run_job(flags, env, kill_when=half_committed)
        time.sleep(5)  # the dead driver's workers stop
        fs = storage.arrow_fs(folder)
        committed = sum(pq.read_metadata(f, filesystem=fs).num_rows for f in storage.data_files(folder))
        again = figures(run_job(flags, env), args.rows, out, opts)
        print("killed at half, re-run: " + json.dumps({
            "killed_after_s": round(killed["wall_s"], 1), "committed_before_kill": committed,
            "rows_redone": committed + again["written"] - args.rows, **{f"rerun_{k}": v for k, v in again.items()}}),
            flush=True)
    finally:
        if moto:
            moto.terminate()


if __name__ == "__main__":
    main()
