"""Every input and setting checked before work starts, settings never mixed, secrets never printed or stored.

Most cases run `jobs.summarize.main` in this process, so that "it never connected to Ray" is a plain check of
its `connect` calls; the secrets and replica-error cases run the job as a user does, in a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import unicodedata

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs

from jobs import summarize as summarize_job
from pipeline.batch import GenerationOverrides
from pipeline.batch.run import run
from pipeline.io import storage
from tests.helpers import ROOT, articles, summarize_config

TEXTS = [r["article"][:300] for r in articles(8)]
GEN = ["--num-beams", "1", "--max-length", "6", "--max-input-tokens", "48", "--replicas", "1"]


def shard(path, ids, texts=None, **columns) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    texts = texts if texts is not None else [TEXTS[i % len(TEXTS)] for i in range(len(ids))]
    pq.write_table(pa.table({"id": ids, "article": texts, **columns}), path)


def refused(capsys, argv: list[str], *words: str) -> str:
    """The job exits 1 before it connects to Ray, with one line on stderr holding `words`."""
    real, connections = summarize_job.connect, []
    summarize_job.connect = lambda *args: connections.append(args)
    try:
        assert summarize_job.main(argv) == 1
    finally:
        summarize_job.connect = real
    assert connections == []
    err = capsys.readouterr().err
    line = err.splitlines()[0]
    for word in words:
        assert word in line, err
    return line


def test_tokenizer_larger_than_the_model_vocabulary(capsys, tmp_path, bert2bert_dir):
    model = tmp_path / "model"
    shutil.copytree(bert2bert_dir, model)
    config = json.loads((model / "config.json").read_text())
    config["encoder"]["vocab_size"] = 1000
    (model / "config.json").write_text(json.dumps(config))
    shard(tmp_path / "in" / "a.parquet", [1, 2])
    refused(capsys, ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--model", str(model)],
            "has 30522 tokens, more than the encoder's vocabulary of 1000")


def test_max_length_beyond_the_decoder_positions(capsys, tmp_path, bert2bert_dir):
    shard(tmp_path / "in" / "a.parquet", [1, 2])
    refused(capsys, ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--model",
                     str(bert2bert_dir), "--max-length", "600"],
            "generation settings do not fit model",
            "max_length 600 exceeds the decoder's 512 usable positions (max_position_embeddings 512)")


def test_id_columns_of_different_types(capsys, tmp_path, bert2bert_dir):
    shard(tmp_path / "in" / "a.parquet", pa.array([1, 2], pa.int64()))
    shard(tmp_path / "in" / "b.parquet", pa.array(["x", "y"], pa.string()))
    refused(capsys, ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--model",
                     str(bert2bert_dir)],
            "the id column 'id' has different types", "int64 in a.parquet", "string in b.parquet")


def test_text_column_that_is_not_text(capsys, tmp_path, bert2bert_dir):
    shard(tmp_path / "in" / "a.parquet", [1, 2], texts=pa.array([3.5, 4.5]))
    refused(capsys, ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--model",
                     str(bert2bert_dir)],
            "the text column 'article' of input shard", "is double, not text")


def test_output_inside_the_input_and_the_reverse(capsys, tmp_path, bert2bert_dir):
    shard(tmp_path / "in" / "a.parquet", [1, 2])
    refused(capsys, ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "in" / "summaries"), "--model",
                     str(bert2bert_dir)], "is inside the input folder")
    shard(tmp_path / "out" / "in" / "a.parquet", [1, 2])
    refused(capsys, ["--input", str(tmp_path / "out" / "in"), "--output", str(tmp_path / "out"), "--model",
                     str(bert2bert_dir)], "is inside the output folder")


def test_csv_input_and_bad_numbers(capsys, tmp_path, bert2bert_dir):
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "a.csv").write_text("id,article\n1,text\n")
    refused(capsys, ["--input", str(tmp_path / "csv"), "--output", str(tmp_path / "out"), "--model",
                     str(bert2bert_dir)], "no Parquet shards at")
    shard(tmp_path / "in" / "a.parquet", [1, 2])
    for flag, value, words in (("--rows-per-file", "0", "rows_per_file must be >= 1"),
                               ("--num-beams", "0", "num_beams must be >= 1")):
        refused(capsys, ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--model",
                         str(bert2bert_dir), flag, value], words)
    with pytest.raises(SystemExit) as exited:  # caps are whole numbers >= 1 from the parser on
        summarize_job.parse_args(["--input", "a", "--output", "b", "--model", "m", "--max-batch-tokens", "-5"])
    assert exited.value.code == 2
    assert "argument --max-batch-tokens: must be >= 1, got -5" in capsys.readouterr().err


def test_bad_storage_options_json_is_not_echoed(capsys):
    with pytest.raises(SystemExit):
        summarize_job.parse_args(["--input", "a", "--output", "b", "--model", "m",
                                  "--storage-options", '{"secret": "hunter2-value"'])
    err = capsys.readouterr().err
    assert "--storage-options: not valid JSON" in err and "hunter2" not in err


class Crash(Exception):
    """The driver died here (injected into the storage layer)."""


def test_settings_are_never_mixed(local_ray, tmp_path, bert2bert_dir, monkeypatch):
    for s in range(3):
        shard(tmp_path / "in" / f"p{s}.parquet", [s * 3 + i for i in range(3)])
    out = tmp_path / "out"
    write_json = storage.write_json_atomic

    def die_at_marker(loc, obj, exclusive=False):
        if loc.path.endswith(storage.MARKER_NAME):
            raise Crash
        return write_json(loc, obj, exclusive)

    monkeypatch.setattr(storage, "write_json_atomic", die_at_marker)
    with pytest.raises(Crash):  # every unit committed, then the driver dies before its marker
        run(summarize_config(tmp_path / "in", out, bert2bert_dir))
    monkeypatch.undo()
    beams = GenerationOverrides(num_beams=2, max_length=6)
    with pytest.raises(ValueError, match=r"was started by a run with other inputs or settings \(generation: "
                                         r".*'num_beams': 1.*-> .*'num_beams': 2") as info:
        run(summarize_config(tmp_path / "in", out, bert2bert_dir, generation=beams))
    assert "--overwrite" in str(info.value)
    redone = run(summarize_config(tmp_path / "in", out, bert2bert_dir, generation=beams, overwrite=True))
    assert redone.rows_written == 9
    clean = run(summarize_config(tmp_path / "in", tmp_path / "clean", bert2bert_dir, generation=beams))

    def rows(folder):
        return sorted((r["id"], r["summary"]) for r in pq.read_table(folder).to_pylist())

    assert rows(out) == rows(tmp_path / "clean") and clean.rows_written == 9
    with pytest.raises(ValueError, match=r"is complete, made with other inputs or settings \(generation: "):
        run(summarize_config(tmp_path / "in", out, bert2bert_dir))  # num_beams 1 again
    allowed = run(summarize_config(tmp_path / "in", out, bert2bert_dir, generation=beams, rows_per_file=2))
    assert allowed.status == "already-complete"  # what cannot change a summary may differ


def test_good_unusual_inputs_stay_good(local_ray, tmp_path, bert2bert_dir):
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    big = ("word " * 420_000)[:2_000_000]
    categorical = pa.array(TEXTS[:3] + [TEXTS[0]]).dictionary_encode()
    shard(tmp_path / "in" / "a.parquet", [nfc, nfd, "c", "d"], texts=categorical)
    shard(tmp_path / "in" / "b.parquet", ["big", "ctl", "none"], texts=[big, "Tab\there\x07 bell", None])
    shard(tmp_path / "in" / "c.parquet", pa.array([], pa.string()), texts=pa.array([], pa.string()))
    result = run(summarize_config(tmp_path / "in", tmp_path / "out", bert2bert_dir))
    got = {r["id"]: r for r in pq.read_table(tmp_path / "out").to_pylist()}
    assert sorted(got) == sorted([nfc, nfd, "c", "d", "big", "ctl", "none"]) and result.rows_out == 7
    assert got[nfc]["summary"] == got["d"]["summary"] and got[nfc]["error"] is None  # the same article
    assert got["big"]["truncated"] is True and got["big"]["input_tokens"] == 48
    assert got["ctl"]["cleaned"] is True and got["none"]["error"] == "text is null"


def test_secrets_never_reach_logs_outputs_or_markers(s3_endpoint, tmp_path, bert2bert_dir):
    key, secret = "AKIAKEYVALUE123456", "s3cr3t-VALUE-never-printed"
    fs = s3fs.S3FileSystem()
    fs.mkdir("secrets")
    shard(tmp_path / "in" / "a.parquet", [1, 2, 3])
    fs.put(str(tmp_path / "in"), "secrets/in", recursive=True)
    fs.put(str(bert2bert_dir), "secrets/model", recursive=True)
    options = json.dumps({"key": key, "secret": secret, "client_kwargs": {"endpoint_url": s3_endpoint}})
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    logs = []
    for model in ("s3://secrets/model", "s3://secrets/no-model"):  # a run that works, one that fails
        done = subprocess.run([sys.executable, "-m", "jobs.summarize", "--input", "s3://secrets/in", "--output",
                               "s3://secrets/out", "--model", model, "--storage-options", options, *GEN],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        logs.append(done.stdout + done.stderr)
        if model.endswith("/model"):
            assert done.returncode == 0, logs[-1][-3000:]
        else:
            assert done.returncode == 1 and "summarize failed" in done.stderr
            traceback_file = done.stderr.rsplit("(full traceback: ", 1)[1].split(")")[0]
            logs.append(open(traceback_file, encoding="utf-8").read())
    fs.invalidate_cache()
    stored = [fs.cat(p).decode("latin-1") for p in fs.find("secrets/out")]
    assert any("rows_out" in text for text in stored) and "summarize config:" in logs[0]
    assert "'max_input_tokens': 48" in logs[0] and "'secret': '***'" in logs[0]  # settings are not secrets
    for text in logs + stored:
        assert key not in text and secret not in text
