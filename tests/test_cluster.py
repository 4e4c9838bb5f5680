"""The cluster path on a real multi-node autoscaling cluster (tests/fake_cluster.py): GPU workers that scale
from zero, replicas on worker nodes, a node lost mid-job."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import urllib.request

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs

from tests import fake_cluster
from tests.helpers import AWS_ENV, ROOT, articles, direct_summaries, numbered, put_shard, random_bert2bert, stage_on_s3

RAY = fake_cluster.RAY
FINETUNE_DATA = ROOT / "data" / "cnndm_200.jsonl"
GEN = ["--num-beams", "2", "--max-length", "12", "--max-input-tokens", "96"]


@pytest.fixture(scope="module")
def cluster():
    c = fake_cluster.start()
    try:
        yield c
    finally:
        c.stop()


def actors(cluster: fake_cluster.FakeCluster, name: str) -> list[dict]:
    with urllib.request.urlopen(f"{cluster.address}/api/v0/actors?detail=1&limit=1000", timeout=10) as r:
        found = json.load(r)["data"]["result"]["result"]
    return [a for a in found if name in a["class_name"]]


def submit_command(cluster, s3_endpoint, *args: str) -> list[str]:
    runtime_env = {"env_vars": {**AWS_ENV, "AWS_ENDPOINT_URL": s3_endpoint}}
    return [RAY, "job", "submit", "--address", cluster.address, "--runtime-env-json", json.dumps(runtime_env), "--",
            sys.executable, *args]


def submit(cluster, s3_endpoint, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(submit_command(cluster, s3_endpoint, *args), env=cluster.env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def submit_in_background(cluster, s3_endpoint, log: pathlib.Path, *args: str) -> subprocess.Popen:
    """The job submitted, its output going to log (read while it runs, and for a failed wait's diagnosis)."""
    with log.open("w") as out:
        return subprocess.Popen(submit_command(cluster, s3_endpoint, *args), env=cluster.env, cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT, text=True)


def test_readme_command_grows_the_pool_over_gpu_workers_from_zero_and_back(cluster, s3_endpoint, bert2bert_dir,
                                                                          tmp_path):
    rows = [{"id": f"doc-{i}", "article": r["article"][:1500]} for i, r in enumerate(articles(80))]
    # 20 shards of 4 rows, 20 units of work, whose generation outlasts reading and tokenizing: the pool grows
    fs = stage_on_s3("cluster", rows, 4, bert2bert_dir, tmp_path)
    assert cluster.gpu_nodes() == 0

    done = submit(cluster, s3_endpoint, "-m", "jobs.summarize", "--input", "s3://cluster/articles/",
                  "--output", "s3://cluster/summaries/", "--model", "s3://cluster/models/b2b", "--replicas", "1-2",
                  "--num-beams", "2", "--max-length", "32", "--max-input-tokens", "96",
                  "--dtype", "float32")  # its GPUs are logical ones: auto would be bfloat16, on these CPUs
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    assert "rows in: 80  rows out: 80  written by this run: 80" in done.stdout
    assert "torch sees no CUDA device: running on CPU" in done.stdout  # a replica's own log reached the job's
    assert "scaling: 1 GPU per replica, wait for workers 900 s; node types from the autoscaler monitor's config" \
        in done.stdout

    replicas = actors(cluster, "Summarizer")
    head = next(n["node_id"] for n in cluster.nodes() if n["is_head_node"])
    assert all(a["node_id"] != head and a["required_resources"].get("GPU") == 1 for a in replicas)
    fs.invalidate_cache()
    table = pq.read_table("cluster/summaries/", filesystem=fs)
    pids = {int(r.rsplit(":", 1)[1]) for r in table.column("replica").to_pylist()}
    ran = [a for a in replicas if a["pid"] in pids]
    assert len(ran) == 2 and len({a["node_id"] for a in ran}) == 2  # the pool grew to 2 replicas on 2 nodes
    nodes = sorted(a["node_id"] for a in ran)
    assert f"replicas that ran: 2 on 2 node(s): {', '.join(nodes)}" in done.stdout
    assert sorted(table.column("id").to_pylist()) == sorted(r["id"] for r in rows)
    got = dict(zip(table.column("id").to_pylist(), table.column("summary").to_pylist(), strict=True))
    assert [got[r["id"]] for r in rows] == direct_summaries(bert2bert_dir, [r["article"] for r in rows],
                                                           num_beams=2, max_length=32)
    cluster.wait(lambda: cluster.gpu_nodes() == 0, 90, "GPU nodes did not scale back to zero after the job")


def test_worker_node_lost_mid_job_finishes_by_itself_exactly_once(cluster, s3_endpoint, bert2bert_dir, tmp_path):
    rows = [{"id": i, "article": r["article"][:500]} for i, r in enumerate(articles(24))]
    fs = stage_on_s3("lost", rows, 2, bert2bert_dir, tmp_path)
    log = tmp_path / "job.log"
    job = submit_in_background(
        cluster, s3_endpoint, log, "-m", "jobs.summarize", "--input", "s3://lost/articles/",
        "--output", "s3://lost/summaries/", "--model", "s3://lost/models/b2b", "--replicas", "2",
        "--num-beams", "2", "--max-length", "24", "--max-input-tokens", "128")
    try:
        def replicas_working() -> list[dict]:  # both replicas up, on two nodes, and some unit committed
            assert job.poll() is None, log.read_text()[-5000:]
            alive = [a for a in actors(cluster, "Summarizer") if a["state"] == "ALIVE"]
            fs.invalidate_cache()
            done = fs.exists("lost/summaries") and fs.glob("lost/summaries/*.parquet")
            return alive if len({a["node_id"] for a in alive}) == 2 and done else []

        alive = cluster.wait(replicas_working, 420, "two replicas on two worker nodes never ran", log)
        victim = alive[0]["node_id"]
        cluster.kill_worker_raylet(victim)
        job.wait(timeout=400)
    finally:
        if job.poll() is None:
            job.kill()
    out = log.read_text()
    assert job.returncode == 0, out[-5000:]
    assert "rows in: 24  rows out: 24" in out
    fs.invalidate_cache()
    table = pq.read_table("lost/summaries/", filesystem=fs)
    assert sorted(table.column("id").to_pylist()) == list(range(24))  # every id exactly once
    assert table.column("summary").null_count == 0
    marker = json.loads(fs.cat("lost/summaries/_SUCCESS.json"))
    assert marker["rows_out"] == 24


def test_readme_cron_command_for_the_nightly_job(cluster, s3_endpoint, bert2bert_dir):
    fs = s3fs.S3FileSystem()
    fs.mkdir("nightly")
    fs.put(str(bert2bert_dir), "nightly/models/b2b", recursive=True)
    put_shard("s3://nightly/corpus/date=2026-11-30/part-0.parquet", numbered(0, 3))
    put_shard("s3://nightly/corpus/date=2026-12-01/part-0.parquet", numbered(3, 3))
    put_shard("s3://nightly/corpus/date=2026-12-01/part-1.parquet", numbered(6, 2))
    cluster.wait(lambda: cluster.gpu_nodes() == 0, 120, "GPU nodes still up from an earlier test")
    runtime_env = {"env_vars": {**AWS_ENV, "AWS_ENDPOINT_URL": s3_endpoint}}
    # the README's cron line (with the test's S3 endpoint and a short generation)
    cmd = [RAY, "job", "submit", "--address", cluster.address, "--working-dir", ".", "--runtime-env-json",
           json.dumps(runtime_env), "--", "python", "-m", "jobs.nightly", "--corpus", "s3://nightly/corpus/",
           "--output", "s3://nightly/summaries/", "--model", "s3://nightly/models/b2b", "--since", "2026-11-01",
           "--num-beams", "1", "--max-length", "12"]
    done = subprocess.run(cmd, env=cluster.env, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    fs.invalidate_cache()
    reports = fs.glob("nightly/summaries/_runs/*.json")
    report = json.loads(fs.cat(reports[-1]))
    assert {p["partition"]: p["action"] for p in report["partitions"]} == {
        "date=2026-11-30": "processed", "date=2026-12-01": "processed"}
    table = pq.read_table("nightly/summaries/", filesystem=fs, partitioning="hive")
    assert sorted(table.column("id").to_pylist()) == list(range(8))
    head = next(n["node_id"] for n in cluster.nodes() if n["is_head_node"])
    replicas = actors(cluster, "Summarizer")  # this job's and the earlier tests': none ever ran on the head
    assert replicas and all(a["node_id"] != head and a["required_resources"].get("GPU") == 1 for a in replicas)


def test_finetune_worker_node_lost_resumes_from_last_checkpoint(cluster, s3_endpoint, tmp_path):
    fs = s3fs.S3FileSystem()
    fs.mkdir("ftc")
    random_bert2bert(tmp_path / "tiny", hidden=64, layers=2, intermediate=128)
    fs.put(str(tmp_path / "tiny"), "ftc/models/tiny", recursive=True)
    rows = [json.loads(line) for line in FINETUNE_DATA.read_text().splitlines()]
    # 192 rows, 2 workers, batch 4: 24 steps in one epoch (a second epoch would re-run the dataset, ~15 s)
    for name, part in (("train", rows[:192]), ("eval", rows[192:])):
        pq.write_table(pa.Table.from_pylist(part), tmp_path / f"{name}.parquet")
        fs.put_file(str(tmp_path / f"{name}.parquet"), f"ftc/pairs/{name}.parquet")
    cluster.wait(lambda: cluster.gpu_nodes() == 0, 120, "GPU nodes still up from an earlier test")
    # 2 CPUs per worker on 3-CPU nodes: one worker per node, and the group needs a replacement node after the kill
    log = tmp_path / "job.log"
    job = submit_in_background(
        cluster, s3_endpoint, log, "-m", "jobs.finetune", "--train", "s3://ftc/pairs/train.parquet",
        "--eval", "s3://ftc/pairs/eval.parquet", "--init", "s3://ftc/models/tiny", "--output", "s3://ftc/out",
        "--num-workers", "2", "--cpus-per-worker", "2", "--max-steps", "24", "--batch-size", "4", "--lr", "3e-3",
        "--eval-every", "8", "--checkpoint-every", "8", "--eval-rows", "8", "--rouge-samples", "0",
        "--max-source-tokens", "96", "--max-target-tokens", "24", "--log-every", "2", "--best-metric", "loss")

    def records() -> list[dict]:
        fs.invalidate_cache()
        path = "ftc/out.checkpoints/metrics.jsonl"
        return [json.loads(line) for line in fs.cat(path).decode().splitlines()] if fs.exists(path) else []

    try:
        def checkpointed() -> list[dict]:  # both workers up on two nodes, and training went on past a checkpoint
            assert job.poll() is None, log.read_text()[-5000:]
            alive = [a for a in actors(cluster, "RayTrainWorker") if a["state"] == "ALIVE"]
            past = [r["step"] for r in records() if r["step"] > 8]
            return alive if len({a["node_id"] for a in alive}) == 2 and past else []

        victim = cluster.wait(checkpointed, 420, "two training workers on two nodes never checkpointed",
                              log)[0]["node_id"]
        cluster.kill_worker_raylet(victim)
        before = records()
        last = max(r["step"] for r in before)
        committed = max(r["step"] for r in before if "eval_loss" in r and r["step"] < last)
        job.wait(timeout=400)
    finally:
        if job.poll() is None:
            job.kill()
    out = log.read_text()
    assert job.returncode == 0, out[-5000:]
    # the last checkpoint that training had gone on from, in epoch 0
    resumed = [r for r in records() if r.get("event") == "resumed"]
    assert resumed == [{"step": committed, "epoch": 0, "position": committed, "event": "resumed"}]
    assert [r["step"] for r in records() if "event" not in r][-1] == 24
    assert "steps: 24" in out
    assert fs.exists("ftc/out/config.json") and fs.exists("ftc/out/model.safetensors")
    head = next(n["node_id"] for n in cluster.nodes() if n["is_head_node"])
    nodes = {a["node_id"] for a in actors(cluster, "RayTrainWorker")}
    # the first group's two nodes, then the survivor and the autoscaler's replacement: never the head
    assert len(nodes) == 3 and victim in nodes and head not in nodes
