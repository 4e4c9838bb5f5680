"""bert2gpt2: articles in BERT's WordPiece, summaries in GPT-2's byte-level BPE (the decoder_tokenizer/ layout),
through pipeline() and the summarize job on S3, against transformers' generate + GPT-2 decode."""

from __future__ import annotations

import json
import pathlib
import shutil

import pytest
import torch
import transformers

from model import Tokenizer, pipeline, save_tokenizers
from pipeline.batch import GenerationOverrides
from pipeline.batch.run import run
from pipeline.cluster import Replicas
from tests.helpers import MAX_TOKENS, MINILM, ROOT, articles, read_output, stage_on_s3, summarize_config

GPT2_EOS = 50256
GEN = dict(num_beams=2, max_length=10, no_repeat_ngram_size=2)


@pytest.fixture(scope="module")
def bert2gpt2(tmp_path_factory) -> pathlib.Path:
    """A seeded random bert2gpt2 saved by transformers, with MiniLM's WordPiece at the root and GPT-2's real
    vocabulary in decoder_tokenizer/ (pad = start = eos, as the published bert2gpt2 checkpoints set it)."""
    root = tmp_path_factory.mktemp("bert2gpt2")
    gpt2 = root / "gpt2-vocab"
    shutil.copytree(ROOT / "data" / "bpe" / "gpt2", gpt2)
    (gpt2 / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer"}))
    torch.manual_seed(0)
    encoder = transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=48)
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


def transformers_summaries(folder: pathlib.Path, texts: list[str]) -> list[str]:
    bert = transformers.AutoTokenizer.from_pretrained(str(folder))
    gpt2 = transformers.AutoTokenizer.from_pretrained(str(folder / "decoder_tokenizer"))
    hf = transformers.EncoderDecoderModel.from_pretrained(str(folder)).eval()
    out = []
    with torch.inference_mode():
        for text in texts:
            enc = bert(text, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
            ids = hf.generate(input_ids=enc.input_ids, attention_mask=enc.attention_mask, **GEN)
            out.append(gpt2.decode(ids[0], skip_special_tokens=True))
    return out


def test_pipeline_decodes_with_the_decoder_vocabulary(bert2gpt2, tmp_path):
    texts = [r["article"][:400] for r in articles(6)]
    want = transformers_summaries(bert2gpt2, texts)
    got = pipeline("summarization", model=bert2gpt2)(texts, max_input_tokens=MAX_TOKENS, **GEN)
    assert [g["summary_text"] for g in got] == want and any(want)
    alone = tmp_path / "alone"
    shutil.copytree(bert2gpt2, alone, ignore=shutil.ignore_patterns("decoder_tokenizer"))
    with pytest.raises(ValueError, match="decoder's vocabulary .50257 tokens. is not the encoder's .30522."):
        pipeline("summarization", model=alone)
    given = pipeline("summarization", model=alone, decoder_tokenizer=bert2gpt2 / "decoder_tokenizer")
    assert [g["summary_text"] for g in given(texts, max_input_tokens=MAX_TOKENS, **GEN)] == want


def test_summarize_job_on_s3_writes_every_row_once_in_the_decoder_vocabulary(local_ray, bert2gpt2, tmp_path):
    rows = [{"id": i, "article": r["article"][:400]} for i, r in enumerate(articles(8))]
    stage_on_s3("bert2gpt2", rows, 3, bert2gpt2, tmp_path)
    out = "s3://bert2gpt2/summaries"
    result = run(summarize_config("s3://bert2gpt2/articles", out, "s3://bert2gpt2/models/b2b",
                                  generation=GenerationOverrides(**GEN), replicas=Replicas(1, 1, batch_size=4),
                                  max_input_tokens=MAX_TOKENS))
    assert (result.rows_in, result.rows_out, result.failed_by_reason) == (8, 8, {})
    got = {r["id"]: r["summary"] for r in read_output(out)}
    assert sorted(got) == list(range(8))
    assert [got[i] for i in range(8)] == transformers_summaries(bert2gpt2, [r["article"] for r in rows])
