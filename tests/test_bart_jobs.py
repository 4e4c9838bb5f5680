"""BART through every way in, against transformers' generate + decode of each article alone: transformers' class
names, pipeline("summarization"), `b2b generate`, the summarize job on S3 and the nightly job (every row once), and
fine-tuning a BART through Ray Train (2 workers) whose export transformers loads with equal logits."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import transformers

from jobs.finetune import config_from_args, parse_args
from model import AutoModelForSeq2SeqLM, BartForConditionalGeneration, BartTokenizer, EncoderDecoderModel, pipeline
from pipeline.nightly.run import run_nightly
from pipeline.train.finetune import run_finetune
from tests.helpers import (
    DAY1,
    MAX_TOKENS,
    ROOT,
    actions,
    articles,
    bart_folder,
    check_summarize_on_s3,
    nightly_config,
    numbered,
    put_shard,
    read_output,
    transformers_summaries,
)

GEN = dict(num_beams=4, length_penalty=2.0, no_repeat_ngram_size=3, min_length=6, max_length=14, early_stopping=True)


@pytest.fixture(scope="module")
def bart(tmp_path_factory) -> pathlib.Path:
    return bart_folder(tmp_path_factory.mktemp("bart"), 32, 4, 2, 1, True)


def test_class_names_pipeline_and_b2b_generate(bart):
    texts = [r["article"][:400] for r in articles(6)]
    want = transformers_summaries(bart, texts, **GEN)
    assert any(want)
    for cls in (AutoModelForSeq2SeqLM, BartForConditionalGeneration):
        model, tok = cls.from_pretrained(bart), BartTokenizer.from_pretrained(bart)
        enc = tok(texts[:1], truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        assert tok.decode(model.generate(**enc, **GEN)[0], skip_special_tokens=True) == want[0]
    got = pipeline("summarization", model=bart)(texts, max_input_tokens=MAX_TOKENS, **GEN)
    assert [g["summary_text"] for g in got] == want
    flags = [f"--{k.replace('_', '-')}={str(v).lower()}" for k, v in GEN.items()]
    done = subprocess.run([sys.executable, "-m", "jobs.cli", "generate", "--model", str(bart), *flags,
                           "--max-input-tokens", str(MAX_TOKENS)], input="\n".join(texts[:3]) + "\n",
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == want[:3]


def test_summarize_and_nightly_jobs_write_every_row_once(local_ray, bucket, bart, tmp_path):
    check_summarize_on_s3("bart-jobs", bart, tmp_path, **GEN)

    corpus, output = f"{bucket}/corpus", f"{bucket}/summaries"
    day = numbered(0, 5)
    put_shard(f"{corpus}/{DAY1}/part-0.parquet", day[:3])
    put_shard(f"{corpus}/{DAY1}/part-1.parquet", day[3:])
    report = run_nightly(nightly_config(corpus, output, bart, max_length=12)).to_dict()
    assert actions(report) == {DAY1: ("processed", "new")}
    nightly = read_output(output)
    assert [r["id"] for r in nightly] == list(range(5))
    assert [r["summary"] for r in nightly] == transformers_summaries(bart, [r["article"] for r in day], num_beams=1,
                                                                     max_length=12)


def test_finetune_a_bart_through_ray_train(local_ray, bart, tmp_path):
    rows = [json.loads(line) for line in (ROOT / "data" / "cnndm_200.jsonl").read_text().splitlines()[:24]]
    pq.write_table(pa.Table.from_pylist(rows[:16]), tmp_path / "train.parquet")
    pq.write_table(pa.Table.from_pylist(rows[16:]), tmp_path / "eval.parquet")
    out = tmp_path / "out"
    cfg = config_from_args(parse_args([
        "--train", str(tmp_path / "train.parquet"), "--eval", str(tmp_path / "eval.parquet"), "--output", str(out),
        "--model", str(bart), "--num-workers", "2", "--max-steps", "4", "--batch-size", "4", "--lr", "3e-3",
        "--max-source-tokens", "48", "--max-target-tokens", "12", "--eval-every", "4", "--checkpoint-every", "4",
        "--eval-rows", "4", "--rouge-samples", "0", "--log-every", "2", "--best-metric", "loss"]))
    assert cfg.init_url == str(bart)
    result = run_finetune(cfg)
    assert result.steps == 4

    tok = BartTokenizer.from_pretrained(bart)
    batch = tok([r["article"] for r in rows[:16]], truncation=True, max_length=48, padding=True)
    labels = tok([r["highlights"] for r in rows[:16]], truncation=True, max_length=12, padding=True)
    labels = labels["input_ids"].masked_fill(labels["attention_mask"] == 0, -100)
    with torch.no_grad():
        before = EncoderDecoderModel.from_pretrained(bart)(batch["input_ids"], batch["attention_mask"], labels=labels)
        ours = EncoderDecoderModel.from_pretrained(out)
        after = ours(batch["input_ids"], batch["attention_mask"], labels=labels)
        theirs, info = transformers.AutoModelForSeq2SeqLM.from_pretrained(out, output_loading_info=True)
        assert all(not keys for keys in info.values()), info
        expected = theirs.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels)
    assert after.loss < before.loss
    torch.testing.assert_close(after.logits, expected.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(after.loss, expected.loss, atol=1e-5, rtol=0)
