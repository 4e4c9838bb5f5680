"""The README's Python snippets run as written on a small model: only the checkpoint folder and the corpus
URL are replaced by the test's, and the Ray Data stage asks for no GPU."""

from __future__ import annotations

import contextlib
import io
import re

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from model import Tokenizer, pipeline
from tests.helpers import ROOT, articles


def snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def run(code: str) -> tuple[dict, str]:
    namespace: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102
    return namespace, out.getvalue()


def test_the_readme_has_the_three_python_ways_in():
    found = snippets()
    assert len(found) == 3
    assert "pipeline(" in found[0] and "AutoModelForCausalLM" in found[1] and "SummarizeStage" in found[2]


def test_pipeline_snippet(tiny_model):
    namespace, printed = run(snippets()[0].replace("./b2b-cnn", str(tiny_model)))
    want = pipeline("summarization", model=tiny_model)(["First article ...", "Second article ..."], num_beams=4,
                                                       max_length=60)
    assert printed == f"{want}\n" and len(want) == 2 and all(w["summary_text"] for w in want)


def test_transformers_snippet(tiny_model):
    namespace, printed = run(snippets()[1].replace("./b2b-cnn", str(tiny_model)))
    summary, tok = namespace["summary"], Tokenizer.from_pretrained(tiny_model)
    assert namespace["model"].dtype == torch.bfloat16 and summary[0, 0] == tok.cls_token_id
    assert printed == tok.decode(summary[0], skip_special_tokens=True) + "\n"


def test_ray_data_stage_snippet(tiny_model, local_ray, tmp_path):
    texts = [r["article"][:400] for r in articles(6)]
    pq.write_table(pa.table({"id": list(range(6)), "article": texts}), tmp_path / "part-0.parquet")
    code = (snippets()[2].replace("s3://bucket/articles/", str(tmp_path)).replace("s3://bucket/models/b2b-cnn",
                                                                                     str(tiny_model))
            .replace("num_gpus=1", "num_gpus=0"))
    namespace, _ = run(code)
    rows = sorted(namespace["ds"].take_all(), key=lambda r: r["id"])
    want = pipeline("summarization", model=tiny_model)(texts, num_beams=4, max_length=64)
    assert [r["id"] for r in rows] == list(range(6))
    assert [r["summary"] for r in rows] == [w["summary_text"] for w in want]
