"""Distributed fine-tuning on Ray Train: the driver (checks, datasets, TorchTrainer, export of the best checkpoint).

The per-worker loop lives in train_loop.py. Checkpoints are HF model folders plus plain-tensor training state,
kept under `run_dir` (default `<output>.checkpoints`); re-running with the same output resumes from there.
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Callable
from dataclasses import dataclass

import ray.data
import ray.train
from ray.data import ExecutionOptions
from ray.train.torch import TorchTrainer

from ..io.storage import Location, arrow_fs
from .checkpoints import is_state_file
from .config import FinetuneConfig
from .data import SplitStats, TokenizePairs, inspect_split, load_pair_tokenizers, pairs_dataset
from .loop import train_loop

log = logging.getLogger(__name__)


@dataclass
class FinetuneResult:
    output_url: str
    best_step: int
    best_metrics: dict
    steps: int
    train: SplitStats
    eval: SplitStats


def plan_steps(cfg: FinetuneConfig, train: SplitStats) -> tuple[int, int]:
    """(optimizer steps per epoch, total steps); an error when the usable rows cannot fill one step."""
    per_step = cfg.batch_size * cfg.grad_accum * cfg.num_workers
    # Ray's equal split gives every worker floor(usable / workers) rows; the last partial batch is dropped
    steps_per_epoch = (train.usable // cfg.num_workers // cfg.batch_size) // cfg.grad_accum
    if steps_per_epoch == 0:
        raise ValueError(
            f"{train.url}: {train.usable} usable rows ({train.empty} with an empty article or summary skipped), "
            f"fewer than one optimizer step needs (batch_size {cfg.batch_size} x grad_accum {cfg.grad_accum} "
            f"x num_workers {cfg.num_workers} = {per_step})")
    return steps_per_epoch, cfg.max_steps or cfg.epochs * steps_per_epoch


def run_finetune(cfg: FinetuneConfig) -> FinetuneResult:
    """Check the inputs, train with DDP on cfg.num_workers Ray Train workers, export the best checkpoint."""
    train_stats = inspect_split(cfg.train_url, cfg.text_column, cfg.summary_column, cfg.storage_options)
    eval_stats = inspect_split(cfg.eval_url, cfg.text_column, cfg.summary_column, cfg.storage_options)
    for stats in (train_stats, eval_stats):
        if stats.empty:
            log.warning("%s: skipping %d of %d rows with an empty article or summary", stats.url, stats.empty,
                        stats.rows)
    if eval_stats.usable == 0:
        raise ValueError(f"{cfg.eval_url}: no usable rows ({eval_stats.empty} empty of {eval_stats.rows})")
    steps_per_epoch, total_steps = plan_steps(cfg, train_stats)
    log.info("training %d steps (%d per epoch) on %d workers", total_steps, steps_per_epoch, cfg.num_workers)

    columns = dict(text_column=cfg.text_column, summary_column=cfg.summary_column,
                   storage_options=cfg.storage_options)
    train_ds = pairs_dataset(cfg.train_url, **columns)
    tok, decoder_tok = load_pair_tokenizers(cfg.tokenizer_url, cfg.decoder_tokenizer_url, cfg.storage_options)
    tokenize = TokenizePairs(tok, cfg.text_column, cfg.summary_column, cfg.max_source_tokens, cfg.max_target_tokens,
                             keep_reference=True, decoder_tokenizer=decoder_tok)
    eval_pairs = pairs_dataset(cfg.eval_url, **columns).limit(cfg.eval_rows).take_batch(cfg.eval_rows,
                                                                                          batch_format="numpy")
    tokenized = tokenize(eval_pairs)
    eval_rows = [dict(zip(tokenized, values, strict=True)) for values in zip(*tokenized.values(), strict=True)]

    loop_config = {"cfg": cfg, "total_steps": total_steps, "eval_rows": eval_rows}
    result = make_trainer(cfg, train_loop, loop_config, train_ds).fit()
    if not result.best_checkpoints:
        raise RuntimeError(f"{cfg.run_dir}: training finished without a checkpoint")
    sign = 1 if cfg.best_metric == "rouge2" else -1
    # ties (say ROUGE-2 still 0 early on) go to the lower eval loss
    best, metrics = max(result.best_checkpoints,
                        key=lambda cm: (sign * cm[1][cfg.score_attribute], -cm[1]["eval_loss"]))
    export_checkpoint(best, cfg.output_url, cfg.storage_options)
    return FinetuneResult(cfg.output_url, int(metrics["step"]), metrics, total_steps, train_stats, eval_stats)


def make_trainer(cfg: FinetuneConfig, loop: Callable[[dict], None], loop_config: dict,
                 train_ds: ray.data.Dataset) -> TorchTrainer:
    """TorchTrainer with cfg's scaling, storage, failure and checkpoint policy and a deterministic data split."""
    run_dir = Location.of(cfg.run_dir, cfg.storage_options)
    storage_path, name = posixpath.split(run_dir.path)
    return TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path, storage_filesystem=arrow_fs(run_dir),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.keep_checkpoints, checkpoint_score_attribute=cfg.score_attribute,
                checkpoint_score_order="max" if cfg.best_metric == "rouge2" else "min"),
        ),
        datasets={"train": train_ds},
        # preserve_order makes the split deterministic: the same rows reach the same worker in the same order
        dataset_config=ray.train.DataConfig(execution_options=ExecutionOptions(preserve_order=True)),
    )


def export_checkpoint(checkpoint: ray.train.Checkpoint, output_url: str, storage_options: dict | None = None) -> None:
    """Copy the HF model folder of a checkpoint (not its training state) to output_url, config.json last."""
    output = Location.of(output_url, storage_options)
    fs, root = output.fresh_fs(), output.path
    fs.makedirs(root, exist_ok=True)
    with checkpoint.as_directory() as local:
        names = [os.path.relpath(os.path.join(folder, n), local) for folder, _, files in os.walk(local) for n in files
                 if not is_state_file(n)]
        for name in sorted(names, key=lambda n: n == "config.json"):
            target = posixpath.join(root, *name.split(os.sep))
            fs.makedirs(posixpath.dirname(target), exist_ok=True)
            fs.put_file(os.path.join(local, name), target)


