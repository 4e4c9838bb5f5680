"""Fine-tuning's checkpoints and metrics file: the newest complete checkpoint, reporting one, metrics.jsonl.

A checkpoint directory is an HF model folder (loadable as it is) plus the training state, all plain tensors
and numbers written with torch.save and read back with weights_only=True:
  train_state.pt   optimizer, scheduler, step, epoch, micro-batches consumed in that epoch (rank 0)
  rank_<r>.pt      that worker's RNG state
"""

from __future__ import annotations

import json
import math
import os
import posixpath
import tempfile

import ray.train
import ray.train.torch
import torch

from model import EncoderDecoderModel, Tokenizer, save_tokenizers

from ..io.storage import Location, arrow_fs
from .config import FinetuneConfig

METRICS_FILE = "metrics.jsonl"


TRAIN_STATE = "train_state.pt"


def is_state_file(name: str) -> bool:
    """Files of a checkpoint that are training state, not part of the exported model."""
    return name == TRAIN_STATE or (name.startswith("rank_") and name.endswith(".pt"))


def latest_checkpoint(cfg: FinetuneConfig) -> ray.train.Checkpoint | None:
    """The newest complete checkpoint: Ray's, or a newer one in the run dir that Ray had not registered yet.

    Ray Train's controller learns of a reported checkpoint when it next polls the workers (every 2 s); a worker
    dying in between loses it from Ray's list although it is safely stored, so the run dir is scanned as well.
    """
    run_dir = Location.of(cfg.run_dir, cfg.storage_options)
    fs, root = run_dir.fresh_fs(), run_dir.path
    stored = sorted(p for p in fs.glob(f"{root}/checkpoint_*") if fs.exists(f"{p}/{TRAIN_STATE}")
                    and fs.exists(f"{p}/config.json") and fs.exists(f"{p}/model.safetensors"))
    registered = ray.train.get_checkpoint()
    if not stored or (registered and posixpath.basename(registered.path) >= posixpath.basename(stored[-1])):
        return registered
    return ray.train.Checkpoint(stored[-1], filesystem=arrow_fs(run_dir))


def report_checkpoint(record: dict, model: EncoderDecoderModel, tokenizers: tuple[Tokenizer, Tokenizer], optimizer,
                      scheduler, rank: int) -> None:
    """The model with its encoder's and decoder's tokenizers (one folder: the HF layout), the training state and
    each rank's RNG, reported to Ray Train."""
    with tempfile.TemporaryDirectory() as tmp:
        if rank == 0:
            model.save_pretrained(tmp)
            save_tokenizers(tmp, *tokenizers)
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        **{k: torch.tensor(record[k]) for k in ("step", "epoch", "position")}},
                       os.path.join(tmp, TRAIN_STATE))
        torch.save(get_rng(), os.path.join(tmp, f"rank_{rank}.pt"))
        ray.train.report(record, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=f"checkpoint_{record['step']:07d}")


def get_rng() -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class MetricsLog:
    """metrics.jsonl beside the checkpoints, rewritten whole on each append; on resume, records after the
    checkpoint's step are dropped (they are trained again)."""

    def __init__(self, run_dir: str, resume_step: int, storage_options: dict):
        metrics = Location.of(run_dir, storage_options).child(METRICS_FILE)
        self.fs, self.path = metrics.fresh_fs(), metrics.path
        self.records: list[dict] = []
        if self.fs.exists(self.path):
            lines = self.fs.cat_file(self.path).decode().splitlines()
            self.records = [r for r in map(json.loads, lines) if r["step"] <= resume_step]

    def append(self, record: dict) -> None:
        print(" ".join(f"{k}={_fmt(v)}" for k, v in record.items()), flush=True)
        self.records.append(record)
        self.fs.makedirs(self.path.rsplit("/", 1)[0], exist_ok=True)
        self.fs.pipe_file(self.path, "".join(json.dumps(r) + "\n" for r in self.records).encode())


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) and math.isfinite(value) else str(value)
