"""The dataflow on a real local Ray: several replicas, bad rows, re-runs, --overwrite, derived ids, GPU plan."""

from __future__ import annotations

import pathlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from model import pipeline
from pipeline.batch import GenerationOverrides
from pipeline.batch.preflight import staging
from pipeline.batch.run import run
from pipeline.batch.text import ERR_EMPTY, ERR_NULL
from pipeline.cluster import Replicas
from pipeline.io import storage
from pipeline.io.commit import RUN_NAME
from pipeline.io.storage import Location
from tests.helpers import MAX_TOKENS, articles, direct_summaries, summarize_config

GEN = GenerationOverrides(num_beams=2, max_length=12)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[pathlib.Path, list[dict]]:
    rows = [{"id": i, "article": r["article"][:600]} for i, r in enumerate(articles(18))]
    bad = [{"id": 100, "article": None}, {"id": 101, "article": "  \n "}, {"id": 102, "article": "\x00\x07"}]
    folder = tmp_path_factory.mktemp("corpus")
    for s in range(3):
        pq.write_table(pa.Table.from_pylist(rows[s * 6:(s + 1) * 6] + bad[s:s + 1],
                                            schema=pa.schema([("id", pa.int64()), ("article", pa.string())])),
                       folder / f"part-{s}.parquet")
    return folder, rows



RUN = {"generation": GEN, "replicas": Replicas(3, 3, batch_size=2), "max_input_tokens": MAX_TOKENS}


def test_replicas_share_work_and_summaries_match_direct_generate(local_ray, corpus, bert2bert_dir, tmp_path):
    folder, rows = corpus
    out = tmp_path / "out"
    # 12 units of at most 2 rows: a backlog forms, and the pool's least-busy dispatch spreads it. Which replica
    # takes which unit is timing, so only the spread and the total are asserted.
    result = run(summarize_config(folder, out, bert2bert_dir, **RUN, rows_per_file=2))
    assert (result.status, result.rows_in, result.rows_out, result.rows_written) == ("complete", 21, 21, 21)
    assert len(storage.data_files(Location.of(str(out)))) == 12
    assert len(result.rows_by_replica) >= 2 and sum(result.rows_by_replica.values()) == 21
    assert result.failed_by_reason == {ERR_NULL: 1, ERR_EMPTY: 2}
    table = pq.read_table(out)
    assert table.schema.field("id").type == pa.int64()
    got = {r["id"]: r for r in table.to_pylist()}
    assert sorted(got) == list(range(18)) + [100, 101, 102]
    assert (got[100]["error"], got[101]["error"], got[102]["error"]) == (ERR_NULL, ERR_EMPTY, ERR_EMPTY)
    assert got[102]["cleaned"] is True and got[100]["summary"] is None
    expected = direct_summaries(bert2bert_dir, [r["article"] for r in rows], **GEN.as_kwargs())
    assert [got[i]["summary"] for i in range(18)] == expected
    assert storage.read_json(Location.of(str(out / "_SUCCESS.json")))["rows_out"] == 21
    assert not storage.exists(Location.of(str(out / RUN_NAME)))  # resume state goes once the output is complete

    files = storage.data_files(Location.of(str(out)))
    again = run(summarize_config(folder, out, bert2bert_dir, **RUN, rows_per_file=2))
    assert again.status == "already-complete" and "nothing written" in again.notes[0]
    assert storage.data_files(Location.of(str(out))) == files
    assert pq.read_table(out).num_rows == 21

    longer = GenerationOverrides(num_beams=1, max_length=6)
    replaced = run(summarize_config(folder, out, bert2bert_dir, **{**RUN, "generation": longer,
                                                                "replicas": Replicas(1, 1, batch_size=8)},
                                    overwrite=True))
    assert replaced.rows_written == 21
    table = pq.read_table(out)
    assert table.num_rows == 21 and max(n for n in table.column("summary_tokens").to_pylist() if n is not None) <= 5
    assert not storage.exists(staging(Location.of(str(out))))


def test_derived_ids_and_passthrough(local_ray, bert2bert_dir, tmp_path):
    folder = tmp_path / "noid"
    folder.mkdir()
    texts = [r["article"][:300] for r in articles(4)]
    for s in range(2):
        pq.write_table(pa.table({"article": texts[s * 2:(s + 1) * 2], "source": ["cnn", "dm"]}),
                       folder / f"p{s}.parquet")
    out = tmp_path / "out"
    result = run(summarize_config(folder, out, bert2bert_dir, **{**RUN, "replicas": Replicas(1, 1, batch_size=4)},
                                  passthrough_columns=("source",)))
    assert "derived id column 'row_hash'" in result.notes[0] and result.rows_out == 4
    table = pq.read_table(out)
    assert table.schema.field("row_hash").type == pa.uint64() and table.column("source").to_pylist().count("cnn") == 2
    assert len(set(table.column("row_hash").to_pylist())) == 4


def test_num_return_sequences_writes_one_row_per_sequence_with_its_rank(local_ray, corpus, tiny_model, tmp_path):
    folder, rows = corpus
    gen = GenerationOverrides(num_beams=3, num_return_sequences=2, max_length=10)
    result = run(summarize_config(folder, tmp_path / "out", tiny_model, **{**RUN, "generation": gen},
                                  rows_per_file=4))
    assert (result.rows_in, result.rows_out, result.failed_by_reason) == (21, 21, {ERR_NULL: 1, ERR_EMPTY: 2})
    table = pq.read_table(tmp_path / "out").sort_by([("id", "ascending"), ("rank", "ascending")])
    assert table.num_rows == 42 and table.column("rank").to_pylist() == [0, 1] * 21
    got = table.to_pylist()
    assert [r["id"] for r in got] == [i for i in [*range(18), 100, 101, 102] for _ in range(2)]
    assert [r["error"] for r in got[36:]] == [ERR_NULL] * 2 + [ERR_EMPTY] * 4
    want = pipeline("summarization", model=tiny_model)([r["article"] for r in rows], max_input_tokens=MAX_TOKENS,
                                                        **gen.as_kwargs())
    assert [r["summary"] for r in got[:36]] == [w["summary_text"] for items in want for w in items]
