"""Fine-tuning with Ray Train (DDP): data, the per-worker loop, checkpoints and resume, evaluation, the trainer."""

from .config import FinetuneConfig
from .finetune import FinetuneResult, run_finetune

__all__ = ["FinetuneConfig", "FinetuneResult", "run_finetune"]
