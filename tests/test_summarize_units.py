"""Units of work on a real local Ray: one file per small shard, big shards split into files near --rows-per-file
across replicas, duplicate ids across shards, --overwrite interrupted during its replace, footers as the tally."""

from __future__ import annotations

import dataclasses
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.batch import GenerationOverrides, unique_ids
from pipeline.batch.inputs import Shard
from pipeline.batch.preflight import staging
from pipeline.batch.run import run
from pipeline.batch.units import plan_units
from pipeline.cluster import Replicas
from pipeline.io import commit, storage
from pipeline.io.storage import Location
from tests.helpers import articles, summarize_config

GEN = GenerationOverrides(num_beams=1, max_length=6)
TEXTS = [r["article"][:200] for r in articles(60)]




def shards(folder, sizes: list[int], row_group_size: int | None = None, first_id: int = 0) -> list[int]:
    folder.mkdir(parents=True, exist_ok=True)
    ids, n = [], first_id
    for s, size in enumerate(sizes):
        batch = list(range(n, n + size))
        table = pa.table({"id": pa.array(batch, pa.int64()), "article": [TEXTS[i % len(TEXTS)] for i in batch]})
        pq.write_table(table, folder / f"part-{s:03d}.parquet", row_group_size=row_group_size)
        ids.extend(batch)
        n += size
    return ids


def output_ids(out) -> list[int]:
    return sorted(pq.read_table(out).column("id").to_pylist())


def test_plan_cuts_big_shards_evenly_and_reads_only_overlapping_row_groups():
    shard = Shard("p", "a/b.parquet", 1, "v", rows=25, row_groups=(7, 7, 7, 4))
    units = plan_units([shard, Shard("q", "c.parquet", 1, "v", rows=0, row_groups=())], rows_per_file=10)
    assert [(u.name, u.start, u.stop) for u in units] == [("a/b-00000", 0, 8), ("a/b-00001", 8, 16),
                                                           ("a/b-00002", 16, 25)]
    assert [(u.row_groups, u.offset) for u in units] == [((0, 1), 0), ((1, 2), 1), ((2, 3), 2)]


def test_many_small_shards_give_one_file_each(local_ray, bert2bert_dir, tmp_path):
    ids = shards(tmp_path / "in", [5, 3, 0, 7, 4, 6])
    out = tmp_path / "out"
    result = run(summarize_config(tmp_path / "in", out, bert2bert_dir))
    files = storage.data_files(Location.of(str(out)))
    assert (result.rows_out, result.units, len(files)) == (25, 5, 5)  # the empty shard has no file
    assert sorted(pq.read_metadata(f).num_rows for f in files) == [3, 4, 5, 6, 7]
    assert output_ids(out) == ids
    marker = storage.read_json(Location.of(str(out / storage.MARKER_NAME)))
    assert sorted(marker["files"]) == sorted(f.rsplit("/", 1)[1] for f in files)
    stats = commit.read_stats(Location.of(str(out)), marker["files"])  # each file's counts travel in its footer
    assert sum(s["rows"] for s in stats) == 25 and all(s["replica"] for s in stats)


def test_big_shard_is_split_across_replicas_into_files_near_rows_per_file(local_ray, bert2bert_dir, tmp_path):
    ids = shards(tmp_path / "in", [43], row_group_size=6)
    out = tmp_path / "out"
    result = run(summarize_config(tmp_path / "in", out, bert2bert_dir, rows_per_file=10,
                        replicas=Replicas(2, 2, batch_size=4)))
    files = storage.data_files(Location.of(str(out)))
    assert sorted(pq.read_metadata(f).num_rows for f in files) == [8, 8, 9, 9, 9]
    assert output_ids(out) == ids and result.rows_written == 43
    assert len(result.rows_by_replica) == 2 and sum(result.rows_by_replica.values()) == 43


@pytest.mark.parametrize("per_reader, per_counter", [(1_000_000, 5_000_000), (4, 3)])  # one task; a real shuffle
def test_duplicate_id_across_shards_stops_the_job_before_any_row_is_written(local_ray, bert2bert_dir, tmp_path,
                                                                            monkeypatch, per_reader, per_counter):
    monkeypatch.setattr(unique_ids, "ROWS_PER_READER", per_reader)
    monkeypatch.setattr(unique_ids, "ROWS_PER_COUNTER", per_counter)
    shards(tmp_path / "in", [4, 4])
    shards(tmp_path / "in2", [3], first_id=2)  # ids 2, 3, 4 again
    (tmp_path / "in2" / "part-000.parquet").rename(tmp_path / "in" / "part-late.parquet")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"3 duplicate id\(s\) in column 'id'") as info:
        run(summarize_config(tmp_path / "in", out, bert2bert_dir))
    assert all(repr(i) in str(info.value) for i in (2, 3, 4))
    assert storage.data_files(Location.of(str(out))) == []
    assert not storage.exists(Location.of(str(out / storage.MARKER_NAME)))


def test_null_id_stops_the_job(local_ray, bert2bert_dir, tmp_path):
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"id": pa.array([1, None, 3], pa.int64()), "article": TEXTS[:3]}),
                   tmp_path / "in" / "p.parquet")
    with pytest.raises(ValueError, match=r"1 row\(s\) have a null id in column 'id'"):
        run(summarize_config(tmp_path / "in", tmp_path / "out", bert2bert_dir))


class Crash(Exception):
    """A process that died at this point (injected into the storage layer)."""


def test_overwrite_interrupted_during_its_replace_leaves_a_complete_output(local_ray, bert2bert_dir, tmp_path,
                                                                           monkeypatch):
    ids = shards(tmp_path / "in", [6, 6, 6])
    out = tmp_path / "out"
    run(summarize_config(tmp_path / "in", out, bert2bert_dir))
    old = storage.read_json(Location.of(str(out / storage.MARKER_NAME)))
    new_gen = GenerationOverrides(num_beams=1, max_length=4)

    def readable_by_marker() -> tuple[dict, list[int]]:
        marker = storage.read_json(Location.of(str(out / storage.MARKER_NAME)))
        table = pa.concat_tables(pq.read_table(out / name) for name in marker["files"])
        return marker, sorted(table.column("id").to_pylist())

    write_json = storage.write_json_atomic
    moved = storage.move_files

    def move_one_then_crash(src, dst, names):  # dies after moving the first of the new files
        moved(src, dst, names[:1])
        raise Crash

    def crash_at_switch(loc, obj, **kwargs):  # dies just before the marker that switches readers is written
        if loc.url == str(out / storage.MARKER_NAME):
            raise Crash
        return write_json(loc, obj, **kwargs)

    for fault in (("move_files", move_one_then_crash), ("write_json_atomic", crash_at_switch)):
        monkeypatch.setattr(storage, *fault)
        with pytest.raises(Crash):
            run(summarize_config(tmp_path / "in", out, bert2bert_dir, overwrite=True, generation=new_gen))
        monkeypatch.undo()
        marker, got = readable_by_marker()
        assert marker["attempt"] == old["attempt"] and got == ids  # the old output, complete
        assert storage.read_json(staging(Location.of(str(out))).child(storage.MARKER_NAME))["files"]

    # the next run, whatever it is asked, first finishes the interrupted replace
    again = run(summarize_config(tmp_path / "in", out, bert2bert_dir, overwrite=True, generation=new_gen))
    marker, got = readable_by_marker()
    assert marker["attempt"] != old["attempt"] and got == ids and marker["generation"]["max_length"] == 4
    assert again.rows_written == 0 and any("finished publishing" in n for n in again.notes)
    assert sorted(storage.data_names(Location.of(str(out)))) == sorted(marker["files"])  # old files gone
    assert not storage.exists(staging(Location.of(str(out))))
    assert json.loads(pq.read_metadata(out / marker["files"][0]).metadata[commit.STATS_KEY])["rows"] == 6


def test_a_publish_interrupted_then_run_with_other_settings_is_refused(local_ray, tiny_model, tmp_path, monkeypatch):
    ids = shards(tmp_path / "in", [4, 4])
    out = tmp_path / "out"
    first = summarize_config(tmp_path / "in", out, tiny_model)
    run(first)
    old = storage.read_json(Location.of(str(out / storage.MARKER_NAME)))
    other = summarize_config(tmp_path / "in", out, tiny_model,
                             generation=GenerationOverrides(num_beams=1, max_length=4))
    moved = storage.move_files

    def move_one_then_crash(src, dst, names):  # dies while publishing, after moving the first of the new files
        moved(src, dst, names[:1])
        raise Crash

    monkeypatch.setattr(storage, "move_files", move_one_then_crash)
    with pytest.raises(Crash):
        run(dataclasses.replace(other, overwrite=True))
    monkeypatch.undo()
    # the first command again, without --overwrite: the staged output it would publish was made with other settings
    with pytest.raises(ValueError, match=r"is complete, made with other inputs or settings \(generation: "):
        run(first)
    assert storage.read_json(Location.of(str(out / storage.MARKER_NAME)))["attempt"] == old["attempt"]
    # the interrupted command's settings finish the publish and find the output complete
    again = run(other)
    marker = storage.read_json(Location.of(str(out / storage.MARKER_NAME)))
    assert again.status == "already-complete" and any("finished publishing" in n for n in again.notes)
    assert marker["attempt"] != old["attempt"] and marker["generation"]["max_length"] == 4
    assert output_ids(out) == ids and not storage.exists(staging(Location.of(str(out))))
