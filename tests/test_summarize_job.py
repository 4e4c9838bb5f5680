"""The job as users run it: `ray job submit` to a head on loopback against moto S3, and kill-and-resume."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.io import storage
from pipeline.io.storage import Location
from tests.helpers import AWS_ENV, articles, direct_summaries, free_port, job, quiet, stage_on_s3, write_shards

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAY = os.path.join(os.path.dirname(sys.executable), "ray")
GEN = ["--num-beams", "2", "--max-length", "12", "--max-input-tokens", "96"]


@pytest.fixture
def ray_head(tmp_path):
    """`ray start --head --block` on loopback with its own ports; torn down by killing only its process group."""
    ports = {name: free_port() for name in ("port", "dashboard-port", "ray-client-server-port", "metrics-export-port",
                                            "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                            "runtime-env-agent-port", "node-manager-port", "object-manager-port")}
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    temp_dir = tempfile.mkdtemp(prefix="rayh", dir="/tmp")
    cmd = [RAY, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1",
           "--num-cpus", "6", "--num-gpus", "1", "--include-dashboard", "true", "--temp-dir", temp_dir,
           "--system-config", json.dumps({"metrics_report_interval_ms": 1000}),
           *[f"--{k}={v}" for k, v in ports.items()]]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{ports['dashboard-port']}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                os.killpg(proc.pid, signal.SIGKILL)
                raise RuntimeError("ray head did not start") from None
            time.sleep(0.5)
    try:
        yield address, env, ports["metrics-export-port"]
    finally:
        # SIGTERM makes `ray start --block` wait 30 s on its children; nothing here needs a graceful stop
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_job_submit_end_to_end_on_s3(s3_endpoint, ray_head, bert2bert_dir, tmp_path):
    address, env, metrics_port = ray_head
    rows = [{"id": f"doc-{i}", "article": r["article"][:500]} for i, r in enumerate(articles(8))]
    fs = stage_on_s3("e2e", rows, 3, bert2bert_dir, tmp_path)
    runtime_env = {"env_vars": {**AWS_ENV, "AWS_ENDPOINT_URL": s3_endpoint}}
    cmd = [RAY, "job", "submit", "--address", address, "--runtime-env-json", json.dumps(runtime_env), "--",
           sys.executable, "-m", "jobs.summarize", "--input", "s3://e2e/articles/", "--output", "s3://e2e/summaries/",
           "--model", "s3://e2e/models/b2b", "--replicas", "2", "--gpus-per-replica", "0.5", "--batch-size", "2",
           "--dtype", "float32", *GEN]  # the GPUs are Ray's logical ones: auto would be bfloat16, on these CPUs
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "rows in: 8  rows out: 8  written by this run: 8" in done.stdout
    # GPU plan: tokenize stays a CPU task stage, apart from the GPU actors.
    assert re.search(r"Operator \d+ \S*MapBatches\(prepare\):", done.stdout)
    assert re.search(r"Operator \d+ MapBatches\(Summarizer\):", done.stdout)
    fs.invalidate_cache()
    table = pq.read_table("e2e/summaries/", filesystem=fs)
    assert sorted(table.column("id").to_pylist()) == sorted(r["id"] for r in rows)
    got = dict(zip(table.column("id").to_pylist(), table.column("summary").to_pylist(), strict=True))
    expected = direct_summaries(bert2bert_dir, [r["article"] for r in rows], num_beams=2, max_length=12)
    assert [got[r["id"]] for r in rows] == expected
    assert json.loads(fs.cat("e2e/summaries/_SUCCESS.json"))["rows_out"] == 8
    # the replicas' metrics, from the node's Prometheus endpoint
    deadline, totals = time.monotonic() + 60, {}
    while time.monotonic() < deadline:
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        totals = metric_totals(text)
        if totals.get("ray_bert2bert_rows_summarized_total") == 8:
            break
        time.sleep(1)
    assert totals.get("ray_bert2bert_rows_summarized_total") == 8, totals
    assert totals.get("ray_bert2bert_generate_seconds_count", 0) >= 1
    assert totals.get("ray_bert2bert_input_tokens_total", 0) > 8


def metric_totals(text: str) -> dict[str, float]:
    """Prometheus text -> each sample name's sum over its labels."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("ray_bert2bert_"):
            name = re.match(r"[a-zA-Z0-9_:]+", line).group(0)
            value = (line.rsplit("}", 1)[1] if "}" in line else line[len(name):]).split()[0]
            totals[name] = totals.get(name, 0.0) + float(value)
    return totals


def test_killed_job_resumes_without_redoing_rows(bert2bert_dir, tmp_path):
    rows = [{"id": i, "article": r["article"][:500]} for i, r in enumerate(articles(16))]
    write_shards(tmp_path / "in", rows, per_shard=4)
    out = tmp_path / "out"
    args = ["--input", str(tmp_path / "in"), "--output", str(out), "--model", str(bert2bert_dir),
            "--batch-size", "1", "--replicas", "1", "--num-beams", "2", "--max-length", "24",
            "--max-input-tokens", "96"]
    first = job(args)
    deadline = time.monotonic() + 300
    while not (out.exists() and storage.data_files(Location.of(str(out)))):
        assert first.poll() is None, first.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no unit committed in time"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    while not quiet(str(tmp_path), 2.0):  # the dead driver's Ray workers may still finish a unit
        pass
    units = storage.data_files(Location.of(str(out)))
    done_ids = {i for f in units for i in pq.read_table(f).column("id").to_pylist()}
    assert 0 < len(done_ids) < 16 and len(done_ids) == 4 * len(units)  # whole units only

    second = job(args)
    report = second.communicate(timeout=300)[0]
    assert second.returncode == 0, report[-3000:]
    assert f"{len(units)} of 4 units already committed" in report
    written = int(re.search(r"written by this run: (\d+)", report).group(1))
    table = pq.read_table(out)
    ids = table.column("id").to_pylist()
    assert sorted(ids) == list(range(16))  # nothing lost, nothing written twice
    assert written == 16 - len(done_ids)  # committed units are not redone
    assert table.column("summary").null_count == 0
    assert set(units) <= set(storage.data_files(Location.of(str(out))))  # the killed run's files are kept as is


def test_bad_input_fails_fast_with_exit_code(tmp_path, bert2bert_dir):
    pq.write_table(pa.table({"id": [1], "body": ["text"]}), tmp_path / "one.parquet")
    proc = job(["--input", str(tmp_path / "one.parquet"), "--output", str(tmp_path / "out"),
                "--model", str(bert2bert_dir)])
    text = proc.communicate(timeout=120)[0]
    assert proc.returncode == 1
    assert "summarize failed: ValueError: input shard" in text and "its columns are: id, body" in text


def test_help_documents_every_flag():
    text = subprocess.run([sys.executable, "-m", "jobs.summarize", "--help"], capture_output=True, text=True,
                          cwd=ROOT, check=True).stdout
    for flag in ("--input", "--output", "--model", "--text-column", "--id-column", "--num-beams", "--max-length",
                 "--min-length", "--length-penalty", "--no-repeat-ngram-size", "--early-stopping",
                 "--max-input-tokens", "--batch-size", "--replicas", "--gpus-per-replica", "--cpus-per-replica",
                 "--dtype", "--storage-options", "--overwrite", "--rows-per-file", "--max-batch-tokens", "--compile",
                 "--keep-oom-errors"):
        assert flag in text
    assert "Exit codes: 0 complete (or already complete); 1 failed" in text and "3 incomplete" in text


def test_two_jobs_started_at_once_on_one_output_exactly_one_runs(bert2bert_dir, tmp_path):
    rows = [{"id": i, "article": r["article"][:300]} for i, r in enumerate(articles(8))]
    write_shards(tmp_path / "in", rows, per_shard=4)
    out = tmp_path / "out"
    args = ["--input", str(tmp_path / "in"), "--output", str(out), "--model", str(bert2bert_dir),
            "--num-beams", "1", "--max-length", "12", "--max-input-tokens", "96"]
    jobs = [job(args), job(args)]
    reports = [j.communicate(timeout=300)[0] for j in jobs]
    codes = sorted(j.returncode for j in jobs)
    assert codes == [0, 1], reports
    ran, refused = (reports[0], reports[1]) if jobs[0].returncode == 0 else (reports[1], reports[0])
    assert "written by this run: 8" in ran
    assert re.search(r"summarize failed: RuntimeError: output \S+ (is being written by another run \(\S+:\d+:\w+|"
                     r"was started at the same moment by another run)", refused), refused
    ids = pq.read_table(out).column("id").to_pylist()
    assert sorted(ids) == list(range(8))  # every id once
    assert len(storage.data_files(Location.of(str(out)))) == 2
