"""The Ray Train loop each worker runs: DDP, accumulation, mixed precision, evaluation, checkpoint and resume
(what a checkpoint holds: `checkpoints`).
"""

from __future__ import annotations

import contextlib
import os
import time

import ray.train
import ray.train.torch
import torch

from model import EncoderDecoderModel, check_vocabularies

from ..io.storage import client_options
from .checkpoints import TRAIN_STATE, MetricsLog, latest_checkpoint, report_checkpoint, set_rng
from .config import FinetuneConfig
from .data import PairBatches, TokenizePairs, load_pair_tokenizers
from .evaluate import evaluate


def linear_schedule(warmup_steps: int, total_steps: int):
    """LR factor: 0 -> 1 over warmup_steps, then 1 -> 0 at total_steps (transformers' linear schedule)."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return factor


def build_model(cfg: FinetuneConfig, checkpoint_dir: str | None) -> EncoderDecoderModel:
    if checkpoint_dir is not None:
        return EncoderDecoderModel.from_pretrained(checkpoint_dir)
    if cfg.init_url is not None:
        return EncoderDecoderModel.from_pretrained(cfg.init_url,
                                                   storage_options=client_options(cfg.init_url, cfg.storage_options))
    torch.manual_seed(cfg.seed)  # the fresh cross-attention weights
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(cfg.encoder_url, cfg.decoder_url,
                                                                storage_options=client_options(cfg.encoder_url,
                                                                                               cfg.storage_options))
    model.generation_config = model.generation_config.updated(
        num_beams=cfg.eval_beams, max_length=cfg.max_target_tokens + 1, no_repeat_ngram_size=3, early_stopping=True)
    return model


def make_optimizer(model: torch.nn.Module, cfg: FinetuneConfig) -> torch.optim.AdamW:
    """AdamW; biases and LayerNorm weights get no weight decay."""
    decay, no_decay = [], []
    for p in filter(lambda p: p.requires_grad, model.parameters()):
        (no_decay if p.ndim < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr)


def train_loop(loop_config: dict) -> None:
    cfg: FinetuneConfig = loop_config["cfg"]
    total_steps: int = loop_config["total_steps"]
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    tok, decoder_tok = load_pair_tokenizers(cfg.tokenizer_url, cfg.decoder_tokenizer_url, cfg.storage_options)

    checkpoint = latest_checkpoint(cfg)
    with checkpoint.as_directory() if checkpoint else contextlib.nullcontext() as ckpt_dir:
        model = build_model(cfg, ckpt_dir)
        check_vocabularies(model.config, tok, decoder_tok)
        unwrapped = model.train()
        model = ray.train.torch.prepare_model(model)
        optimizer = make_optimizer(unwrapped, cfg)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(cfg.warmup_steps, total_steps))
        state = {"step": 0, "epoch": 0, "position": 0}
        torch.manual_seed(cfg.seed + rank)
        if ckpt_dir is not None:
            saved = torch.load(os.path.join(ckpt_dir, TRAIN_STATE), weights_only=True)
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            state = {k: int(saved[k]) for k in state}
            rng_file = os.path.join(ckpt_dir, f"rank_{rank}.pt")
            if os.path.exists(rng_file):
                set_rng(torch.load(rng_file, weights_only=True))
    resumed = ckpt_dir is not None
    metrics_log = MetricsLog(cfg.run_dir, state["step"], cfg.storage_options) if rank == 0 else None
    if metrics_log is not None and resumed:
        metrics_log.append({**state, "event": "resumed"})

    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.precision]
    scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
    shard = ray.train.get_dataset_shard("train")
    tokenize = TokenizePairs(tok, cfg.text_column, cfg.summary_column, cfg.max_source_tokens, cfg.max_target_tokens,
                             decoder_tokenizer=decoder_tok)
    pairs = PairBatches(tokenize, tok.pad_token_id, cfg.batch_size, cfg.shuffle_buffer, cfg.seed, device)
    step, epoch = state["step"], state["epoch"]
    skip = state["position"]  # resuming: the micro-batches of this epoch trained on before the checkpoint
    window_loss, window_tokens, window_start = 0.0, 0, time.perf_counter()
    while step < total_steps:
        optimizer.zero_grad(set_to_none=True)
        for i, batch in pairs.batches(shard, epoch, skip):
            sync = (i + 1) % cfg.grad_accum == 0
            with (contextlib.nullcontext() if sync else model.no_sync()), _autocast(device, dtype):
                loss = model(**batch).loss
            ((scaler.scale(loss) if scaler else loss) / cfg.grad_accum).backward()
            window_loss += float(loss.detach()) / cfg.grad_accum
            window_tokens += int(batch["attention_mask"].sum() + (batch["labels"] != -100).sum())
            if not sync:
                continue
            if scaler:
                scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if cfg.fault_injection_step == step and rank == 1 and not resumed:
                os._exit(1)
            done = step >= total_steps
            record = {"step": step, "epoch": epoch, "position": i + 1}
            if step % cfg.log_every == 0 or done:
                elapsed = time.perf_counter() - window_start
                n = cfg.log_every if step % cfg.log_every == 0 else step % cfg.log_every
                record.update(loss=window_loss / n, lr=scheduler.get_last_lr()[0],
                              tokens_per_s=window_tokens * ray.train.get_context().get_world_size() / elapsed)
                window_loss, window_tokens, window_start = 0.0, 0, time.perf_counter()
            if step % cfg.eval_every == 0 or done:
                if rank == 0:
                    record.update(evaluate(unwrapped, tok, decoder_tok, loop_config["eval_rows"], cfg.batch_size,
                                           cfg.rouge_samples, cfg.eval_beams, cfg.max_target_tokens + 1, device))
                    window_start = time.perf_counter()
            if metrics_log is not None and len(record) > len(state):
                metrics_log.append(record)
            if step % cfg.checkpoint_every == 0 or done:
                report_checkpoint(record, unwrapped, (tok, decoder_tok), optimizer, scheduler, rank)
            elif step % cfg.eval_every == 0:
                ray.train.report(record)
            if done:
                break
        else:
            epoch, skip = epoch + 1, 0
            continue
        break


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
