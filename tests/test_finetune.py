"""Distributed fine-tuning on real Ray Train (2 CPU workers, gloo) with a tiny model and real CNN/DM pairs."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import ray.train
import ray.train.torch
import torch

from jobs import summarize as summarize_job
from model import EncoderDecoderModel, Tokenizer
from pipeline.train.checkpoints import METRICS_FILE
from pipeline.train.config import FinetuneConfig
from pipeline.train.data import TokenizePairs, collate, inspect_split, pairs_dataset
from pipeline.train.finetune import make_trainer, plan_steps, run_finetune
from pipeline.train.loop import build_model, make_optimizer
from tests.helpers import MAX_TOKENS, assert_transformers_loads_it_alike, direct_summaries

DATA = pathlib.Path(__file__).resolve().parents[1] / "data" / "cnndm_200.jsonl"




@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> dict[str, str]:
    path = tmp_path_factory.mktemp("pairs")
    rows = [json.loads(line) for line in DATA.read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(rows[:160]), path / "train.parquet")
    pq.write_table(pa.Table.from_pylist(rows[160:]), path / "eval.parquet")
    return {"train": str(path / "train.parquet"), "eval": str(path / "eval.parquet"), "root": str(path)}


def small_config(pairs, tiny, output, **overrides) -> FinetuneConfig:
    settings = dict(train_url=pairs["train"], eval_url=pairs["eval"], output_url=output, init_url=tiny,
                    num_workers=2, max_steps=12, batch_size=4, lr=3e-3, warmup_steps=2, max_source_tokens=96,
                    max_target_tokens=24, eval_every=4, checkpoint_every=4, eval_rows=8, rouge_samples=4,
                    eval_beams=2, log_every=2, best_metric="loss", max_failures=1)
    return FinetuneConfig(**{**settings, **overrides})


def read_metrics(cfg: FinetuneConfig) -> list[dict]:
    return [json.loads(line) for line in pathlib.Path(cfg.run_dir, METRICS_FILE).read_text().splitlines()]


def test_config_rejects_bad_combinations(pairs, tiny, tmp_path):
    with pytest.raises(ValueError, match="either init_url, or encoder_url and decoder_url"):
        small_config(pairs, tiny, str(tmp_path), encoder_url=tiny, decoder_url=tiny)
    with pytest.raises(ValueError, match="exactly one of epochs and max_steps"):
        small_config(pairs, tiny, str(tmp_path), epochs=1)
    with pytest.raises(ValueError, match="multiple of eval_every"):
        small_config(pairs, tiny, str(tmp_path), checkpoint_every=6)
    with pytest.raises(ValueError, match="fp16 needs use_gpu"):
        small_config(pairs, tiny, str(tmp_path), precision="fp16")


def test_missing_column_lists_present_ones(pairs):
    with pytest.raises(ValueError, match=r"missing column\(s\) summary; columns present: id, article, highlights"):
        inspect_split(pairs["train"], "article", "summary")


def test_empty_summaries_are_counted_and_skipped(local_ray, tmp_path, minilm_dir):
    table = pa.table({"article": ["one text", "two text", "   ", "four", "\x1c\u2003"],
                      "highlights": ["a", "", "c", None, "e"]})
    pq.write_table(table, tmp_path / "t.parquet")
    stats = inspect_split(str(tmp_path / "t.parquet"), "article", "highlights")
    assert (stats.rows, stats.empty, stats.usable) == (5, 4, 1)
    # the dataset keeps exactly the pairs the split's count calls usable (one rule for what is blank)
    pairs = pairs_dataset(str(tmp_path / "t.parquet"), "article", "highlights").take_batch(batch_format="numpy")
    assert list(pairs["article"]) == ["one text"]
    tok = Tokenizer.from_pretrained(minilm_dir)
    out = TokenizePairs(tok, "article", "highlights", 16, 8)(pairs)
    assert [list(r) for r in out["input_ids"]] == tok.encode_batch(["one text"])
    assert [list(r) for r in out["labels"]] == [[tok.encode_batch(["a"])[0][1], tok.sep_token_id]]


def test_train_set_smaller_than_one_step_is_an_error_before_any_cluster_work(pairs, tiny, tmp_path):
    pq.write_table(pa.table({"article": ["x"] * 9, "highlights": ["y"] * 7 + ["", " "]}), tmp_path / "s.parquet")
    cfg = small_config(pairs, tiny, str(tmp_path / "out"), train_url=str(tmp_path / "s.parquet"))
    stats = inspect_split(cfg.train_url, "article", "highlights")
    assert plan_steps(dataclasses.replace(cfg, batch_size=2, grad_accum=1, max_steps=None, epochs=3), stats) == (1, 3)
    with pytest.raises(ValueError, match=r"7 usable rows \(2 with an empty article or summary skipped\), fewer than "
                                         r"one optimizer step needs .* = 8\)"):
        run_finetune(cfg)  # batch_size 4 x 2 workers
    assert not os.path.exists(cfg.run_dir)


def test_collate_pads_per_batch_and_ignores_label_padding():
    batch = collate({"input_ids": [np.array([101, 5, 102]), np.array([101, 102])],
                     "labels": [np.array([7, 102]), np.array([7, 8, 9, 102])]}, pad_id=0)
    assert batch["input_ids"].tolist() == [[101, 5, 102], [101, 102, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[7, 102, -100, -100], [7, 8, 9, 102]]


def test_warm_start_sets_bert2bert_ids_and_summary_generation(pairs, minilm_dir, tmp_path):
    bert = str(minilm_dir)
    cfg = small_config(pairs, None, str(tmp_path), init_url=None, encoder_url=bert, decoder_url=bert)
    model = build_model(cfg, None)
    tok = Tokenizer.from_pretrained(minilm_dir)
    assert (model.config.decoder_start_token_id, model.config.eos_token_id, model.config.pad_token_id) == (
        tok.cls_token_id, tok.sep_token_id, tok.pad_token_id)
    assert (model.generation_config.num_beams, model.generation_config.max_length) == (2, 25)


def _ddp_probe(loop_config: dict) -> None:
    """One optimizer step through the production pieces; each rank writes what it saw and its weights' digest."""
    cfg = loop_config["cfg"]
    rank = ray.train.get_context().get_world_rank()
    model = build_model(cfg, None).train()
    ddp = ray.train.torch.prepare_model(model)
    optimizer = make_optimizer(model, cfg)
    tokenize = TokenizePairs(Tokenizer.from_pretrained(cfg.tokenizer_url), "article", "highlights", 96, 24)
    rows = []
    for i, batch in enumerate(ray.train.get_dataset_shard("train").iter_batches(
            batch_size=cfg.batch_size, batch_format="numpy", drop_last=True)):
        rows += [hashlib.sha1(text.encode()).hexdigest() for text in batch["article"]]
        if i == 0:
            ddp(**collate(tokenize(batch), pad_id=0)).loss.backward()
            optimizer.step()
            digest = hashlib.sha1(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()
    pathlib.Path(loop_config["out"], f"rank_{rank}.json").write_text(json.dumps({"rows": rows, "digest": digest}))


def test_ddp_workers_see_disjoint_rows_and_hold_identical_weights(local_ray, pairs, tiny, tmp_path):
    cfg = small_config(pairs, tiny, str(tmp_path / "out"))
    ds = pairs_dataset(cfg.train_url, "article", "highlights")
    make_trainer(cfg, _ddp_probe, {"cfg": cfg, "out": str(tmp_path)}, ds).fit()
    ranks = [json.loads((tmp_path / f"rank_{r}.json").read_text()) for r in (0, 1)]
    assert len(ranks[0]["rows"]) == len(ranks[1]["rows"]) == 80
    assert not set(ranks[0]["rows"]) & set(ranks[1]["rows"])
    assert len(set(ranks[0]["rows"]) | set(ranks[1]["rows"])) == 160
    assert ranks[0]["digest"] == ranks[1]["digest"]
    before = hashlib.sha1(b"".join(p.detach().numpy().tobytes() for p in EncoderDecoderModel.from_pretrained(
        tiny).parameters())).hexdigest()
    assert ranks[0]["digest"] != before


@pytest.fixture(scope="module")
def finished_run(local_ray, pairs, tiny, tmp_path_factory):
    cfg = small_config(pairs, tiny, str(tmp_path_factory.mktemp("plain") / "model"))
    return cfg, run_finetune(cfg)


def losses(records: list[dict]) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def test_training_lowers_the_loss_and_exports_the_best_checkpoint(finished_run):

    cfg, result = finished_run
    records = read_metrics(cfg)
    train = losses(records)
    assert sorted(train) == [2, 4, 6, 8, 10, 12]
    assert train[12] < train[2] - 0.5, train
    evals = {r["step"]: r["eval_loss"] for r in records if "eval_loss" in r}
    assert sorted(evals) == [4, 8, 12] and all(0 <= r["eval_rouge2"] <= 100 for r in records if "eval_loss" in r)
    assert result.best_step == min(evals, key=evals.get) and result.best_metrics["eval_loss"] == evals[result.best_step]

    out = pathlib.Path(cfg.output_url)
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "special_tokens_map.json", "tokenizer.json",
        "tokenizer_config.json", "vocab.txt"]
    assert_transformers_loads_it_alike(out)


def test_a_dead_worker_resumes_from_the_last_checkpoint_and_a_rerun_resumes_too(finished_run, pairs, tiny, tmp_path):
    plain_cfg, plain = finished_run
    cfg = small_config(pairs, tiny, str(tmp_path / "model"), fault_injection_step=6)
    result = run_finetune(cfg)
    records = read_metrics(cfg)
    # rank 1 died after step 6: the group restarted from checkpoint 4, at the same epoch and batch position
    assert [r for r in records if "event" in r] == [{"step": 4, "epoch": 0, "position": 4, "event": "resumed"}]
    # and went on exactly as the uninterrupted run (same seed, same workers): same losses, same evaluations
    assert losses(records) == pytest.approx(losses(read_metrics(plain_cfg)), abs=1e-5)
    assert result.best_step == plain.best_step
    assert result.best_metrics["eval_loss"] == pytest.approx(plain.best_metrics["eval_loss"], abs=1e-5)

    again = run_finetune(cfg)  # the same command again: nothing left to train, the same export
    assert [r["step"] for r in read_metrics(cfg) if "event" in r] == [4, 12]
    assert losses(read_metrics(cfg)) == losses(records)
    assert again.best_step == result.best_step


def test_exported_checkpoint_runs_in_the_summarize_job(finished_run, tmp_path):
    cfg, _ = finished_run
    rows = [json.loads(line) for line in DATA.read_text().splitlines()][190:]
    pq.write_table(pa.Table.from_pylist([{"id": r["id"], "article": r["article"]} for r in rows]),
                   tmp_path / "articles.parquet")
    out = tmp_path / "summaries"
    code = summarize_job.main(["--input", str(tmp_path / "articles.parquet"), "--output", str(out),
                               "--model", cfg.output_url, "--max-input-tokens", str(MAX_TOKENS), "--batch-size", "5"])
    assert code == 0
    got = {r["id"]: r["summary"] for r in pq.read_table(out).to_pylist()}
    assert sorted(got) == sorted(r["id"] for r in rows)
    expected = direct_summaries(pathlib.Path(cfg.output_url), [r["article"] for r in rows])
    assert [got[r["id"]] for r in rows] == expected


def test_data_checkpoints_and_export_on_s3(local_ray, pairs, tiny, s3_endpoint):
    import s3fs

    opts = {"endpoint_url": s3_endpoint, "key": "testing", "secret": "testing"}  # explicit: no env on workers
    fs = s3fs.S3FileSystem(**opts)
    fs.mkdir("finetune-bucket")
    for split in ("train", "eval"):
        fs.put(pairs[split], f"finetune-bucket/data/{split}.parquet")
    cfg = small_config(pairs, tiny, "s3://finetune-bucket/model", train_url="s3://finetune-bucket/data/train.parquet",
                       eval_url="s3://finetune-bucket/data/eval.parquet", max_steps=4, checkpoint_every=2,
                       eval_every=2, storage_options=opts)
    result = run_finetune(cfg)
    assert (result.steps, result.best_step in (2, 4)) == (4, True)
    fs.invalidate_cache()
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls("finetune-bucket/model")) == [
        "config.json", "generation_config.json", "model.safetensors", "special_tokens_map.json", "tokenizer.json",
        "tokenizer_config.json", "vocab.txt"]
    run_files = [p.rsplit("/", 1)[-1] for p in fs.ls("finetune-bucket/model.checkpoints")]
    assert METRICS_FILE in run_files and any(name.startswith("checkpoint_") for name in run_files)
    model = EncoderDecoderModel.from_pretrained("s3://finetune-bucket/model", storage_options=opts)
    local = EncoderDecoderModel.from_pretrained(tiny)
    assert model.config.decoder_start_token_id == local.config.decoder_start_token_id
    assert not torch.equal(model.decoder.embed.tok.weight, local.decoder.embed.tok.weight)  # it was trained
