"""The installed command (`b2b`, from `pip install .`): its local `generate` and the job subcommands."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from model import pipeline
from tests.helpers import ROOT, articles, random_roberta2roberta

B2B = os.path.join(os.path.dirname(sys.executable), "b2b")
GEN = ["--num-beams", "2", "--max-length", "20"]
NEWLINE = 50118  # "Ċ" in roberta-base's vocabulary


def b2b(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([B2B, *args], input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_piped_text_prints_what_the_pipeline_gives(tiny_model):
    texts = [r["article"][:400].replace("\n", " ") for r in articles(3)]
    done = b2b("generate", "--model", str(tiny_model), *GEN, stdin="\n".join(texts) + "\n")
    assert done.returncode == 0, done.stderr
    want = pipeline("summarization", model=tiny_model)(texts, num_beams=2, max_length=20)
    assert done.stdout.splitlines() == [w["summary_text"] for w in want]


def test_jsonl_and_parquet_inputs_keep_their_ids(tiny_model, tmp_path):
    rows = [{"id": f"doc-{i}", "body": r["article"][:300]} for i, r in enumerate(articles(4))]
    want = pipeline("summarization", model=tiny_model)([r["body"] for r in rows], num_beams=2, max_length=20,
                                                       return_scores=True)
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    for name in ("in.jsonl", "in.parquet"):
        out = tmp_path / f"{name}.out"
        done = b2b("generate", str(tmp_path / name), "--model", str(tiny_model), "--text-column", "body",
                   "--output", str(out), *GEN)
        assert done.returncode == 0, done.stderr
        got = [json.loads(line) for line in out.read_text().splitlines()]
        assert got == [{"id": r["id"], **w} for r, w in zip(rows, want, strict=True)]


def test_bad_input_exits_non_zero_with_one_line_naming_it(tiny_model, tmp_path):
    (tmp_path / "in.jsonl").write_text(json.dumps({"id": 1, "article": "text"}) + "\n")
    cases = [
        (("generate", "--model", str(tmp_path / "missing")), "x\n", "missing"),
        (("generate", str(tmp_path / "in.jsonl"), "--model", str(tiny_model), "--text-column", "body"), None,
         "column 'body' is not in"),
        (("generate", "--model", str(tiny_model)), "", "no texts in standard input"),
        (("generate", str(tmp_path / "nope.txt"), "--model", str(tiny_model)), None, "no input file"),
    ]
    for args, stdin, message in cases:
        done = b2b(*args, stdin=stdin)
        assert done.returncode != 0 and message in done.stderr, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_every_subcommand_has_help_and_unknown_ones_are_refused():
    for command in ("generate", "summarize", "nightly", "finetune", "convert"):
        done = b2b(command, "--help")
        assert done.returncode == 0 and "usage:" in done.stdout and "--" in done.stdout, command
    assert "b2b generate" in b2b("generate", "--help").stdout
    top = b2b("--help")
    assert top.returncode == 0 and all(c in top.stdout for c in ("generate", "summarize", "convert"))
    wrong = b2b("summarise")
    assert wrong.returncode == 2 and "unknown command 'summarise'" in wrong.stderr
    assert pathlib.Path(B2B).exists()


def test_generation_config_and_flags_reach_generate(tiny_model, tmp_path):
    texts = [r["article"][:300].replace("\n", " ") for r in articles(3)]
    settings = {"num_beams": 3, "max_length": 12, "repetition_penalty": 1.3, "no_repeat_ngram_size": 2,
                "transformers_version": "5.24.0", "_from_model_config": False}
    (tmp_path / "generation_config.json").write_text(json.dumps(settings))
    done = b2b("generate", "--model", str(tiny_model), "--generation-config", str(tmp_path / "generation_config.json"),
               "--num-beams", "2", stdin="\n".join(texts))  # the flag wins over the file
    assert done.returncode == 0, done.stderr
    want = pipeline("summarization", model=tiny_model)(texts, num_beams=2, max_length=12, repetition_penalty=1.3,
                                                       no_repeat_ngram_size=2)
    assert done.stdout.splitlines() == [w["summary_text"] for w in want]
    sample = ["--do-sample", "--top-k", "5", "--temperature", "0.8", "--seed", "7", "--max-new-tokens", "6"]
    runs = [b2b("generate", "--model", str(tiny_model), *sample, stdin="\n".join(texts)) for _ in range(2)]
    drawn = pipeline("summarization", model=tiny_model)(texts, do_sample=True, top_k=5, temperature=0.8, seed=7,
                                                        max_new_tokens=6)
    assert runs[0].stdout == runs[1].stdout and runs[0].stdout.splitlines() == [d["summary_text"] for d in drawn]
    wrong = b2b("generate", "--model", str(tiny_model), "--generation-config", '{"num_beam": 2}', stdin="x")
    assert wrong.returncode == 2 and "unknown generation setting(s) num_beam" in wrong.stderr


def test_num_return_sequences_writes_each_with_its_rank(tiny_model, tmp_path):
    rows = [{"id": f"doc-{i}", "text": r["article"][:300]} for i, r in enumerate(articles(2))]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = b2b("generate", str(tmp_path / "in.jsonl"), "--model", str(tiny_model), "--num-beams", "3",
               "--num-return-sequences", "2", "--max-length", "12")
    assert done.returncode == 0, done.stderr
    want = pipeline("summarization", model=tiny_model)([r["text"] for r in rows], num_beams=3,
                                                       num_return_sequences=2, max_length=12, return_scores=True)
    assert [json.loads(line) for line in done.stdout.splitlines()] == [
        {"id": r["id"], "rank": k, **w} for r, items in zip(rows, want, strict=True) for k, w in enumerate(items)]


def test_text_output_has_one_line_per_input_line_blank_or_not(tiny_model, tmp_path):
    texts = ["A normal sentence about the weather.", "", "Another sentence, about trains.", "   "]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    done = b2b("generate", str(tmp_path / "in.txt"), "--model", str(tiny_model), *GEN)
    assert done.returncode == 0, done.stderr
    want = pipeline("summarization", model=tiny_model)([texts[0], texts[2]], num_beams=2, max_length=20)
    assert done.stdout.split("\n") == [want[0]["summary_text"], "", want[1]["summary_text"], "", ""]
    as_json = b2b("generate", "--model", str(tiny_model), "--format", "jsonl", *GEN, stdin="\n".join(texts))
    lines = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [line.get("error") for line in lines] == [None, "empty text", None, "empty text"]
    assert [line["score"] is None for line in lines] == [False, True, False, True]  # the model's, null on error
    assert "score" in b2b("generate", "--help").stdout and "score" not in done.stdout


@pytest.mark.parametrize("flag", ["--batch-size", "--max-batch-tokens"])
def test_caps_of_zero_are_refused_by_the_parser(tiny_model, flag):
    done = b2b("generate", "--model", str(tiny_model), flag, "0", "--batching", "calls", stdin="A sentence.\n")
    assert done.returncode == 2 and f"argument {flag}: must be >= 1, got 0" in done.stderr


def test_newlines_inside_an_output_do_not_break_one_line_per_input(tmp_path):
    folder = random_roberta2roberta(tmp_path / "roberta2roberta")
    texts = ["A normal sentence about the weather.", "Another sentence, about trains."]
    gen = ["--forced-bos-token-id", str(NEWLINE), "--max-length", "5", "--batching", "calls"]
    done = b2b("generate", "--model", str(folder), *gen, stdin="\n".join(texts))
    assert done.returncode == 0, done.stderr
    want = pipeline("summarization", model=folder)(texts, forced_bos_token_id=NEWLINE, max_length=5)
    assert all(w["summary_text"].startswith("\n") for w in want)  # the forced first token is a newline
    assert done.stdout.splitlines() == [" ".join(w["summary_text"].splitlines()) for w in want]
    as_json = b2b("generate", "--model", str(folder), "--format", "jsonl", *gen, stdin="\n".join(texts))
    assert [json.loads(line)["summary_text"] for line in as_json.stdout.splitlines()] == [
        w["summary_text"] for w in want]


def test_do_sample_can_be_switched_off_over_a_checkpoint_that_samples(tiny_model, tmp_path):
    sampling = tmp_path / "sampling.json"
    sampling.write_text(json.dumps({"do_sample": True, "top_k": 0, "max_length": 12, "num_beams": 1}))
    texts = [r["article"][:300].replace("\n", " ") for r in articles(3)]
    done = b2b("generate", "--model", str(tiny_model), "--generation-config", str(sampling), "--no-do-sample",
               stdin="\n".join(texts))
    assert done.returncode == 0, done.stderr
    want = pipeline("summarization", model=tiny_model)(texts, max_length=12)
    assert done.stdout.splitlines() == [w["summary_text"] for w in want]
