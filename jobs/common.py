"""Flags shared by the jobs (model and input, generation, scaling, storage), Ray start-up and the end-of-job
report."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import traceback
from typing import Any

from model import BATCHING
from pipeline.batch import DTYPES, GenerationOverrides, SummarizeConfig, SummarizeResult, with_cluster_defaults
from pipeline.cluster import DEFAULT_WORKER_WAIT_S, Replicas
from pipeline.io import secrets

# The exit code of a run that ended with every row committed but rows that ran out of device memory left to
# the next run (summarize: status "incomplete"; nightly: a partition left incomplete): run it again.
EXIT_INCOMPLETE = 3


def _early_stopping(text: str) -> bool | str:
    value = text.lower()
    if value not in ("true", "false", "never"):
        raise argparse.ArgumentTypeError(f"expected true, false or never, got {text!r}")
    return {"true": True, "false": False}.get(value, value)


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def job_parser(module: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of `python -m <module>` (or `b2b <command>`), the job's docstring (usage included) as help."""
    prog = f"b2b {module.rsplit('.', 1)[1]}" if os.path.basename(sys.argv[0]) == "b2b" else f"python -m {module}"
    return argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_decoder_tokenizer_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--decoder-tokenizer", default=None,
                        help="the decoder's tokenizer folder, for a model whose decoder has another vocabulary "
                             "(bert2gpt2) and whose folder holds only the encoder's tokenizer (default: the model "
                             "folder's decoder_tokenizer/, else the model's one tokenizer)")


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """The model and how input rows reach it; used by jobs.summarize and jobs.nightly."""
    parser.add_argument("--model", required=True, help="HF-layout encoder-decoder folder with tokenizer files")
    add_decoder_tokenizer_flag(parser)
    parser.add_argument("--text-column", default="article", help="column holding the text to summarize")
    parser.add_argument("--id-column", default=None,
                        help="unique id column (default: 'id' if present, else a derived row_hash of path + row)")
    parser.add_argument("--passthrough-columns", default="", help="comma-separated input columns to copy to output")
    parser.add_argument("--max-input-tokens", type=int, default=None,
                        help="truncate inputs to this many tokens (default: the encoder's max positions)")
    parser.add_argument("--no-special-tokens", dest="add_special_tokens", action="store_false",
                        help="tokenize the text alone, without the special tokens the checkpoint's tokenizer adds "
                             "([CLS] ... [SEP] for BERT vocabularies; BertGeneration's SentencePiece adds none), "
                             "as transformers' add_special_tokens=False")
    parser.add_argument("--dtype", default="auto", choices=DTYPES,
                        help="model weights and compute dtype (auto: bfloat16 with TF32 matmuls on a GPU, float32 "
                             "on a CPU; float32 gives transformers' float32 tokens on either)")
    parser.add_argument("--rows-per-file", type=int, default=10_000,
                        help="rows per output file, which is also the unit of work that is committed (and redone "
                             "after a crash) as a whole; a smaller shard gives one file of its own")


def summarize_config(args: argparse.Namespace, input: str, output: str, **kwargs: Any) -> SummarizeConfig:
    """A SummarizeConfig from the shared flags (add_model/generation/scaling/storage_flags)."""
    return SummarizeConfig(
        input=input, output=output, model=args.model, decoder_tokenizer=args.decoder_tokenizer,
        text_column=args.text_column, id_column=args.id_column,
        passthrough_columns=tuple(c for c in args.passthrough_columns.split(",") if c),
        max_input_tokens=args.max_input_tokens, add_special_tokens=args.add_special_tokens, dtype=args.dtype,
        generation=generation_from_args(args),
        replicas=replicas_from_args(args), storage_options=args.storage_options,
        worker_wait_s=args.wait_for_workers_s or 0.0, rows_per_file=args.rows_per_file,
        keep_oom_errors=args.keep_oom_errors, **kwargs)


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e.msg} at character {e.pos})") from None


def _generation_file(text: str) -> dict:
    """--generation-config: a generation_config.json file, or its JSON inline."""
    if os.path.isfile(text):
        with open(text, encoding="utf-8") as f:
            text = f.read()
    settings = {k: v for k, v in _json_object(text).items() if not k.startswith("_") and k != "transformers_version"}
    unknown = sorted(set(settings) - set(GenerationOverrides.names()))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown generation setting(s) {', '.join(unknown)} (known: "
                                         f"{', '.join(GenerationOverrides.names())})")
    return settings


def add_generation_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("generation (transformers' names and meanings; unset: the checkpoint's "
                                  "generation_config.json)")
    g.add_argument("--generation-config", type=_generation_file, default={},
                   help="a generation_config.json file, or its JSON inline: any of the settings below (the flags "
                        "below win over it)")
    g.add_argument("--num-beams", type=int, help="beam width (1: greedy, or sampling with --do-sample)")
    g.add_argument("--max-length", type=int, help="longest output in tokens, the decoder start token included")
    g.add_argument("--min-length", type=int, help="shortest output in tokens before EOS is allowed")
    g.add_argument("--max-new-tokens", type=int, help="longest output in generated tokens (wins over --max-length)")
    g.add_argument("--min-new-tokens", type=int, help="shortest output in generated tokens (wins over --min-length)")
    g.add_argument("--length-penalty", type=float, help="exponent on length when ranking finished beams")
    g.add_argument("--no-repeat-ngram-size", type=int, help="forbid repeating n-grams of this size (0: off)")
    g.add_argument("--early-stopping", type=_early_stopping, help="beam search stop rule: true, false or never")
    g.add_argument("--repetition-penalty", type=float, help="divide the scores of tokens already in the output "
                                                            "(CTRL's penalty; 1.0: off)")
    g.add_argument("--do-sample", action=argparse.BooleanOptionalAction, default=None,
                   help="sample instead of greedy/beam search (--no-do-sample: search, when the checkpoint's "
                        "generation config samples)")
    g.add_argument("--temperature", type=float, help="sampling: divide the logits by this")
    g.add_argument("--top-k", type=int, help="sampling: keep the k most likely tokens (0: all)")
    g.add_argument("--top-p", type=float, help="sampling: keep the smallest set of tokens whose probability "
                                               "reaches p (nucleus)")
    g.add_argument("--seed", type=int, help="sampling: seed each generate call with this (the draws still depend "
                                            "on how rows are batched)")
    g.add_argument("--num-return-sequences", type=int,
                   help="outputs per input, best first (beam search: at most --num-beams; greedy: needs "
                        "--do-sample); one output row per returned sequence, with its rank (0 the best)")
    g.add_argument("--bad-words-ids", type=_json_value, help="JSON list of token-id lists that must not be generated")
    g.add_argument("--forced-bos-token-id", type=int, help="token forced as the first generated token")
    g.add_argument("--forced-eos-token-id", type=int, help="token forced when max_length is reached")


def add_batching_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--batching", choices=BATCHING, default="auto",
                        help="how articles are batched: 'inflight' keeps a table of article places (sized by "
                             "--max-batch-tokens and --batch-size for the longest article) and refills a place "
                             "as soon as its article is done; 'calls' runs length-sorted generate calls, each to "
                             "its slowest article; 'auto' (default): inflight on a CPU (1.03x the articles/s "
                             "of calls on mixed lengths), calls on a GPU or with --compile (docs/benchmarks.md). The "
                             "same tokens either way; seeded sampling draws differ between the two")


def add_scaling_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("scaling")
    g.add_argument("--replicas", default="1", help="model replicas: N, or MIN-MAX for an autoscaling actor pool")
    g.add_argument("--gpus-per-replica", type=float, default=None,
                   help="GPUs per replica, fractional allowed (default: 1 if the cluster has GPUs or its "
                        "autoscaler can start nodes with GPUs, else 0)")
    g.add_argument("--cpus-per-replica", type=float, default=1.0,
                   help="CPUs per replica; also the replica's torch thread count on CPU")
    g.add_argument("--batch-size", type=positive_int, default=256,
                   help="most articles decoded together (per generate call, or places in flight); a replica "
                        "sorts each unit's rows by length first")
    g.add_argument("--max-batch-tokens", type=positive_int, default=Replicas.max_batch_tokens,
                   help="most input tokens x beams decoded together (an article longer than that runs alone); "
                        "a call that runs out of GPU memory is split in half and retried, down to one article, "
                        "and an article that does not fit alone gets a per-row error (retried by the next "
                        "run: see --keep-oom-errors)")
    g.add_argument("--keep-oom-errors", action="store_true",
                   help="finish with the rows that ran out of device memory even alone as per-row errors; "
                        f"default: their units are committed but the output is left without its marker (exit "
                        f"code {EXIT_INCOMPLETE}) and the next run of it summarizes them again")
    g.add_argument("--compile", action="store_true",
                   help="run the decode step under torch.compile (CUDA graphs on a GPU, one per power-of-two "
                        "batch size; the first batches pay for compiling); the same tokens as without. On an H200 it "
                        "wins only at small batches: each generate call records its graphs again (docs/benchmarks.md)")
    add_batching_flag(g)
    g.add_argument("--wait-for-workers-s", type=float, default=None,
                   help="request nodes for the replicas from the autoscaler and wait up to this long for them "
                        f"(default: {DEFAULT_WORKER_WAIT_S:g} when the cluster has an autoscaler that can start "
                        "worker nodes, else 0: no request, the job fits the pool to what is there)")
    g.add_argument("--cluster-config", default=None,
                   help="the cluster launcher YAML (e.g. cluster.yaml) whose available_node_types say what the "
                        "autoscaler can start; default: the cluster config in the GCS (v2 autoscaler, KubeRay), "
                        "else the autoscaler monitor's config on this node; the job logs which one it used")


def _json_object(text: str) -> dict:
    """A JSON object; the error never repeats the text, which may hold credentials."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e.msg} at character {e.pos})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def add_storage_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage-options", type=_json_object, default={},
                        help="fsspec options for input, output and model as JSON, e.g. "
                             '\'{"endpoint_url": "http://..."}\' (default: the standard AWS environment)')


def generation_from_args(args: argparse.Namespace) -> GenerationOverrides:
    """--generation-config, with the flags that are set over it."""
    flags = {name: v for name in GenerationOverrides.names() if (v := getattr(args, name, None)) is not None}
    return GenerationOverrides(**{**args.generation_config, **flags})


def replicas_from_args(args: argparse.Namespace) -> Replicas:
    return Replicas.parse(args.replicas, gpus=args.gpus_per_replica or 0.0, cpus=args.cpus_per_replica,
                          batch_size=args.batch_size, max_batch_tokens=args.max_batch_tokens, compile=args.compile,
                          batching=args.batching)


def cluster_defaults(config: SummarizeConfig, args: argparse.Namespace) -> SummarizeConfig:
    """The scaling flags left unset, from the cluster (pipeline.scaling), with a log line saying where from."""
    config, line = with_cluster_defaults(config, args.gpus_per_replica is not None,
                                         args.wait_for_workers_s is not None, args.cluster_config)
    print(line, flush=True)
    return config


def log_config(name: str, config: Any) -> None:
    """The resolved config, with credentials masked (job logs are kept and shown in Ray's dashboard)."""
    print(f"{name}: {secrets.redact(config)}", flush=True)


def root_cause(error: BaseException) -> BaseException:
    """The user's exception inside Ray's wrappers (RayTaskError, UserCodeException, ...)."""
    seen = set()
    while id(error) not in seen and type(error).__module__.startswith("ray."):
        seen.add(id(error))
        inner = getattr(error, "cause", None) or error.__cause__
        if inner is None:
            break
        error = inner
    return error


def fail(job: str, error: BaseException, storage_options: dict[str, Any] | None = None) -> int:
    """The job's contract on failure: the traceback to a log file, one clear line on stderr, exit code 1."""
    cause = root_cause(error)
    log = os.path.join(tempfile.gettempdir(), f"{job}-{os.getpid()}.traceback.txt")
    with open(log, "w", encoding="utf-8") as f:
        f.write(secrets.scrub("".join(traceback.format_exception(error)), storage_options))
    message = (str(cause).strip().splitlines() or [""])[0]
    print(secrets.scrub(f"{job} failed: {type(cause).__name__}: {message}", storage_options), file=sys.stderr,
          flush=True)
    print(f"(full traceback: {log})", file=sys.stderr, flush=True)
    return 1


def print_report(result: SummarizeResult, out=sys.stdout) -> None:
    p = lambda *a: print(*a, file=out)  # noqa: E731
    p(f"== summarize {result.status}: {secrets.redact_url(result.output)} ==")
    for note in result.notes:
        p(f"note: {secrets.redact_url(note)}")
    failed = sum(result.failed_by_reason.values())
    p(f"rows in: {result.rows_in}  rows out: {result.rows_out}  written by this run: {result.rows_written}")
    p(f"output files (units of work): {result.units}  written by this run: {result.units_written}")
    p(f"failed rows: {failed}" + "".join(f"\n  {n}  {reason}" for reason, n in sorted(result.failed_by_reason.items())))
    p(f"truncated inputs: {result.truncated}")
    if result.oom_splits:
        p(f"generate calls split after running out of device memory: {result.oom_splits}")
    if result.status == "already-complete":
        return
    wall = max(result.wall_s, 1e-9)
    p(f"wall time: {result.wall_s:.1f} s  rows/s: {result.rows_written / wall:.2f}  planned in {result.plan_s:.1f} s")
    p(f"replicas: {result.replicas}  generation: {result.generation}")
    nodes = sorted(set(result.node_by_replica.values()))
    if nodes:
        p(f"replicas that ran: {len(result.node_by_replica)} on {len(nodes)} node(s): {', '.join(nodes)}")
    for replica in sorted(result.rows_by_replica):
        rows, tokens = result.rows_by_replica[replica], result.tokens_by_replica[replica]
        busy, inside = result.busy_s_by_replica[replica], result.generate_s_by_replica[replica]
        p(f"  replica {replica}: {rows} rows, {rows / wall:.2f} rows/s, {tokens / wall:.1f} tokens/s (in + out), "
          f"busy {busy:.1f} s, {1 - inside / max(busy, 1e-9):.1%} of it outside generate")
    p("Ray Data per-operator stats:")
    p(result.stats)
