"""A run's identity sees every change that changes a summary, so that a resume, a re-run or the nightly job's
reuse of unchanged shards never mixes summaries of two settings."""

from __future__ import annotations

import json
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.batch import GenerationOverrides
from pipeline.batch.preflight import preflight
from pipeline.batch.run import plan_run, run
from pipeline.cluster import Replicas
from pipeline.io import commit, storage
from pipeline.io.storage import Location
from pipeline.nightly.run import run_nightly
from tests.helpers import DAY1, nightly_config, numbered, put_shard, read_output, summarize_config


def edit_json(path, **changes) -> None:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        *parents, name = key.split(".")
        node = data
        for parent in parents:
            node = node[parent]
        node[name] = value
    path.write_text(json.dumps(data))


def append(path, text: str) -> None:
    path.write_text(path.read_text() + text)


def rename_token(path) -> None:
    """A WordPiece vocabulary with one token renamed (same size): other text maps to other ids."""
    path.write_text(path.read_text().replace("[unused0]\n", "[unused-renamed]\n", 1))


IDENTITY = {"generation": GenerationOverrides(num_beams=1, max_length=8), "max_input_tokens": None}
CHANGES = {  # name -> (edit of the model folder, the identity key the refusal names)
    "repetition_penalty": (lambda m: edit_json(m / "generation_config.json", repetition_penalty=1.3), "generation"),
    "max_new_tokens": (lambda m: edit_json(m / "generation_config.json", max_new_tokens=5), "generation"),
    "tokenizer.json": (lambda m: append(m / "tokenizer.json", "\n"), "model_sha256"),
    "vocab.txt": (lambda m: rename_token(m / "vocab.txt"), "model_sha256"),
    "max_input_tokens default": (lambda m: edit_json(m / "config.json", **{"encoder.max_position_embeddings": 256}),
                                 "max_input_tokens"),
}


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for s in range(2):
        rows = [{"id": s * 10 + i, "article": a["article"]} for i, a in enumerate(numbered(s * 3, 3))]
        pq.write_table(pa.Table.from_pylist(rows), folder / f"part-{s}.parquet")
    return folder


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_resume_after_a_change_is_refused_naming_it(local_ray, tiny_model, corpus, tmp_path, change):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    if change == "vocab.txt":  # a WordPiece vocabulary without tokenizer.json, as older checkpoints have
        (model / "tokenizer.json").unlink()
    output = tmp_path / "out"
    config = summarize_config(corpus, output, model, **IDENTITY)
    pending = plan_run(config)  # an attempt that died before its first unit: its run record is all there is
    record = storage.read_json(Location.of(str(output / commit.RUN_NAME)))
    assert record["attempt"] == pending.attempt and record["identity"]["identity_version"] == 5

    edit, key = CHANGES[change]
    edit(model)
    with pytest.raises(ValueError, match=rf"was started by a run with other inputs or settings \({key}: "):
        preflight(config)
    assert storage.read_json(Location.of(str(output / commit.RUN_NAME))) == record
    assert not storage.data_files(Location.of(str(output)))


def test_resume_with_another_sampling_seed_is_refused_naming_it(local_ray, tiny_model, corpus, tmp_path):
    sampling = GenerationOverrides(do_sample=True, top_k=5, max_length=8, seed=1)
    config = summarize_config(corpus, tmp_path / "out", tiny_model, generation=sampling, max_input_tokens=None)
    plan_run(config)
    other = summarize_config(corpus, tmp_path / "out", tiny_model, max_input_tokens=None,
                             generation=GenerationOverrides(do_sample=True, top_k=5, max_length=8, seed=2))
    with pytest.raises(ValueError, match=r"was started by a run with other inputs or settings \(seed: "):
        preflight(other)
    preflight(config)  # the same seed resumes


def test_the_identity_records_the_dtype_the_replicas_compute_in(local_ray, tiny_model, corpus, tmp_path):
    output = tmp_path / "out"
    auto = summarize_config(corpus, output, tiny_model, dtype="auto", **IDENTITY)
    pending = plan_run(auto)  # CPU replicas: "auto" is float32, the very run --dtype float32 asks for
    assert pending.wanted["dtype"] == "float32"
    again = plan_run(summarize_config(corpus, output, tiny_model, dtype="float32", **IDENTITY))
    assert again.attempt == pending.attempt

    gpu_output = tmp_path / "gpu-out"  # begun on GPU replicas (no dataflow yet: no GPU needed), resumed on CPU
    on_gpu = summarize_config(corpus, gpu_output, tiny_model, replicas=Replicas(1, 1, gpus=1.0), **IDENTITY)
    assert plan_run(on_gpu).wanted["dtype"] == "bfloat16"
    on_cpu = summarize_config(corpus, gpu_output, tiny_model, **IDENTITY)
    refusal = r"was started by a run with other inputs or settings \(dtype: 'bfloat16' -> 'float32'\)"
    with pytest.raises(ValueError, match=refusal):
        preflight(on_cpu)
    checked = preflight(on_cpu, dtype_settled=False)  # the job's preflight, before its replicas have GPUs
    with pytest.raises(ValueError, match=refusal):  # the check under the lease, once they are known
        plan_run(on_cpu, checked)


def test_a_decoder_tokenizer_given_apart_is_in_the_identity(local_ray, tiny_model, corpus, tmp_path):
    decoder, output = tmp_path / "decoder", tmp_path / "out"
    decoder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (tiny_model / name).exists():
            shutil.copy(tiny_model / name, decoder / name)
    config = summarize_config(corpus, output, tiny_model, decoder_tokenizer=str(decoder), **IDENTITY)
    wanted = plan_run(config).wanted
    assert wanted["decoder_tokenizer"] == str(decoder) and len(wanted["decoder_tokenizer_sha256"]) == 64
    with pytest.raises(ValueError, match=rf"\(decoder_tokenizer: '{decoder}' -> None; decoder_tokenizer_sha256: "):
        preflight(summarize_config(corpus, output, tiny_model, **IDENTITY))
    append(decoder / "tokenizer.json", "\n")
    with pytest.raises(ValueError, match=r"other inputs or settings \(decoder_tokenizer_sha256: '[0-9a-f]{64}' -> "):
        preflight(config)


def test_a_record_of_an_older_version_has_unknown_settings(local_ray, tiny_model, corpus, tmp_path):
    output = tmp_path / "out"
    config = summarize_config(corpus, output, tiny_model, **IDENTITY)
    plan_run(config)
    record = storage.read_json(Location.of(str(output / commit.RUN_NAME)))
    del record["identity"]["identity_version"]  # as the previous round wrote it: six generation settings
    storage.write_json_atomic(Location.of(str(output / commit.RUN_NAME)), record)
    with pytest.raises(ValueError, match="settings unknown: recorded with identity version 1"):
        preflight(config)


def test_rerun_of_a_complete_output_after_a_tokenizer_change(local_ray, tiny_model, corpus, tmp_path):
    model, output = tmp_path / "model", tmp_path / "out"
    shutil.copytree(tiny_model, model)
    config = summarize_config(corpus, output, model, **IDENTITY)
    run(config)
    first = storage.read_json(Location.of(str(output / storage.MARKER_NAME)))
    append(model / "tokenizer.json", "\n")
    with pytest.raises(ValueError, match=r"is complete, made with other inputs or settings \(model_sha256: "):
        preflight(config)
    run(summarize_config(corpus, output, model, overwrite=True, **IDENTITY))
    second = storage.read_json(Location.of(str(output / storage.MARKER_NAME)))
    # every file of the output is the second run's: none of the first run's summaries is left among them
    assert second["attempt"] != first["attempt"]
    assert sorted(os.listdir(output)) == sorted([*second["files"], storage.MARKER_NAME, "_lease"])
    assert sorted(r["id"] for r in pq.read_table(output).to_pylist()) == [0, 1, 2, 10, 11, 12]


def test_nightly_reuses_no_shard_summarized_with_another_tokenizer(local_ray, tiny_model, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    corpus, output = str(tmp_path / "corpus"), str(tmp_path / "summaries")
    (tmp_path / "corpus" / DAY1).mkdir(parents=True)
    put_shard(f"{corpus}/{DAY1}/part-0.parquet", numbered(0, 2))
    put_shard(f"{corpus}/{DAY1}/part-1.parquet", numbered(2, 2))

    def nightly() -> dict:
        return run_nightly(nightly_config(corpus, output, model)).to_dict()

    assert nightly()["totals"]["processed"] == 1
    before = storage.read_json(Location.of(f"{output}/{DAY1}/_SUCCESS.json"))
    rename_token(model / "vocab.txt")
    stale = nightly()["partitions"][0]
    assert (stale["action"], stale["reason"]) == ("skipped", "stale") and "model_sha256" in stale["detail"]
    put_shard(f"{corpus}/{DAY1}/part-2.parquet", numbered(4, 2))  # a changed partition: its old shards are redone
    redone = nightly()["partitions"][0]
    assert (redone["action"], redone["reason"], redone["rows_written"]) == ("processed", "changed", 6)
    after = storage.read_json(Location.of(f"{output}/{DAY1}/_SUCCESS.json"))
    assert after["reused_shards"] == [] and not set(after["files"]) & set(before["files"])
    assert after["settings"]["model_sha256"] != before["settings"]["model_sha256"]
    assert [r["id"] for r in read_output(output)] == list(range(6))
