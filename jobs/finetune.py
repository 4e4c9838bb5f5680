"""Distributed fine-tuning of a BERT2BERT on (article, summary) Parquet pairs with Ray Train (DDP).

    ray job submit --working-dir . -- python -m jobs.finetune \\
        --train s3://bucket/cnndm/train/ --eval s3://bucket/cnndm/validation/ --output s3://bucket/models/b2b \\
        --encoder s3://bucket/models/bert-base-uncased --decoder s3://bucket/models/bert-base-uncased \\
        --num-workers 4 --use-gpu --epochs 3 --precision bf16

Checkpoints and metrics.jsonl go to <output>.checkpoints (--run-dir); the same command run again resumes.
"""

from __future__ import annotations

import argparse
import sys

from jobs import common
from pipeline.cluster import connect
from pipeline.train import FinetuneConfig, FinetuneResult, run_finetune


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = common.job_parser("jobs.finetune", __doc__)
    p.add_argument("--train", required=True, help="training pairs: Parquet file, folder or glob (local or s3://)")
    p.add_argument("--eval", required=True, help="evaluation pairs: Parquet file, folder or glob")
    p.add_argument("--output", required=True, help="folder URL the best checkpoint is exported to (HF layout)")
    init = p.add_argument_group("model (--encoder and --decoder, or --init / --model)")
    init.add_argument("--encoder", help="BERT or RoBERTa checkpoint that warm-starts the encoder (its tokenizer "
                                        "tokenizes the articles)")
    init.add_argument("--decoder", help="BERT, RoBERTa or GPT-2 checkpoint that warm-starts the decoder (its "
                                        "tokenizer tokenizes the summaries; exported as decoder_tokenizer/ when its "
                                        "vocabulary is not the encoder's)")
    init.add_argument("--init", "--model", dest="init",
                      help="encoder-decoder or BART (BartForConditionalGeneration) checkpoint, HF layout + "
                           "tokenizers, to fine-tune or continue from")
    p.add_argument("--run-dir", help="checkpoints and metrics.jsonl (default: <output>.checkpoints)")
    p.add_argument("--text-column", default="article", help="column with the text to summarize")
    p.add_argument("--summary-column", default="highlights", help="column with the reference summary")
    s = p.add_argument_group("scaling")
    s.add_argument("--num-workers", type=int, default=1, help="Ray Train workers (DDP ranks)")
    s.add_argument("--use-gpu", action="store_true", help="one GPU per worker, NCCL (default: CPU, gloo)")
    s.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs reserved for each worker")
    s.add_argument("--max-failures", type=int, default=3, help="restarts from the last checkpoint before giving up")
    t = p.add_argument_group("optimisation")
    length = t.add_mutually_exclusive_group(required=True)
    length.add_argument("--epochs", type=int, help="passes over the training set")
    length.add_argument("--max-steps", type=int, help="optimizer steps in total")
    t.add_argument("--batch-size", type=int, default=8, help="pairs per worker per micro-batch")
    t.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    t.add_argument("--lr", type=float, default=5e-5, help="peak AdamW learning rate")
    t.add_argument("--warmup-steps", type=int, default=0, help="linear warm-up steps, then linear decay to 0")
    t.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (not on biases/LayerNorm)")
    t.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping norm")
    t.add_argument("--max-source-tokens", type=int, default=512, help="articles truncated to this many tokens")
    t.add_argument("--max-target-tokens", type=int, default=128, help="summaries truncated to this many tokens")
    t.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="bf16/fp16: autocast mixed precision (fp16 with loss scaling, GPU only)")
    t.add_argument("--shuffle-buffer", type=int, default=256, help="rows in each worker's local shuffle buffer")
    t.add_argument("--seed", type=int, default=0, help="seed for new weights, dropout and shuffling")
    e = p.add_argument_group("evaluation and checkpoints")
    e.add_argument("--eval-every", type=int, default=500, help="evaluate every N optimizer steps (and at the end)")
    e.add_argument("--checkpoint-every", type=int, default=500,
                   help="checkpoint every N steps, a multiple of --eval-every (and at the end)")
    e.add_argument("--keep-checkpoints", type=int, default=2, help="best checkpoints kept (the latest always is)")
    e.add_argument("--best-metric", choices=["rouge2", "loss"], default="rouge2",
                   help="eval metric choosing the checkpoint exported to --output")
    e.add_argument("--eval-rows", type=int, default=256, help="eval pairs for the eval loss")
    e.add_argument("--rouge-samples", type=int, default=32, help="eval pairs summarized for ROUGE (0: no ROUGE)")
    e.add_argument("--eval-beams", type=int, default=4, help="beam width of evaluation summaries")
    e.add_argument("--log-every", type=int, default=10, help="print and record the training loss every N steps")
    common.add_storage_flags(p)
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    return FinetuneConfig(
        train_url=args.train, eval_url=args.eval, output_url=args.output, encoder_url=args.encoder,
        decoder_url=args.decoder, init_url=args.init, run_dir=args.run_dir, text_column=args.text_column,
        summary_column=args.summary_column, num_workers=args.num_workers, use_gpu=args.use_gpu,
        cpus_per_worker=args.cpus_per_worker, max_failures=args.max_failures, epochs=args.epochs,
        max_steps=args.max_steps, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
        warmup_steps=args.warmup_steps, weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm,
        max_source_tokens=args.max_source_tokens, max_target_tokens=args.max_target_tokens,
        precision=args.precision, shuffle_buffer=args.shuffle_buffer, seed=args.seed, eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints,
        best_metric=args.best_metric, eval_rows=args.eval_rows, rouge_samples=args.rouge_samples,
        eval_beams=args.eval_beams, log_every=args.log_every, storage_options=args.storage_options)


def print_report(result: FinetuneResult) -> None:
    print(f"== finetune done: {result.output_url} ==")
    for stats in (result.train, result.eval):
        print(f"{stats.url}: {stats.rows} rows, {stats.empty} skipped (empty article or summary)")
    print(f"steps: {result.steps}  best step: {result.best_step}")
    print("best metrics: " + " ".join(f"{k}={v:.4g}" for k, v in result.best_metrics.items()
                                      if isinstance(v, float)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = config_from_args(args)
        common.log_config("finetune config", config)
        connect(config.num_workers, config.cpus_per_worker)
        result = run_finetune(config)
    except Exception as e:  # the job's contract: one clear line and a non-zero exit code
        return common.fail("finetune", e, args.storage_options)
    print_report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
