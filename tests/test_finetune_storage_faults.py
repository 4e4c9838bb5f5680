"""Fine-tuning with everything on object storage under load: the init model, train and eval data, the run dir
(Ray Train's checkpoints, metrics.jsonl) and the export on a moto S3 server behind the fault-injecting proxy
(tests/faults/s3_proxy.py: seeded 503 SlowDown and writes carried out whose reply is lost).

One Ray Train worker (DDP on gloo with one rank; tests/test_finetune.py has two) and 4 steps of the smallest tiny
model keep it short: what is under test is storage, and a second rank only adds a process to start and an RNG
file to write. No worker restarts are allowed (--max-failures 0): the faults have to be ridden out by the
storage client's retries, not by Ray Train restarting the group. The proxy's seed is
STORAGE_FAULT_SEED (default 35), for re-checking with other draws.
"""

from __future__ import annotations

import json
import os
import re
import time

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from jobs import finetune
from model import EncoderDecoderModel
from pipeline.io.storage import Location
from pipeline.train.checkpoints import METRICS_FILE, TRAIN_STATE
from tests.faults.s3_proxy import FaultyS3Proxy
from tests.helpers import articles, assert_transformers_loads_it_alike

SEED = int(os.environ.get("STORAGE_FAULT_SEED", "35"))


def put_pairs(url: str, rows: list[dict]) -> None:
    at = Location.of(url)
    with at.fs.open(at.path, "wb") as f:
        pq.write_table(pa.Table.from_pylist([{"article": r["article"], "highlights": r["highlights"]} for r in rows]),
                       f)


def weights(model: EncoderDecoderModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def stored(fs, run_dir: str) -> dict[str, str]:
    """The checkpoints' files under the run dir, with their ETags (moto directly)."""
    fs.invalidate_cache()
    return {p: i["ETag"] for p, i in fs.find(run_dir, detail=True).items() if "/checkpoint_0" in p}


def test_finetune_checkpoints_and_export_through_the_proxy_load_and_resume(local_ray, s3_endpoint, bucket,
                                                                            tiny_model, tmp_path, capsys):

    rows = articles(24)
    put_pairs(f"{bucket}/data/train.parquet", rows[:16])
    put_pairs(f"{bucket}/data/eval.parquet", rows[16:])
    fs = Location.of(bucket).fresh_fs()  # moto directly, no faults: for staging and for checking
    fs.put(str(tiny_model), f"{bucket[len('s3://'):]}/init", recursive=True)
    run_dir = f"{bucket}/model.checkpoints"

    start = time.monotonic()
    with FaultyS3Proxy(s3_endpoint, seed=SEED, throttle=0.1, drop_writes=0.2) as proxy:
        opts = {"endpoint_url": proxy.url, "key": "testing", "secret": "testing"}  # explicit: no env on workers
        argv = ["--train", f"{bucket}/data/train.parquet", "--eval", f"{bucket}/data/eval.parquet",
                "--output", f"{bucket}/model", "--init", f"{bucket}/init", "--num-workers", "1",
                "--max-steps", "4", "--batch-size", "4", "--lr", "3e-3", "--max-source-tokens", "64",
                "--max-target-tokens", "16", "--eval-every", "2", "--checkpoint-every", "2", "--eval-rows", "4",
                "--rouge-samples", "2", "--eval-beams", "1", "--log-every", "2", "--best-metric", "loss",
                "--max-failures", "0", "--storage-options", json.dumps(opts)]
        assert finetune.main(argv) == 0, capsys.readouterr().err
        first = capsys.readouterr().out
        trained = fs.cat_file(f"{run_dir}/{METRICS_FILE}").decode().splitlines()
        checkpoint_files = stored(fs, run_dir)
        assert finetune.main(argv) == 0, capsys.readouterr().err  # the same command again
        again = capsys.readouterr().out
        counts, written = dict(proxy.counts), set(proxy.written)
    took = time.monotonic() - start
    assert counts["throttled"] and counts["dropped"], counts

    best = int(re.search(r"steps: 4  best step: (\d+)", first).group(1))
    assert f"steps: 4  best step: {best}\n" in again and best in (2, 4)
    # the second run resumed from the checkpoint of step 4 and trained nothing more: one event, no new records
    records = [json.loads(r) for r in fs.cat_file(f"{run_dir}/{METRICS_FILE}").decode().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [2, 4] and [r["step"] for r in records
                                                                    if "eval_loss" in r] == [2, 4]
    assert records == [*map(json.loads, trained), {"step": 4, "epoch": 0, "position": 4, "event": "resumed"}]
    assert stored(fs, run_dir) == checkpoint_files  # and wrote no checkpoint
    # Ray Train wrote them through the storage options' filesystem (s3fs, its retries), not a client of its own
    assert {"/" + p for p in checkpoint_files} <= written

    fs.invalidate_cache()
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(run_dir))
    assert [n for n in names if n.startswith("checkpoint_0")] == ["checkpoint_0000002", "checkpoint_0000004"], names
    checkpoints = {}
    for step in (2, 4):
        folder = f"{run_dir}/checkpoint_{step:07d}"
        checkpoints[step] = weights(EncoderDecoderModel.from_pretrained(folder))  # from moto, whole and loadable
        with fs.open(f"{folder}/{TRAIN_STATE}", "rb") as f:
            assert int(torch.load(f, weights_only=True)["step"]) == step
    initial = weights(EncoderDecoderModel.from_pretrained(tiny_model))
    assert not torch.equal(checkpoints[2]["decoder.embed.tok.weight"], initial["decoder.embed.tok.weight"])
    assert not torch.equal(checkpoints[4]["decoder.embed.tok.weight"], checkpoints[2]["decoder.embed.tok.weight"])

    local = tmp_path / "export"
    fs.get(f"{bucket[len('s3://'):]}/model", str(local), recursive=True)
    assert not [p for p in local.iterdir() if p.name == TRAIN_STATE or p.name.startswith("rank_")]
    ours = EncoderDecoderModel.from_pretrained(local)
    exported = weights(ours)
    assert exported.keys() == checkpoints[best].keys()
    assert all(torch.equal(exported[k], checkpoints[best][k]) for k in exported)  # the best checkpoint, exactly
    assert_transformers_loads_it_alike(local)
    with capsys.disabled():
        print(f"\nthrough the proxy (seed {SEED}): {counts}, fine-tuning twice in {took:.1f} s")
