"""The Ray Data dataflow of the summarize job, over units of work: prepare (CPU tasks) -> Summarizer actor pool
-> write (CPU tasks), streaming each committed unit's stats back to the driver.

Every stage sees whole units (one row each, its rows in the row's payload), so no stage ever holds part of a
unit; the driver receives one small stats record per unit and nothing else.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import ray
import ray.data
from ray.data import ActorPoolStrategy

from ..cluster import Replicas
from ..io import storage
from .config import SummarizeConfig
from .prepare import prepare
from .replica import Summarizer
from .settings import replica_dtype
from .write import write


def build(config: SummarizeConfig, rows: list[dict[str, Any]], replicas: Replicas, max_input_tokens: int,
          initial_replicas: int | None = None) -> ray.data.Dataset:
    """The dataflow that summarizes units (`stages.unit_rows`, of one job or several with the same model and
    settings) into each unit's file under its job's target; the pool starts with `initial_replicas` (default:
    its minimum) and grows up to its maximum while the replicas are the bottleneck."""
    opts = config.storage_options
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    # max_retries=-1 is Ray Data's default for tasks (retry on node loss). Set explicitly, it also keeps prepare
    # out of the model actors: Ray fuses a task stage into the next actor stage when their remote args are equal.
    ds = ds.map_batches(prepare, batch_size=1, batch_format="pyarrow", max_retries=-1, fn_kwargs={
        "input_url": config.input, "model_url": config.model,
        "columns": list(dict.fromkeys([config.text_column, *config.passthrough_columns])),
        "text_column": config.text_column, "max_input_tokens": max_input_tokens,
        "add_special_tokens": config.add_special_tokens, "storage_options": opts})
    ds = ds.map_batches(
        Summarizer,
        fn_constructor_kwargs={"model_url": config.model, "generation": config.generation.as_kwargs(),
                               "dtype": replica_dtype(config), "threads": max(1, int(replicas.cpus)),
                               "storage_options": storage.client_options(config.model, opts),
                               "batch_size": replicas.batch_size, "max_batch_tokens": replicas.max_batch_tokens,
                               "compile": replicas.compile, "batching": replicas.batching,
                               "decoder_tokenizer": config.decoder_tokenizer},
        # Two units per actor: the next one is queued while the current one generates.
        compute=ActorPoolStrategy(min_size=replicas.min, max_size=replicas.max, initial_size=initial_replicas,
                                  max_tasks_in_flight_per_actor=2),
        num_cpus=replicas.cpus,
        num_gpus=replicas.gpus,
        batch_size=1,
        batch_format="pyarrow",
    )
    return ds.map_batches(write, batch_size=1, batch_format="pyarrow", fn_kwargs={"storage_options": opts})


def stream(ds: ray.data.Dataset, actor_start_timeout_s: float) -> Iterator[dict[str, Any]]:
    """Run the dataflow; yields each unit's stats as soon as its file is committed."""
    # The dataset's own copy of the DataContext: no global state changes. PartitionWork starts only once the minimum
    # pool is up: every replica gets a share, and a pool the cluster cannot place fails with a timeout.
    ds.context.wait_for_min_actors_s = actor_start_timeout_s
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        yield from (json.loads(s) for s in batch.column("stats").to_pylist())
