"""BertGeneration checkpoints: a SentencePiece vocabulary, pickle weights converted by `python -m model.convert`,
and the translation call of transformers' docs (add_special_tokens=False, the checkpoint's own generation ids)."""

from __future__ import annotations

import json
import pathlib
import random
import re
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import transformers

from jobs import summarize as summarize_job
from model import EncoderDecoderModel, Tokenizer
from tests.helpers import BOS, EOS, PAD, ROOT, UNK, articles, tiny_hf, wmt_sentences

DATA = ROOT / "data"


def save_pickled(model, folder: pathlib.Path) -> None:
    """What transformers 4 wrote with save_pretrained(safe_serialization=False), which transformers 5 no longer
    offers: the state dict (tied copies included) as pytorch_model.bin, beside the configs."""
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(str(folder))
    model.generation_config.save_pretrained(str(folder))
    torch.save(model.state_dict(), folder / "pytorch_model.bin")


def real_strings() -> list[str]:
    """Held-out sentences (articles 150-199, not trained on), XSum documents, and the same sentences with
    whitespace runs, unknown characters and special tokens spliced in."""
    sentences = [s for a in [r["article"] for r in articles(200)][150:] for s in re.split(r"(?<=[.!?])\s+", a)][:400]
    with open(DATA / "xsum_sample.jsonl", encoding="utf-8") as f:
        xsum = [json.loads(line)["document"] for line in f]
    rnd = random.Random(0)
    inserts = ["  ", "\t", "\u3000", "\u00a0", "\u2603", "<unk>", "</s>", " </s> ", "<s>x", "<::::>", "\u2581 "]
    spliced = []
    for s in sentences[:200]:
        i = rnd.randrange(len(s) + 1)
        spliced.append(s[:i] + rnd.choice(inserts) + s[i:])
    return sentences + xsum + spliced + ["", " ", "a", "<pad>"]


def test_ids_and_text_equal_bert_generation_tokenizer(spiece_dir):
    hf = transformers.AutoTokenizer.from_pretrained(str(spiece_dir))
    assert type(hf).__name__ == "BertGenerationTokenizer"
    tok = Tokenizer.from_pretrained(spiece_dir)
    assert (tok.kind, len(tok), tok.vocab_size) == ("sentencepiece", len(hf), 4000)
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id, tok.unk_token_id) == (PAD, EOS, BOS, UNK)
    assert sorted(tok.all_special_ids) == sorted(hf.all_special_ids)
    texts = real_strings()
    assert len(texts) > 600
    for kwargs in ({}, {"add_special_tokens": False}):
        assert tok.encode_batch(texts, truncation=False, **kwargs) == hf(texts, **kwargs)["input_ids"]
    assert tok.encode_batch(texts, max_length=9) == hf(texts, truncation=True, max_length=9)["input_ids"]
    batch = texts[:40]
    ours = tok(batch, max_length=32)
    theirs = hf(batch, truncation=True, max_length=32, padding=True, return_tensors="pt")
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert torch.equal(ours["attention_mask"], theirs["attention_mask"])

    rows = hf(texts, add_special_tokens=False)["input_ids"]
    rnd = random.Random(1)
    rows += [[rnd.randrange(len(hf)) for _ in range(rnd.randrange(25))] for _ in range(500)]  # any id, specials too
    assert tok.batch_decode(rows) == hf.batch_decode(rows, skip_special_tokens=True)
    assert tok.batch_decode(rows, skip_special_tokens=False) == hf.batch_decode(rows, skip_special_tokens=False)


def test_special_tokens_overridden_as_in_transformers(spiece_dir):
    """The docs' AutoTokenizer.from_pretrained(name, pad_token=..., eos_token=..., bos_token=...)."""
    tok = Tokenizer.from_pretrained(spiece_dir, bos_token="</s>", eos_token="<s>")
    hf = transformers.AutoTokenizer.from_pretrained(str(spiece_dir), bos_token="</s>", eos_token="<s>")
    assert (tok.bos_token_id, tok.eos_token_id) == (hf.bos_token_id, hf.eos_token_id) == (EOS, BOS)
    with pytest.raises(ValueError, match="SentencePiece vocabularies"):
        Tokenizer.from_pretrained(ROOT / "tests" / "missing", pad_token="<pad>")


@pytest.fixture(scope="module")
def pickled_bert_generation(spiece_dir, tmp_path_factory) -> pathlib.Path:
    """A tiny random BertGeneration encoder-decoder on that vocabulary with the docs' bos/eos/pad, saved by
    transformers as pytorch_model.bin, with its own generation settings (beam search)."""
    vocab = len(Tokenizer.from_pretrained(spiece_dir))
    model = tiny_hf("gen", vocab=vocab, seed=3)
    with torch.no_grad():  # weights of std 0.3, not 0.02: summaries that differ from input to input
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    model.config.decoder_start_token_id, model.config.eos_token_id, model.config.pad_token_id = BOS, EOS, PAD
    model.config.decoder.bos_token_id, model.config.decoder.eos_token_id = BOS, EOS
    model.generation_config = transformers.GenerationConfig(
        decoder_start_token_id=BOS, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, num_beams=3, max_length=14,
        no_repeat_ngram_size=3)
    folder = tmp_path_factory.mktemp("bertgen_pickle")
    save_pickled(model, folder)
    transformers.AutoTokenizer.from_pretrained(str(spiece_dir)).save_pretrained(str(folder))
    assert (folder / "pytorch_model.bin").exists() and not (folder / "model.safetensors").exists()
    return folder


def convert(src: pathlib.Path, dst: pathlib.Path, *flags: str) -> str:
    done = subprocess.run([sys.executable, "-m", "model.convert", str(src), str(dst), *flags], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    return done.stdout


def test_converted_bert_generation_translates_as_transformers(pickled_bert_generation, tmp_path):
    with pytest.raises(ValueError, match="python -m model.convert SRC DST"):
        EncoderDecoderModel.from_pretrained(pickled_bert_generation)
    out = tmp_path / "converted"
    assert "sentencepiece tokenizer" in convert(pickled_bert_generation, out)
    assert (out / "model.safetensors").exists() and (out / "spiece.model").exists()

    hf_original = transformers.EncoderDecoderModel.from_pretrained(str(pickled_bert_generation)).eval()
    hf_converted = transformers.EncoderDecoderModel.from_pretrained(str(out)).eval()
    original, converted = hf_original.state_dict(), hf_converted.state_dict()
    assert original.keys() == converted.keys()
    assert all(torch.equal(original[k], converted[k]) for k in original)
    ours = EncoderDecoderModel.from_pretrained(out)
    assert all(torch.equal(a, b) for a, b in zip(ours.encoder.state_dict().values(),
                                                  hf_original.encoder.state_dict().values(), strict=True))

    tok, hf_tok = Tokenizer.from_pretrained(out), transformers.AutoTokenizer.from_pretrained(str(out))
    sentences = wmt_sentences()[:8]
    ids = tok(sentences, max_length=48, add_special_tokens=False)
    hf_ids = hf_tok(sentences, truncation=True, max_length=48, padding=True, add_special_tokens=False,
                    return_tensors="pt")
    assert torch.equal(ids["input_ids"], hf_ids["input_ids"])
    with torch.inference_mode():
        got = ours.generate(ids["input_ids"], ids["attention_mask"])  # the checkpoint's settings, no flags
        want = hf_converted.generate(hf_ids["input_ids"], attention_mask=hf_ids["attention_mask"])
    assert got[:, 0].tolist() == [BOS] * len(sentences)
    assert got.tolist() == want.tolist()
    assert tok.batch_decode(got) == hf_tok.batch_decode(want, skip_special_tokens=True)


def test_summarize_job_without_special_tokens_writes_transformers_outputs(pickled_bert_generation, local_ray,
                                                                          tmp_path):
    model_dir = tmp_path / "converted"
    convert(pickled_bert_generation, model_dir)
    sentences = wmt_sentences()[:30]
    folder = tmp_path / "sentences"
    folder.mkdir()
    for s in range(2):
        pq.write_table(pa.table({"id": list(range(s * 15, (s + 1) * 15)), "text": sentences[s * 15:(s + 1) * 15]}),
                       folder / f"part-{s}.parquet")
    out = tmp_path / "out"
    assert summarize_job.main(["--input", str(folder), "--output", str(out), "--model", str(model_dir),
                               "--text-column", "text", "--no-special-tokens", "--max-input-tokens", "48",
                               "--batch-size", "7"]) == 0
    got = {r["id"]: r["summary"] for r in pq.read_table(out, columns=["id", "summary"]).to_pylist()}

    hf = transformers.EncoderDecoderModel.from_pretrained(str(pickled_bert_generation)).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(pickled_bert_generation))
    want = []
    with torch.inference_mode():
        for text in sentences:
            enc = hf_tok([text], truncation=True, max_length=48, add_special_tokens=False, return_tensors="pt")
            want.append(hf_tok.decode(hf.generate(enc["input_ids"], attention_mask=enc["attention_mask"])[0],
                                      skip_special_tokens=True))
    assert len(set(want)) > 10
    assert [got[i] for i in range(30)] == want


def test_fp16_pickle_bert2bert_converts_and_summarizes_as_transformers(tmp_path):
    hf = tiny_hf("bert", vocab=99, seed=5).half()
    hf.generation_config = transformers.GenerationConfig(decoder_start_token_id=1, eos_token_id=2, pad_token_id=0,
                                                         num_beams=2, max_length=10)
    src = tmp_path / "fp16"
    save_pickled(hf, src)
    assert not (src / "model.safetensors").exists()
    out = tmp_path / "converted"
    assert "(float16)" in convert(src, out)
    ours = EncoderDecoderModel.from_pretrained(out)
    loaded = transformers.EncoderDecoderModel.from_pretrained(str(src)).eval()
    assert {p.dtype for p in ours.parameters()} == {p.dtype for p in loaded.parameters()} == {torch.float16}
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 99, (4, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 7:] = 0
    with torch.inference_mode():
        assert ours.generate(ids, mask).tolist() == loaded.generate(ids, attention_mask=mask).tolist()
    stored = transformers.EncoderDecoderModel.from_pretrained(str(out)).state_dict()
    assert all(torch.equal(v, stored[k]) for k, v in loaded.state_dict().items())
    assert "(float32)" in convert(src, tmp_path / "fp32", "--dtype", "float32")


def test_warm_start_from_bert_generation_takes_its_generation_ids(spiece_dir, tmp_path):
    """Warm-starting from a BertGeneration checkpoint with a SentencePiece vocabulary: <s>, <pad>, </s> (not
    BERT's [CLS], [PAD], [SEP]) become decoder_start, pad and eos."""
    config = transformers.BertGenerationConfig(vocab_size=4001, hidden_size=32, num_hidden_layers=1,
                                               num_attention_heads=2, intermediate_size=48, bos_token_id=BOS,
                                               eos_token_id=EOS, pad_token_id=PAD)
    transformers.BertGenerationEncoder(config).save_pretrained(str(tmp_path / "gen"))
    transformers.AutoTokenizer.from_pretrained(str(spiece_dir)).save_pretrained(str(tmp_path / "gen"))
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(tmp_path / "gen", tmp_path / "gen")
    c = model.config
    assert (c.decoder_start_token_id, c.pad_token_id, c.eos_token_id) == (BOS, PAD, EOS)
