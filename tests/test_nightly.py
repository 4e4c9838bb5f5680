"""The nightly job end to end on a moto S3 server and a real local Ray: a growing corpus, a killed run, two
concurrent runs, a dry run."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import ray.data
import s3fs

from pipeline.io import storage
from pipeline.io.lease import Lease
from pipeline.io.storage import Location
from pipeline.nightly.reader import committed_files
from pipeline.nightly.run import run_nightly
from tests.helpers import DAY1, DAY2, ROOT, actions, listing, nightly_config, numbered, put_shard, quiet, read_output

FLAGS = ["--num-beams", "1", "--max-length", "12", "--batch-size", "2", "--replicas", "1"]



def nightly(corpus: str, output: str, model: pathlib.Path, dry_run: bool = False) -> dict:
    return run_nightly(nightly_config(corpus, output, model, max_length=12), dry_run=dry_run).to_dict()


def nightly_process(corpus: str, output: str, model: pathlib.Path, *extra: str) -> subprocess.Popen:
    """`python -m jobs.nightly` as its own driver on the test's Ray cluster."""
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    return subprocess.Popen([sys.executable, "-m", "jobs.nightly", "--corpus", corpus, "--output", output,
                             "--model", str(model), *FLAGS, *extra], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def committed_rows(output: str) -> int:
    """Rows in the unit files committed to the day-1 staging (each file is one whole unit)."""
    files = storage.data_files(Location.of(f"{output}/_staging/{DAY1}"))
    return sum(pq.read_metadata(f, filesystem=storage.arrow_fs(Location.of(output))).num_rows for f in files)


def test_growing_corpus_processes_only_what_changed(local_ray, bucket, bert2bert_dir):
    corpus, output = f"{bucket}/corpus", f"{bucket}/summaries"
    put_shard(f"{corpus}/{DAY1}/part-0.parquet", numbered(0, 3))
    put_shard(f"{corpus}/{DAY1}/part-1.parquet", numbered(3, 2))
    first = nightly(corpus, output, bert2bert_dir)
    assert actions(first) == {DAY1: ("processed", "new")}
    assert (first["totals"]["rows_in"], first["totals"]["rows_out"]) == (5, 5)

    put_shard(f"{corpus}/{DAY2}/part-0.parquet", numbered(5, 3))
    second = nightly(corpus, output, bert2bert_dir)
    assert actions(second) == {DAY1: ("skipped", "done"), DAY2: ("processed", "new")}

    put_shard(f"{corpus}/{DAY1}/part-late.parquet", numbered(8, 2))
    before = listing(bucket)
    dry = nightly(corpus, output, bert2bert_dir, dry_run=True)
    assert listing(bucket) == before
    assert actions(dry) == {DAY1: ("would-process", "changed"), DAY2: ("skipped", "done")}
    assert dry["partitions"][0]["detail"] == "added: part-late.parquet"

    third = nightly(corpus, output, bert2bert_dir)
    assert actions(third) == {DAY1: ("processed", "changed"), DAY2: ("skipped", "done")}
    assert (third["partitions"][0]["rows_in"], third["partitions"][0]["rows_written"]) == (7, 2)  # the late shard
    assert "2 unchanged shard(s) kept, 1 summarized" in third["partitions"][0]["detail"]

    marker = storage.read_json(Location.of(f"{output}/{DAY1}/_SUCCESS.json"))
    assert (marker["rows_in"], marker["rows_out"], marker["failed_rows"]) == (7, 7, {})
    assert [f["name"] for f in marker["inputs"]] == ["part-0.parquet", "part-1.parquet", "part-late.parquet"]
    assert all(f["size"] > 0 and f["version"] for f in marker["inputs"])
    assert len(marker["model"]["model_sha256"]) == 64 and marker["generation"]["max_length"] == 12
    assert marker["started_at"] <= marker["ended_at"] and marker["code_version"]
    # the old day-1 files are gone: the folder holds exactly what the marker names
    assert sorted(os.path.basename(p) for p in storage.data_files(Location.of(f"{output}/{DAY1}"))) == sorted(
        marker["files"])
    assert not storage.exists(Location.of(f"{output}/_staging/{DAY1}"))
    assert len(s3fs.S3FileSystem().ls(f"{output}/_runs")) == 3

    clean_output = f"{bucket}/clean"
    clean = nightly(corpus, clean_output, bert2bert_dir)
    assert actions(clean) == {DAY1: ("processed", "new"), DAY2: ("processed", "new")}
    incremental = read_output(output)
    assert incremental == read_output(clean_output)
    assert [r["id"] for r in incremental] == list(range(10))
    assert {r["date"] for r in incremental} == {"2026-11-01", "2026-11-02"}

    fs = storage.arrow_fs(Location.of(output))
    plain = ray.data.read_parquet(Location.of(output).path, filesystem=fs)
    following = ray.data.read_parquet([Location.of(f).path for f in committed_files(output)], filesystem=fs)
    assert sorted(plain.to_pandas()["id"]) == sorted(following.to_pandas()["id"]) == list(range(10))


def test_killed_run_resumes_rows_and_never_marks_early(local_ray, bucket, bert2bert_dir):
    corpus, output = f"{bucket}/corpus", f"{bucket}/summaries"
    for s in range(4):
        put_shard(f"{corpus}/{DAY1}/part-{s}.parquet", numbered(20 + s * 4, 4))
    proc = nightly_process(corpus, output, bert2bert_dir, "--lease-ttl", "6")
    deadline = time.monotonic() + 180
    while not committed_rows(output) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    log = proc.communicate()[0]
    assert not storage.exists(Location.of(f"{output}/{DAY1}/_SUCCESS.json")), log
    assert storage.data_files(Location.of(f"{output}/{DAY1}")) == []

    # The lease expires, and Ray has stopped the dead driver's workers (in flight, they would still write).
    lease = Lease(Location.of(f"{output}/_leases/{DAY1}"), "test", ttl_s=1)
    while lease.current()[1]["expires_at"] > time.time() or not quiet(f"{output}/_staging", 2.0):
        time.sleep(0.5)
    done = committed_rows(output)
    assert 0 < done < 16, log
    assert not storage.exists(Location.of(f"{output}/{DAY1}/_SUCCESS.json"))
    dry = nightly(corpus, output, bert2bert_dir, dry_run=True)
    assert actions(dry) == {DAY1: ("would-process", "incomplete")}
    again = nightly(corpus, output, bert2bert_dir)
    assert actions(again) == {DAY1: ("processed", "incomplete")}, again["partitions"]
    part = again["partitions"][0]
    assert (part["rows_in"], part["rows_out"], part["rows_written"]) == (16, 16, 16 - done)
    assert [r["id"] for r in read_output(output)] == list(range(20, 36))


def test_concurrent_runs_process_each_partition_once(local_ray, bucket, bert2bert_dir):
    corpus, output = f"{bucket}/corpus", f"{bucket}/summaries"
    put_shard(f"{corpus}/{DAY1}/part-0.parquet", numbered(40, 3))
    put_shard(f"{corpus}/{DAY2}/part-0.parquet", numbered(43, 3))
    procs = [nightly_process(corpus, output, bert2bert_dir) for _ in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    fs = s3fs.S3FileSystem()
    reports = [json.loads(fs.cat(p)) for p in fs.ls(f"{output}/_runs")]
    assert len(reports) == 2
    processed = sorted(p["partition"] for r in reports for p in r["partitions"] if p["action"] == "processed")
    assert processed == [DAY1, DAY2], logs
    others = [(p["action"], p["reason"]) for r in reports for p in r["partitions"] if p["action"] != "processed"]
    assert len(others) == 2 and all(o in (("skipped", "leased"), ("skipped", "done")) for o in others)
    assert [r["id"] for r in read_output(output)] == list(range(40, 46))


def test_sigterm_releases_the_lease_and_still_writes_the_report(local_ray, bucket, bert2bert_dir):
    corpus, output = f"{bucket}/corpus", f"{bucket}/summaries"
    for s in range(4):
        put_shard(f"{corpus}/{DAY1}/part-{s}.parquet", numbered(120 + s * 4, 4))
    proc = nightly_process(corpus, output, bert2bert_dir)
    lease = Lease(Location.of(f"{output}/_leases/{DAY1}"), "test", ttl_s=1)
    deadline = time.monotonic() + 120
    while (lease.current()[1] or {}).get("state") != "held" and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)  # what `ray job stop` sends
    log = proc.communicate(timeout=120)[0]
    assert proc.returncode == 1, log
    fs = s3fs.S3FileSystem()
    reports = [json.loads(fs.cat(p)) for p in fs.ls(f"{output}/_runs")]
    assert len(reports) == 1 and reports[0]["stopped"].startswith("interrupted"), log
    assert actions(reports[0]) == {DAY1: ("failed", "new")}
    assert lease.current()[1]["state"] == "released"
    assert not storage.exists(Location.of(f"{output}/{DAY1}/_SUCCESS.json"))
