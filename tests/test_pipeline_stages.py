"""The row stages without a cluster: every bad row kind gets its error or flag, the rest is summarized."""

from __future__ import annotations

import pathlib

import pyarrow as pa
import pytest
import torch

from model import EncoderDecoderModel, Tokenizer
from pipeline.batch.replica import Summarizer
from pipeline.batch.text import ERR_EMPTY, ERR_NOT_STRING, ERR_NULL, ERR_UTF8, tokenize

DATA = pathlib.Path(__file__).resolve().parent.parent / "data" / "cnndm_200.jsonl"
GEN = {"num_beams": 2, "max_length": 16}




@pytest.fixture(scope="module")
def tok(minilm_dir) -> Tokenizer:
    return Tokenizer.from_pretrained(minilm_dir)


def test_tokenize_flags_every_bad_row_kind(tok, texts):
    short = "The cat sat on the mat. It was warm."
    column = [short, None, "", "   \n\t ", "Stray \x00 null\x07 and bell.", texts[0] * 20, "\x01\x02"]
    batch = pa.table({"id": pa.array([10, 11, 12, 13, 14, 15, 16], pa.int64()), "article": column})
    out = tokenize(batch, tok, "article", max_input_tokens=64)
    assert out.column_names == ["id", "input_ids", "input_tokens", "truncated", "cleaned", "error"]
    rows = {r["id"]: r for r in out.to_pylist()}
    assert rows[10]["error"] is None and rows[10]["input_ids"] == tok.encode_batch([short])[0]
    assert rows[10]["truncated"] is False and rows[10]["input_tokens"] == len(rows[10]["input_ids"])
    assert [rows[i]["error"] for i in (11, 12, 13, 16)] == [ERR_NULL, ERR_EMPTY, ERR_EMPTY, ERR_EMPTY]
    assert rows[16]["cleaned"] is True and rows[16]["input_ids"] is None
    assert rows[14]["error"] is None and rows[14]["cleaned"] is True
    assert rows[14]["input_ids"] == tok.encode_batch(["Stray   null  and bell."])[0]
    long = rows[15]
    assert long["truncated"] is True and long["input_tokens"] == 64 and long["error"] is None
    assert long["input_ids"] == tok.encode_batch([texts[0]], max_length=64)[0]


def test_tokenize_exact_fit_is_not_truncated(tok):
    text = "one two three four five six"
    n = len(tok.encode_batch([text])[0])
    out = tokenize(pa.table({"id": ["a"], "article": [text]}), tok, "article", max_input_tokens=n).to_pylist()[0]
    assert out["truncated"] is False and out["input_tokens"] == n


def test_tokenize_non_string_and_invalid_utf8_columns(tok):
    ints = tokenize(pa.table({"id": ["a", "b"], "article": pa.array([1, 2], pa.int64())}), tok, "article", 64)
    assert ints.column("error").to_pylist() == [f"{ERR_NOT_STRING} (int64)"] * 2
    raw = pa.array([b"\xff\xfe bad bytes", b"fine text here", None], pa.binary())
    out = tokenize(pa.table({"id": ["a", "b", "c"], "article": raw}), tok, "article", 64).to_pylist()
    assert [r["error"] for r in out] == [ERR_UTF8, None, ERR_NULL]
    assert out[1]["input_ids"] == tok.encode_batch(["fine text here"])[0]


def test_summarizer_matches_direct_generate_and_passes_errors_through(bert2bert_dir, tok, texts):
    batch = pa.table({"id": ["a", "b", "c", "d"], "article": [texts[0], None, texts[1], texts[2][:300]]})
    tokenized = tokenize(batch, tok, "article", max_input_tokens=128)
    out = Summarizer(str(bert2bert_dir), GEN).summarize(tokenized)
    assert out.column_names == ["id", "summary", "error", "input_tokens", "truncated", "cleaned",
                                "summary_tokens", "score", "replica"]
    rows = out.to_pylist()
    assert rows[1]["summary"] is None and rows[1]["error"] == ERR_NULL and rows[1]["summary_tokens"] is None
    assert rows[1]["score"] is None and out.schema.field("score").type == pa.float64()
    model = EncoderDecoderModel.from_pretrained(bert2bert_dir)
    for row, text in zip(rows, [texts[0], None, texts[1], texts[2][:300]], strict=True):
        if text is None:
            continue
        enc = tok([text], max_length=128)
        with torch.inference_mode():
            ids, score = model.generate(enc["input_ids"], enc["attention_mask"], return_scores=True, **GEN)
        assert row["score"] == pytest.approx(float(score[0]), abs=1e-4)  # beams: the length-penalised score
        assert row["summary"] == tok.batch_decode(ids, skip_special_tokens=True)[0]
        special = set(tok.all_special_ids)
        assert row["summary_tokens"] == sum(1 for t in ids[0].tolist() if t not in special)


def test_compiled_summarizer_gives_the_same_summaries(bert2bert_dir, tok, texts, monkeypatch):
    """--compile: dynamo traces the static step (Inductor's code generation swapped for a counting backend, to
    keep the test fast) and the summaries do not change."""
    graphs, compile_ = [], torch.compile

    def counting(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    monkeypatch.setattr(torch, "compile", lambda f, mode=None, **kw: compile_(f, backend=counting, **kw))
    tokenized = tokenize(pa.table({"id": ["a", "b", "c"], "article": [a[:400] for a in texts]}), tok, "article",
                         max_input_tokens=64)
    torch._dynamo.reset()
    compiled = Summarizer(str(bert2bert_dir), GEN, compile=True).summarize(tokenized)
    torch._dynamo.reset()
    assert graphs and compiled.column("summary") == Summarizer(str(bert2bert_dir), GEN).summarize(tokenized).column(
        "summary")
