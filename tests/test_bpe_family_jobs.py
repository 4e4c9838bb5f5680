"""The byte-level BPE families end to end, against transformers' generate + decode: a bert2gpt2 (articles in
BERT's WordPiece, summaries in GPT-2's BPE: the decoder_tokenizer/ layout) through pipeline(), the summarize job on
S3 and a fine-tuning warm start from a BERT and a GPT-2 checkpoint; a roberta2roberta through the summarize job."""

from __future__ import annotations

import json
import pathlib
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import safetensors.torch
import torch
import transformers

from model import EncoderDecoderModel, Tokenizer, pipeline, save_tokenizers
from pipeline.train.config import FinetuneConfig
from pipeline.train.finetune import run_finetune
from tests.helpers import (
    MAX_TOKENS,
    MINILM,
    ROOT,
    articles,
    check_summarize_on_s3,
    random_roberta2roberta,
    transformers_summaries,
)

GPT2_EOS = 50256
GEN = dict(num_beams=2, max_length=10, no_repeat_ngram_size=2)
TINY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=48)


def gpt2_vocabulary(folder: pathlib.Path, **settings) -> pathlib.Path:
    """GPT-2's real vocab.json + merges.txt in `folder`, with a tokenizer_config.json holding `settings`."""
    shutil.copytree(ROOT / "data" / "bpe" / "gpt2", folder, dirs_exist_ok=True)
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer", **settings}))
    return folder


@pytest.fixture(scope="module")
def bert2gpt2(tmp_path_factory) -> pathlib.Path:
    """A seeded random bert2gpt2 saved by transformers, with MiniLM's WordPiece at the root and GPT-2's real
    vocabulary in decoder_tokenizer/ (pad = start = eos, as the published bert2gpt2 checkpoints set it)."""
    root = tmp_path_factory.mktemp("bert2gpt2")
    gpt2 = gpt2_vocabulary(root / "gpt2-vocab")
    torch.manual_seed(0)
    encoder = transformers.BertConfig(**TINY)
    decoder = transformers.GPT2Config(n_embd=32, n_layer=1, n_head=4, n_inner=48, initializer_range=0.2)
    config = transformers.EncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id = config.pad_token_id = config.eos_token_id = GPT2_EOS
    hf = transformers.EncoderDecoderModel(config)
    hf.generation_config = transformers.GenerationConfig(decoder_start_token_id=GPT2_EOS, eos_token_id=GPT2_EOS,
                                                         pad_token_id=GPT2_EOS)
    folder = root / "model"
    hf.save_pretrained(folder)
    save_tokenizers(folder, Tokenizer.from_pretrained(MINILM), Tokenizer.from_pretrained(gpt2))
    return folder


@pytest.fixture(scope="module")
def roberta2roberta(tmp_path_factory) -> pathlib.Path:
    return random_roberta2roberta(tmp_path_factory.mktemp("roberta2roberta"))


def test_pipeline_decodes_with_the_decoder_vocabulary(bert2gpt2, tmp_path):
    texts = [r["article"][:400] for r in articles(6)]
    want = transformers_summaries(bert2gpt2, texts, **GEN)
    got = pipeline("summarization", model=bert2gpt2)(texts, max_input_tokens=MAX_TOKENS, **GEN)
    assert [g["summary_text"] for g in got] == want and any(want)
    alone = tmp_path / "alone"
    shutil.copytree(bert2gpt2, alone, ignore=shutil.ignore_patterns("decoder_tokenizer"))
    with pytest.raises(ValueError, match="decoder's vocabulary .50257 tokens. is not the encoder's .30522."):
        pipeline("summarization", model=alone)
    given = pipeline("summarization", model=alone, decoder_tokenizer=bert2gpt2 / "decoder_tokenizer")
    assert [g["summary_text"] for g in given(texts, max_input_tokens=MAX_TOKENS, **GEN)] == want


@pytest.mark.parametrize("family", ["bert2gpt2", "roberta2roberta"])
def test_summarize_job_on_s3_writes_every_row_once(local_ray, family, request, tmp_path):
    check_summarize_on_s3(family, request.getfixturevalue(family), tmp_path, **GEN)


def test_finetune_warm_starts_a_bert2gpt2_and_exports_what_transformers_loads(local_ray, tmp_path):
    """A BERT and a GPT-2 checkpoint (its tokenizer padding with <|endoftext|>, the bert2gpt2 recipe) -> a
    fine-tuned bert2gpt2 whose folder holds both tokenizers and whose logits and loss transformers reproduces."""
    torch.manual_seed(0)
    bert, gpt2 = tmp_path / "bert", tmp_path / "gpt2"
    transformers.BertModel(transformers.BertConfig(**TINY)).save_pretrained(bert)
    Tokenizer.from_pretrained(MINILM).save_pretrained(bert)
    transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=1, n_head=4, n_inner=48)).save_pretrained(
        gpt2)
    gpt2_vocabulary(gpt2, pad_token="<|endoftext|>")
    rows = [json.loads(line) for line in (ROOT / "data" / "cnndm_200.jsonl").read_text().splitlines()[:40]]
    pq.write_table(pa.Table.from_pylist(rows[:32]), tmp_path / "train.parquet")
    pq.write_table(pa.Table.from_pylist(rows[32:]), tmp_path / "eval.parquet")
    out = tmp_path / "out"
    cfg = FinetuneConfig(train_url=str(tmp_path / "train.parquet"), eval_url=str(tmp_path / "eval.parquet"),
                         output_url=str(out), encoder_url=str(bert), decoder_url=str(gpt2), num_workers=1,
                         max_steps=4, batch_size=4, lr=3e-3, max_source_tokens=64, max_target_tokens=16,
                         eval_every=2, checkpoint_every=2, eval_rows=4, rouge_samples=2, eval_beams=2,
                         log_every=2, best_metric="loss")
    result = run_finetune(cfg)
    assert result.steps == 4
    assert sorted(p.name for p in (out / "decoder_tokenizer").iterdir()) == [
        "merges.txt", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.json"]
    ours = EncoderDecoderModel.from_pretrained(out)
    assert (ours.config.decoder_start_token_id, ours.config.pad_token_id, ours.config.eos_token_id) == (
        GPT2_EOS, GPT2_EOS, GPT2_EOS)
    theirs, info = transformers.EncoderDecoderModel.from_pretrained(out, output_loading_info=True)
    assert all(not keys for keys in info.values()), info
    bert_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    gpt2_tok = transformers.AutoTokenizer.from_pretrained(str(out / "decoder_tokenizer"))
    batch = bert_tok(["The cat sat on the mat.", "A longer sentence about the weather today."], padding=True,
                     return_tensors="pt")
    labels = gpt2_tok(["a cat.<|endoftext|>", " rain<|endoftext|>"], padding=True, return_tensors="pt")
    labels = labels.input_ids.masked_fill(labels.attention_mask == 0, -100)
    with torch.no_grad():
        expected = theirs.eval()(**batch, labels=labels)
        got = ours(batch.input_ids, batch.attention_mask, labels=labels, token_type_ids=batch.token_type_ids)
    torch.testing.assert_close(got.logits, expected.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.loss, expected.loss, atol=1e-5, rtol=1e-5)
    warm = safetensors.torch.load_file(gpt2 / "model.safetensors")["transformer.wte.weight"]
    assert not torch.equal(ours.decoder.embed.tok.weight, warm)  # it was trained
