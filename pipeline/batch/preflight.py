"""Preflight of a summarize run, without Ray and from listings and footers only: everything that can make the job
meaningless (input, model, settings, output) and an output made with other settings."""

from __future__ import annotations

import dataclasses
import posixpath
from dataclasses import dataclass
from typing import Any

from ..io import commit, fingerprints, storage
from ..io.storage import Location
from .config import SummarizeConfig
from .inputs import InputPlan, inspect_input
from .model_check import ModelInfo, inspect_model
from .settings import run_identity


def staging(output: Location) -> Location:
    """`s3://b/x/out` -> `s3://b/x/_staging/out`: hidden from readers of `s3://b/x/`, next to the output."""
    parent, name = posixpath.split(output.path.rstrip("/"))
    return output.at(posixpath.join(parent, "_staging", name))


@dataclass(frozen=True)
class Preflighted:
    """A config whose input, model and output passed preflight (URLs made absolute), and its output resolved."""

    config: SummarizeConfig
    plan: InputPlan
    info: ModelInfo
    output: Location


def _check_apart(config: SummarizeConfig, plan: InputPlan, output: Location) -> None:
    """The output must not be inside the input folder (the next run would read it as input), nor the reverse."""
    out, root = output.path.rstrip("/") + "/", plan.root.rstrip("/") + "/"
    if plan.input.path.rstrip("/") == plan.root and out.startswith(root):
        raise ValueError(f"output {config.output} is inside the input folder {config.input}: the next run would "
                         "read the job's own output as input; choose an output outside it")
    if any(s.path.startswith(out) for s in plan.shards[:1]) or root.startswith(out):
        raise ValueError(f"input {config.input} is inside the output folder {config.output}; choose an output "
                         "outside it")


def preflight(config: SummarizeConfig, info: ModelInfo | None = None, dtype_settled: bool = True) -> Preflighted:
    """Everything that can make the job meaningless, checked without Ray from listings and footers: shards,
    columns, id types, model, tokenizer, generation settings, output. `info` (from `inspect_model` of the same
    model and settings) skips reading the model again. `dtype_settled=False`: the replicas' GPUs are not known
    yet (left to the cluster), so "auto"'s dtype is compared only by `run`, under the output's lease."""
    decoder_tokenizer = config.decoder_tokenizer and storage.absolute(config.decoder_tokenizer)
    config = dataclasses.replace(config, input=storage.absolute(config.input), output=storage.absolute(config.output),
                                 model=storage.absolute(config.model), decoder_tokenizer=decoder_tokenizer)
    output = Location.of(config.output, config.storage_options)
    plan = inspect_input(config)
    _check_apart(config, plan, output)
    info = inspect_model(config) if info is None else info
    storage.check_writable(output)
    check_same_run(config, output, run_identity(config, plan, info), dtype_settled)
    return Preflighted(config, plan, info, output)


def check_same_run(config: SummarizeConfig, output: Location, wanted: dict[str, Any], dtype_settled: bool = True
                   ) -> None:
    """Refuse to resume or re-run into an output (`config.output`, resolved) made with other inputs or settings:
    its summaries would be mixed with this run's. Without --overwrite only. A complete staged output whose
    publish was interrupted is what the output is about to be (`run` finishes its publish first): its marker is
    the one compared. `dtype_settled=False` (the replicas' GPUs not known yet) leaves "auto"'s dtype to the
    check under the lease."""
    if config.overwrite:
        return
    staged = staging(output).child(storage.MARKER_NAME)
    complete = "is complete, made"
    records = [(staged, complete)] if storage.exists(staged) else [
        (output.child(storage.MARKER_NAME), complete), (output.child(commit.RUN_NAME), "was started by a run")]
    for at, state in records:
        record = storage.read_json(at)
        changed = fingerprints.differences(record["identity"], wanted) if record and "identity" in record else []
        changed = [c for c in changed if dtype_settled or config.dtype != "auto" or not c.startswith("dtype: ")]
        if changed:
            raise ValueError(f"output {config.output} {state} with other inputs or settings ({'; '.join(changed)}); "
                             "pass --overwrite to redo it, or choose another output")
