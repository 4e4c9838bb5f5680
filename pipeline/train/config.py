"""The typed configuration of a fine-tuning run."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..io.storage import absolute


@dataclass
class FinetuneConfig:
    """Everything a fine-tuning run needs; validated before any cluster work starts."""

    train_url: str  # Parquet file or folder of (text, summary) pairs
    eval_url: str
    output_url: str  # where the best checkpoint is exported, HF layout
    encoder_url: str | None = None  # warm start: two BERT checkpoints ...
    decoder_url: str | None = None
    init_url: str | None = None  # ... or continue from an encoder-decoder checkpoint
    run_dir: str | None = None  # checkpoints and metrics.jsonl; default <output>.checkpoints
    text_column: str = "article"
    summary_column: str = "highlights"
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    epochs: int | None = None  # exactly one of epochs and max_steps
    max_steps: int | None = None
    batch_size: int = 8  # rows per worker per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 5e-5
    warmup_steps: int = 0
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    max_source_tokens: int = 512
    max_target_tokens: int = 128
    precision: str = "fp32"  # fp32, bf16 (autocast) or fp16 (autocast + loss scaling, GPU only)
    eval_every: int = 500  # optimizer steps
    checkpoint_every: int = 500  # a multiple of eval_every
    keep_checkpoints: int = 2  # best ones kept, plus always the latest
    best_metric: str = "rouge2"  # or "loss": which eval metric picks the exported checkpoint
    eval_rows: int = 256  # eval loss over the first eval_rows usable eval pairs ...
    rouge_samples: int = 32  # ... and ROUGE of beam-search summaries of the first rouge_samples of them
    eval_beams: int = 4
    shuffle_buffer: int = 256  # rows in each worker's local shuffle buffer, reseeded every epoch
    log_every: int = 10
    max_failures: int = 3  # worker-group restarts from the last checkpoint before the run fails
    seed: int = 0
    storage_options: dict = field(default_factory=dict)  # fsspec options for data, run dir and output
    fault_injection_step: int | None = None  # test hook: rank 1 exits at this step once (in a run not resumed)

    def __post_init__(self) -> None:
        if (self.init_url is None) == (self.encoder_url is None and self.decoder_url is None):
            raise ValueError("give either init_url, or encoder_url and decoder_url")
        if self.init_url is None and (self.encoder_url is None or self.decoder_url is None):
            raise ValueError("warm start needs both encoder_url and decoder_url")
        if (self.epochs is None) == (self.max_steps is None):
            raise ValueError("give exactly one of epochs and max_steps")
        for name in ("num_workers", "batch_size", "grad_accum", "eval_every", "checkpoint_every",
                     "keep_checkpoints", "max_source_tokens", "max_target_tokens", "eval_rows", "eval_beams",
                     "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if (self.epochs or self.max_steps or 1) < 1:
            raise ValueError("epochs and max_steps must be at least 1")
        if self.checkpoint_every % self.eval_every:
            raise ValueError(f"checkpoint_every ({self.checkpoint_every}) must be a multiple of eval_every "
                             f"({self.eval_every}): every checkpoint is scored by its evaluation")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, got {self.precision!r}")
        if self.precision == "fp16" and not self.use_gpu:
            raise ValueError("fp16 needs use_gpu (on CPU use bf16 or fp32)")
        if self.best_metric not in ("rouge2", "loss"):
            raise ValueError(f"best_metric must be rouge2 or loss, got {self.best_metric!r}")
        if self.best_metric == "rouge2" and self.rouge_samples < 1:
            raise ValueError("best_metric rouge2 needs rouge_samples >= 1")
        for name in ("train_url", "eval_url", "output_url", "encoder_url", "decoder_url", "init_url", "run_dir"):
            if getattr(self, name) is not None:
                setattr(self, name, absolute(getattr(self, name)).rstrip("/"))
        self.run_dir = self.run_dir or self.output_url + ".checkpoints"

    @property
    def tokenizer_url(self) -> str:
        """Where the encoder's tokenizer is (the decoder's: decoder_tokenizer_url)."""
        return self.init_url or self.encoder_url

    @property
    def decoder_tokenizer_url(self) -> str:
        return self.init_url or self.decoder_url

    @property
    def score_attribute(self) -> str:
        return "eval_rouge2" if self.best_metric == "rouge2" else "eval_loss"
