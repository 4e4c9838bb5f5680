"""SummarizeStage in a user's own Ray Data dataflow: the pipeline's summaries, every row once."""

from __future__ import annotations

import pyarrow as pa
import pytest
import ray
import torch

from model import pipeline
from pipeline.batch import SummarizeStage
from tests.helpers import articles

GEN = {"num_beams": 2, "max_length": 12}


def test_stage_gives_the_pipeline_summaries_for_every_row_once(local_ray, tiny_model):
    texts = [r["article"][:600] for r in articles(50)]
    items = [{"doc": i, "article": t, "source": "cnndm"} for i, t in enumerate(texts)] + [
        {"doc": 50, "article": None, "source": "cnndm"}]
    ds = ray.data.from_items(items).map_batches(
        SummarizeStage, fn_constructor_kwargs={"model": str(tiny_model), "generation": GEN}, concurrency=(1, 2),
        batch_size=8, batch_format="pyarrow")
    rows = ds.take_all()
    assert sorted(r["doc"] for r in rows) == list(range(51))
    by_doc = {r["doc"]: r for r in rows}
    want = pipeline("summarization", model=tiny_model)(texts, return_scores=True, **GEN)
    assert [by_doc[i]["summary"] for i in range(50)] == [w["summary_text"] for w in want]
    assert [by_doc[i]["score"] for i in range(50)] == pytest.approx([w["score"] for w in want], abs=1e-4)
    assert all(by_doc[i]["error"] is None and by_doc[i]["summary_tokens"] > 0 and by_doc[i]["source"] == "cnndm"
               and by_doc[i]["article"] == texts[i] for i in range(50))
    assert by_doc[50]["summary"] is None and by_doc[50]["error"] == "text is null" and by_doc[50]["score"] is None


def test_stage_names_a_missing_column(tiny_model):
    stage = SummarizeStage(str(tiny_model), text_column="body", generation=GEN)
    with pytest.raises(KeyError, match="column 'body' is not in the batch"):
        stage({"article": ["x"]})


def test_stage_repeats_each_row_once_per_returned_sequence(tiny_model):
    texts = [r["article"][:300] for r in articles(3)]
    gen = {"num_beams": 3, "num_return_sequences": 3, "max_length": 10}
    out = SummarizeStage(str(tiny_model), generation=gen)({"doc": [0, 1, 2, 3], "article": [*texts, ""]})
    assert out.column("doc").to_pylist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    assert out.column("rank").to_pylist() == [0, 1, 2] * 4
    want = pipeline("summarization", model=tiny_model)(texts, **gen)
    assert out.column("summary").to_pylist()[:9] == [w["summary_text"] for items in want for w in items]
    assert out.column("error").to_pylist()[9:] == ["text is empty or whitespace only"] * 3


def test_stage_refuses_a_batch_with_its_output_columns_before_any_work(tiny_model):
    stage = SummarizeStage(str(tiny_model), generation=GEN)
    with pytest.raises(ValueError, match=r"the batch has column\(s\) 'summary', 'error', which SummarizeStage writes "
                                         r"\(summary, error, input_tokens, summary_tokens, score, truncated\); "
                                         r"rename them"):
        stage({"article": ["a text"], "summary": ["the user's own"], "error": [None]})
    assert stage.generator.calls == 0
    out = stage({"article": ["a text"], "rank": [7]})  # rank is written only with num_return_sequences > 1
    assert out.column("rank").to_pylist() == [7] and out.column("summary_tokens").to_pylist()[0] > 0


def test_stage_runs_torch_on_the_cpus_ray_assigned_to_its_actor(local_ray, tiny_model):
    class ReportThreads(SummarizeStage):
        def __call__(self, batch):
            out = super().__call__(batch)
            return out.append_column("threads", pa.array([torch.get_num_threads()] * out.num_rows))

    # a worker environment with OMP_NUM_THREADS=1 (as Ray sets it for one CPU, or an image does): torch would
    # follow it; the stage follows the actor's num_cpus instead
    rows = ray.data.from_items([{"article": "a text"}]).map_batches(
        ReportThreads, fn_constructor_kwargs={"model": str(tiny_model), "generation": GEN}, concurrency=1,
        num_cpus=2, batch_format="pyarrow", runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}}).take_all()
    assert [r["threads"] for r in rows] == [2]
