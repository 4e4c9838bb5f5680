"""Batch summarization: Parquet shards in, one summary file per unit of work out, exactly once.

`preflight` checks the job without Ray; `run` does all of it. The nightly job drives the same run in steps:
`plan_run` (one per partition), `run_planned` (one dataflow for all of them), `finish_run` (each one's marker).
`SummarizeStage` is the replica as a stage of a user's own Ray Data dataflow.
"""

from .cluster_defaults import with_cluster_defaults
from .config import DTYPES, GenerationOverrides, SummarizeConfig
from .inputs import inspect_input
from .model_check import ModelInfo, inspect_model
from .preflight import Preflighted, preflight
from .result import SummarizeResult
from .run import PlannedRun, finish_run, plan_run, run, run_planned
from .settings import generation_settings, run_settings
from .stage import SummarizeStage
from .unique_ids import check_unique

__all__ = ["DTYPES", "GenerationOverrides", "ModelInfo", "PlannedRun", "Preflighted", "SummarizeConfig",
           "SummarizeResult", "SummarizeStage", "check_unique", "finish_run", "generation_settings", "inspect_input",
           "inspect_model", "plan_run", "preflight", "run", "run_planned", "run_settings", "with_cluster_defaults"]
