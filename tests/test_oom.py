"""Out of device memory in a replica, injected from outside the code (tests/faults/sitecustomize.py): calls
are split in half until they fit, an article too big alone gets a per-row error that the next run retries
(or that --keep-oom-errors keeps), nothing else changes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import weakref
from collections.abc import Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import transformers

from model import ERR_OOM, EncoderDecoderModel, TextGenerator, Tokenizer, static_decode_step
from pipeline.batch import GenerationOverrides
from pipeline.batch.replica import Summarizer
from pipeline.batch.run import run
from pipeline.cluster import Replicas
from pipeline.nightly import NightlyConfig
from pipeline.nightly.run import run_nightly
from tests.helpers import DAY1, ROOT, articles, random_bert2bert, read_output, summarize_config

MAX_TOKENS, GEN = 128, {"num_beams": 2, "max_length": 12}


@pytest.mark.parametrize("batching, keep", [("calls", False), ("inflight", True)])
def test_out_of_memory_splits_calls_and_fails_only_the_article_too_big_alone(bert2bert_dir, tmp_path, batching, keep,
                                                                             request):
    texts = [r["article"][:150 + 20 * i] for i, r in enumerate(articles(8))] + [articles(9)[8]["article"]]
    pq.write_table(pa.table({"id": list(range(9)), "article": texts}), tmp_path / "part-0.parquet")
    tok = Tokenizer.from_pretrained(bert2bert_dir)
    widths = tok(texts, max_length=MAX_TOKENS)["attention_mask"].sum(1).tolist()
    assert max(widths[:8]) < 100 and widths[8] == MAX_TOKENS  # only the last one is wider than the limit below

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "faults"), str(ROOT)]),
           "FAULT_OOM_ROWS": "4", "FAULT_OOM_WIDTH": "100"}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-m", "jobs.summarize", "--input", str(tmp_path / "part-0.parquet"),
                           "--output", str(tmp_path / "out"), "--model", str(bert2bert_dir),
                           "--max-input-tokens", str(MAX_TOKENS), "--num-beams", "2", "--max-length", "12",
                           "--batching", batching, *(["--keep-oom-errors"] if keep else [])],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == (0 if keep else 3), done.stdout[-3000:] + done.stderr[-3000:]
    # One call of 9 articles (2 decoder rows each, at most 4 rows fit): 9 -> 4 + 5, 4 -> 2 + 2, the 2 holding the
    # wide article -> 1 + 1 (it fails alone), 5 -> 2 + 3, 3 -> 1 + 2: five splits.
    assert "generate calls split after running out of device memory: 5" in done.stdout, done.stdout
    assert f"1  {ERR_OOM}" in done.stdout
    retry = "1 row(s) ran out of device memory even alone"
    assert (f"== summarize {'complete' if keep else 'incomplete'}:" in done.stdout) and (retry in done.stdout) != keep
    assert (tmp_path / "out" / "_SUCCESS.json").exists() == keep  # the row is committed; the output is complete
    # only when its error is accepted as final

    rows = sorted(pq.read_table(tmp_path / "out").to_pylist(), key=lambda r: r["id"])
    assert [r["id"] for r in rows] == list(range(9))
    assert rows[8]["error"] == ERR_OOM and rows[8]["summary"] is None
    hf = transformers.EncoderDecoderModel.from_pretrained(bert2bert_dir).eval()
    for row, text in zip(rows[:8], texts[:8], strict=True):
        enc = tok([text], max_length=MAX_TOKENS)
        with torch.no_grad():
            want = hf.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                               decoder_start_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
                               pad_token_id=tok.pad_token_id, **GEN)
        assert row["error"] is None and row["summary"] == tok.batch_decode(want, skip_special_tokens=True)[0]
    if keep:
        return
    first = {r["id"]: r["summary"] for r in rows}
    # the same run again, on a device with room: the unit with that row is summarized again and the output completes
    request.getfixturevalue("local_ray")
    config = summarize_config(tmp_path / "part-0.parquet", tmp_path / "out", bert2bert_dir, max_input_tokens=MAX_TOKENS,
                              generation=GenerationOverrides(**GEN), replicas=Replicas(batching=batching))
    again = run(config)
    assert (again.status, again.rows_written, again.failed_by_reason) == ("complete", 9, {})
    assert any("1 row(s) in 1 committed unit(s) ran out of device memory in an earlier run" in n for n in again.notes)
    marker = json.loads((tmp_path / "out" / "_SUCCESS.json").read_text())
    rows = sorted(pq.read_table(tmp_path / "out").to_pylist(), key=lambda r: r["id"])
    assert [r["id"] for r in rows] == list(range(9)) and len(marker["files"]) == 1
    assert rows[8]["error"] is None and rows[8]["summary"] and rows[8]["summary_tokens"] > 0
    assert [r["summary"] for r in rows[:8]] == [first[i] for i in range(8)]


def test_nightly_leaves_a_partition_with_rows_out_of_memory_to_the_next_night(local_ray, bert2bert_dir, tmp_path):
    corpus, output = tmp_path / "corpus", tmp_path / "summaries"
    (corpus / DAY1).mkdir(parents=True)
    texts = [articles(2)[0]["article"][:200], articles(9)[8]["article"]]  # the second is wider than FAULT_OOM_WIDTH
    pq.write_table(pa.table({"id": [0, 1], "article": texts}), corpus / DAY1 / "part-0.parquet")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "faults"), str(ROOT)]),
           "FAULT_OOM_ROWS": "4", "FAULT_OOM_WIDTH": "100"}
    env.pop("RAY_ADDRESS", None)
    night = subprocess.run([sys.executable, "-m", "jobs.nightly", "--corpus", str(corpus), "--output", str(output),
                            "--model", str(bert2bert_dir), "--max-input-tokens", str(MAX_TOKENS), "--num-beams", "2",
                            "--max-length", "12"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert night.returncode == 3, night.stdout[-3000:] + night.stderr[-3000:]
    assert f"incomplete  {DAY1}  [new] 1 row(s) ran out of device memory even alone" in night.stdout, night.stdout
    assert not (output / DAY1 / "_SUCCESS.json").exists()

    template = summarize_config(corpus, output, bert2bert_dir, max_input_tokens=MAX_TOKENS,
                                generation=GenerationOverrides(**GEN))
    report = run_nightly(NightlyConfig(corpus=str(corpus), output=str(output), summarize=template)).to_dict()
    outcome = report["partitions"][0]
    assert (outcome["action"], outcome["reason"], outcome["rows_written"]) == ("processed", "incomplete", 2)
    rows = read_output(str(output))
    assert [r["id"] for r in rows] == [0, 1] and [r["error"] for r in rows] == [None, None]


class FakeDevice:
    """Device memory with a hard limit: an allocation past it raises CUDA's out-of-memory error, and memory is
    given back only when the tensors that hold it are gone, as on a GPU."""

    def __init__(self, limit: int):
        self.limit, self.live = limit, 0

    def alloc(self, nbytes: int) -> torch.Tensor:
        if self.live + nbytes > self.limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory: {nbytes} bytes with {self.live} of "
                                              f"{self.limit} in use (fake device)")
        tensor = torch.empty(nbytes, dtype=torch.uint8)
        self.live += nbytes
        weakref.finalize(tensor, self._free, nbytes)
        return tensor

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes


def test_out_of_memory_halves_run_once_the_failed_call_is_freed(tmp_path):
    folder = random_bert2bert(tmp_path / "tiny", hidden=32, layers=1, intermediate=64)
    summarizer = Summarizer(str(folder), {"num_beams": 2, "max_length": 8})
    per_row, device, real = 1 << 20, FakeDevice(8 << 20), summarizer.model.generate

    def generate_on_device(input_ids, attention_mask, **kwargs):  # holds a cache, then needs as much again
        cache = device.alloc(input_ids.shape[0] * per_row)  # noqa: F841 (alive in this frame, as a KV cache)
        device.alloc(input_ids.shape[0] * per_row)
        return real(input_ids, attention_mask, **kwargs)

    summarizer.model.generate = generate_on_device
    tok = Tokenizer.from_pretrained(folder)
    texts = [r["article"][:200] for r in articles(8)]
    ids = tok.encode_batch(texts, 32)
    results = summarizer.generator.generate_or_split(ids)
    # 8 rows need 16 MiB of 8: the call fails holding 8 MiB; once it is freed, each half of 4 needs exactly 8
    assert summarizer.generator.oom_splits == 1 and device.live == 0
    assert [r.error for r in results] == [None] * 8
    summarizer.model.generate = real
    assert [r.text for r in results] == summarizer.generator.generate(ids)[0]


def failing_step(model, rows_fit: int, error: type[BaseException] | Callable[[str], BaseException], seen: list[int]):
    """The in-flight loop's step, failing as an allocation would above rows_fit decoder rows."""
    inner = static_decode_step(model)

    def step(tokens, memory_kv, memory_mask, cache, pos, group):
        seen.append(tokens.shape[0])
        if tokens.shape[0] > rows_fit:
            raise error(f"CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate ({tokens.shape[0]} rows)")
        return inner(tokens, memory_kv, memory_mask, cache, pos, group)
    return step


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError, RuntimeError])
def test_in_flight_split_halves_the_table_of_places_too(tiny_model, error):
    model, tok = EncoderDecoderModel.from_pretrained(tiny_model).eval(), Tokenizer.from_pretrained(tiny_model)
    rows = tok.encode_batch([r["article"][:100 + 10 * i] for i, r in enumerate(articles(40))], 48)
    settings = {"num_beams": 2, "max_length": 10}
    seen: list[int] = []
    generator = TextGenerator(model, tok, settings, batch_size=16, batching="inflight",
                              step=failing_step(model, 8, error, seen))
    got = generator(rows)
    # 16 places x 2 beams fail; each half of 20 rows then gets a table of 8 places (16 rows: fails again), and
    # each quarter of 10 rows a table of 4 places (8 rows: fits). Without halving the table, the halves kept
    # 16 places until the rows themselves were fewer: 15 splits.
    assert generator.oom_splits == 3
    assert max(seen) == 32 and max(n for n in seen if n <= 8) == 8 and sorted(set(seen))[-2] == 16
    want = TextGenerator(model, tok, settings, batch_size=16, batching="inflight")(rows)
    assert got == want and all(g.error is None for g in got)


def test_an_error_that_is_not_an_allocation_failure_propagates(tiny_model):
    model, tok = EncoderDecoderModel.from_pretrained(tiny_model).eval(), Tokenizer.from_pretrained(tiny_model)
    broken = failing_step(model, 0, lambda _: RuntimeError("CUDA error: an illegal memory access was encountered"),
                          [])
    generator = TextGenerator(model, tok, {"max_length": 6}, batching="inflight", step=broken)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        generator(tok.encode_batch(["A sentence.", "Another one."], 16))
    assert generator.oom_splits == 0


def test_sampled_sequences_count_in_the_token_budget(tiny_model):
    model, tok = EncoderDecoderModel.from_pretrained(tiny_model).eval(), Tokenizer.from_pretrained(tiny_model)
    rows = [[101] + [2000 + i] * 8 + [102] for i in range(8)]  # 10 tokens each
    settings = {"do_sample": True, "num_return_sequences": 4, "max_length": 6, "seed": 0}
    generator = TextGenerator(model, tok, settings, max_batch_tokens=80, batching="calls")
    assert len(generator(rows)) == 32
    assert generator.calls == 4  # 80 tokens hold 2 articles of 10 tokens x 4 sampled rows, not 8
