"""The nightly job: every dated partition of a growing corpus that is new, changed or incomplete, summarized
exactly once and switched into place by its marker (docs/nightly.md)."""

from .config import NightlyConfig
from .reader import committed_files
from .report import NightlyReport, PartitionOutcome
from .run import model_info, run_nightly

__all__ = ["NightlyConfig", "NightlyReport", "PartitionOutcome", "committed_files", "model_info", "run_nightly"]
