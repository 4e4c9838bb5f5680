"""Bad inputs fail before Ray is even touched, with a message that names the problem."""

from __future__ import annotations

import json
import os
import shutil

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from pipeline.batch import SummarizeConfig, preflight
from pipeline.batch.inputs import inspect_input
from pipeline.batch.run import run
from pipeline.cluster import Replicas
from pipeline.cluster.scaling import fit_replicas, reachable, read_cluster_config
from pipeline.io import storage
from pipeline.io.storage import Location
from tests.helpers import ROOT


@pytest.fixture
def shards(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(2):
        pq.write_table(pa.table({"id": [f"{i}-a", f"{i}-b"], "article": ["x y z", "a b c"], "n": [1, 2]}),
                       folder / f"part-{i}.parquet")
    return folder


def fails(config: SummarizeConfig, exc: type, *fragments: str) -> None:
    """Preflight (no Ray) refuses the config, and so does the run, before it writes anything."""
    for call in (preflight, run):
        with pytest.raises(exc) as info:
            call(config)
        for fragment in fragments:
            assert fragment in str(info.value)
    assert not os.path.exists(os.path.join(config.output, "_RUN.json"))


def test_missing_text_column_lists_existing_columns(shards, tmp_path, bert2bert_dir):
    config = SummarizeConfig(input=str(shards), output=str(tmp_path / "out"), model=str(bert2bert_dir),
                             text_column="body")
    fails(config, ValueError, "has no column(s) body", "its columns are: id, article, n")


def test_missing_explicit_id_column(shards, tmp_path, bert2bert_dir):
    config = SummarizeConfig(input=str(shards), output=str(tmp_path / "out"), model=str(bert2bert_dir),
                             id_column="doc_id")
    fails(config, ValueError, "has no column(s) doc_id", "its columns are: id, article, n")


def test_no_shards(tmp_path, bert2bert_dir):
    (tmp_path / "empty").mkdir()
    for url in (tmp_path / "empty", tmp_path / "nowhere", f"{tmp_path}/empty/*.parquet"):
        fails(SummarizeConfig(input=str(url), output=str(tmp_path / "out"), model=str(bert2bert_dir)),
              FileNotFoundError, f"no Parquet shards at {url}")


def test_corrupt_shard_is_named(shards, tmp_path, bert2bert_dir):
    bad = shards / "part-9.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    fails(SummarizeConfig(input=str(shards), output=str(tmp_path / "out"), model=str(bert2bert_dir)),
          ValueError, f"corrupt Parquet shard {bad}")


def test_derived_id_when_no_id_column(tmp_path):
    pq.write_table(pa.table({"article": ["a", "b", "c"]}), tmp_path / "one.parquet")
    plan = inspect_input(SummarizeConfig(input=str(tmp_path / "one.parquet"), output=str(tmp_path / "o"), model="m"))
    assert (plan.id_column, plan.derived_id, plan.rows) == ("row_hash", True, 3)


def test_unreadable_model(shards, tmp_path, bert2bert_dir):
    fails(SummarizeConfig(input=str(shards), output=str(tmp_path / "out"), model=str(tmp_path / "no_model")),
          ValueError, f"model {tmp_path / 'no_model'} is not readable", "config.json: file not found")
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(bert2bert_dir / "config.json", partial / "config.json")
    fails(SummarizeConfig(input=str(shards), output=str(tmp_path / "out"), model=str(partial)),
          ValueError, f"model {partial} is not readable", "no model.safetensors")


def test_unwritable_output(shards, tmp_path, bert2bert_dir, s3_endpoint):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    fails(SummarizeConfig(input=str(shards), output=str(blocker / "out"), model=str(bert2bert_dir)),
          PermissionError, f"output {blocker / 'out'} is not writable")
    fails(SummarizeConfig(input=str(shards), output="s3://no-such-bucket/out", model=str(bert2bert_dir)),
          PermissionError, "output s3://no-such-bucket/out is not writable")


def test_output_of_another_job_is_not_mixed_into(shards, tmp_path, bert2bert_dir):
    out = tmp_path / "out"
    out.mkdir()
    pq.write_table(pa.table({"id": ["old"]}), out / "old.parquet")
    with pytest.raises(RuntimeError, match="holds Parquet files from another job"):
        run(SummarizeConfig(input=str(shards), output=str(out), model=str(bert2bert_dir)))


def test_fit_replicas():
    assert fit_replicas(Replicas(min=2, max=2, cpus=1), {"CPU": 4}) == (Replicas(min=2, max=2, cpus=1), [])
    capped, notes = fit_replicas(Replicas(min=1, max=8, cpus=2), {"CPU": 8})
    assert capped.max == 3 and "replicas capped at 3" in notes[0]
    with pytest.raises(RuntimeError, match=r"do not fit the cluster \(2 CPU, 0 GPU\)"):
        fit_replicas(Replicas(min=1, max=1, cpus=1), {"CPU": 2})
    with pytest.raises(RuntimeError, match=r"do not fit the cluster \(16 CPU, 1 GPU\)"):
        fit_replicas(Replicas(min=2, max=2, cpus=1, gpus=1), {"CPU": 16, "GPU": 1})
    assert fit_replicas(Replicas(min=1, max=4, cpus=1, gpus=0.5), {"CPU": 16, "GPU": 1})[0].max == 2


def test_replicas_flag():
    assert Replicas.parse("3") == Replicas(min=3, max=3)
    assert Replicas.parse("1-4", gpus=0.5) == Replicas(min=1, max=4, gpus=0.5)
    with pytest.raises(ValueError, match="N or MIN-MAX"):
        Replicas.parse("two")
    with pytest.raises(ValueError, match="1 <= min <= max"):
        Replicas.parse("4-2")


def test_pool_fitted_to_what_the_autoscaler_can_start_not_to_what_is_up(tmp_path):
    types = read_cluster_config(os.path.join(ROOT, "cluster.yaml"))
    assert types.source == f"--cluster-config {os.path.join(ROOT, 'cluster.yaml')}"
    [gpu] = types.types
    assert gpu.resources["GPU"] == 1 and gpu.max_workers == 4
    # GPU workers at zero: 1-8 replicas of 1 GPU fit the 4 GPU nodes the autoscaler can start, not the 0 up now
    empty = {"CPU": 4.0}
    assert fit_replicas(Replicas(min=1, max=8, gpus=1), reachable(empty, types.types, []))[0].max == 4
    one_up = reachable({"CPU": 8.0, "GPU": 1.0}, types.types, [{"CPU": 4.0, "GPU": 1.0}, {"CPU": 4.0}])
    assert one_up["GPU"] == 4 and fit_replicas(Replicas(min=1, max=8, gpus=1), one_up)[0].max == 4
    with pytest.raises(RuntimeError, match="do not fit"):
        fit_replicas(Replicas(min=1, max=8, gpus=1), empty)
    (tmp_path / "fixed.yaml").write_text("head_node_type: head\navailable_node_types:\n  head: {resources: {}}\n")
    with pytest.raises(ValueError, match="names no worker node types"):
        read_cluster_config(str(tmp_path / "fixed.yaml"))


class OverwritingFileSystem(MemoryFileSystem):
    """A filesystem that writes over an existing file when asked for an exclusive create, as s3fs did before
    2024.12 (it had no mode="create")."""

    protocol = "overwriting"

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        return super().pipe_file(path, value, **kwargs)


def test_output_filesystems_must_honour_exclusive_creates(bucket, tmp_path):
    storage.check_writable(Location.of(f"{bucket}/out"))  # S3 through s3fs, on moto
    storage.check_writable(Location.of(str(tmp_path / "out")))  # local disk
    fsspec.register_implementation("overwriting", OverwritingFileSystem, clobber=True)
    with pytest.raises(ValueError, match=r"output overwriting://b/out: OverwritingFileSystem \(tests [^)]*\) does not "
                                         r"honour exclusive creates \(it wrote over an existing file\); .* S3 "
                                         r"through s3fs >= 2024\.12\.0"):
        storage.check_writable(Location.of("overwriting://b/out"))


def test_a_checkpoint_asking_for_more_sequences_than_beams_is_refused(shards, bert2bert_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(bert2bert_dir, model)
    path = model / "generation_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "num_beams": 4, "num_return_sequences": 5}))
    fails(SummarizeConfig(input=str(shards), output=str(tmp_path / "out"), model=str(model)), ValueError,
          f"generation settings do not fit model {model}: num_return_sequences (5) must be <= num_beams (4)")
    assert not (tmp_path / "out").exists()
