"""Summaries on this machine, no Ray: texts from standard input (one per line) or a .txt / .jsonl / .parquet
file, summaries as text lines or JSON lines to standard output or a file.

    echo "An article ..." | b2b generate --model ./b2b-cnn --num-beams 4 --max-length 60
    b2b generate articles.parquet --model ./b2b-cnn --text-column article --output summaries.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, TextIO

import pyarrow.json as pajson
import pyarrow.parquet as pq

from jobs import common
from model import pipeline

CHUNK = 256  # texts per pipeline call: the progress bar's step


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.job_parser("jobs.generate", __doc__)
    parser.add_argument("input", nargs="?", default="-",
                        help="a .txt (one text per line), .jsonl or .parquet file; - or nothing: standard input, one "
                             "text per line")
    parser.add_argument("--model", required=True, help="HF-layout encoder-decoder folder (or URL) with tokenizer files")
    common.add_decoder_tokenizer_flag(parser)
    parser.add_argument("--task", default="summarization",
                        choices=("summarization", "translation", "text2text-generation"),
                        help="names the output key: summary_text, translation_text or generated_text")
    parser.add_argument("--text-column", default="text", help=".jsonl / .parquet: the column holding the texts")
    parser.add_argument("--id-column", default="id",
                        help=".jsonl / .parquet: copied to each output line when the input has it")
    parser.add_argument("--output", default="-", help="file to write (default: standard output)")
    parser.add_argument("--format", choices=("auto", "text", "jsonl"), default="auto",
                        help="text: one output per line, line k for input line k (a blank input line gives a blank "
                             "line, an error 'ERROR: ...'; a newline inside an output is written as a space); "
                             "jsonl: one JSON object per "
                             "output with the id, the task's key, its score (the model's: the length-penalised "
                             "beam score, or the mean log-probability of the generated tokens for greedy search "
                             "and sampling; null with an error) and any error (and its rank, 0 the best, with "
                             "--num-return-sequences above 1: an input's outputs follow each other, best first); "
                             "auto: text for text input, jsonl for .jsonl / .parquet")
    parser.add_argument("--device", default="auto", help="auto (the GPU when there is one), cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"),
                        help="auto: bfloat16 on a GPU, float32 on a CPU (float32 gives transformers' tokens)")
    parser.add_argument("--max-input-tokens", type=int, default=None,
                        help="truncate inputs to this many tokens, at most the encoder's usable positions "
                             "(default: those positions)")
    parser.add_argument("--no-special-tokens", dest="add_special_tokens", action="store_false",
                        help="tokenize the text alone, as transformers' add_special_tokens=False")
    parser.add_argument("--batch-size", type=common.positive_int, default=64,
                        help="most texts decoded together (per generate call, or places in flight)")
    parser.add_argument("--max-batch-tokens", type=common.positive_int, default=65536,
                        help="most input tokens x beams decoded together; out of device memory, a call is split")
    common.add_batching_flag(parser)
    common.add_generation_flags(parser)
    common.add_storage_flags(parser)
    return parser.parse_args(argv)


def read_inputs(path: str, text_column: str, id_column: str) -> tuple[list[Any], list[Any] | None]:
    """The texts and, for tables that have the id column, their ids. A text input keeps its blank lines: output
    line k answers input line k."""
    if path == "-" or not path.endswith((".jsonl", ".parquet")):
        with (sys.stdin if path == "-" else open(path, encoding="utf-8")) as f:
            return f.read().splitlines(), None
    table = pq.read_table(path) if path.endswith(".parquet") else pajson.read_json(path)
    if text_column not in table.column_names:
        raise ValueError(f"column {text_column!r} is not in {path} (columns: {', '.join(table.column_names)})")
    ids = table.column(id_column).to_pylist() if id_column in table.column_names else None
    return table.column(text_column).to_pylist(), ids


def text_line(item: dict[str, Any], key: str, text: Any) -> str:
    """An output as one line of text: blank for a blank input, the error, or the output with its newlines (a
    byte-level BPE output may hold some) as spaces."""
    if isinstance(text, str) and not text.strip():
        return ""
    if item.get("error") is not None:
        return f"ERROR: {item['error']}"
    return " ".join(item[key].splitlines())


def write(out: TextIO, results: list, texts: list[Any], ids: list[Any] | None, start: int, key: str,
          fmt: str) -> None:
    """One line per output; with num_return_sequences > 1 an input's outputs follow each other, best first,
    and JSON lines carry their rank (0 the best)."""
    for i, result in enumerate(results, start):
        ranked = list(enumerate(result)) if isinstance(result, list) else [(None, result)]
        for rank, item in ranked:
            if fmt == "text":
                out.write(text_line(item, key, texts[i]) + "\n")
                continue
            line = {**({"id": ids[i]} if ids is not None else {}), **({"rank": rank} if rank is not None else {}),
                    **item}
            out.write(json.dumps(line, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.input != "-" and not os.path.exists(args.input):
            raise FileNotFoundError(f"no input file {args.input}")
        texts, ids = read_inputs(args.input, args.text_column, args.id_column)
        if not texts:
            raise ValueError(f"no texts in {'standard input' if args.input == '-' else args.input}")
        generate = pipeline(args.task, model=args.model, decoder_tokenizer=args.decoder_tokenizer,
                            device=args.device, dtype=args.dtype,
                            batch_size=args.batch_size, max_batch_tokens=args.max_batch_tokens,
                            batching=args.batching, storage_options=args.storage_options)
        settings = common.generation_from_args(args).as_kwargs()
        fmt = args.format if args.format != "auto" else "jsonl" if args.input.endswith((".jsonl", ".parquet")) \
            else "text"
        progress = sys.stderr.isatty()
        with (sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8")) as out:
            for start in range(0, len(texts), CHUNK):
                results = generate(texts[start:start + CHUNK], max_input_tokens=args.max_input_tokens,
                                   add_special_tokens=args.add_special_tokens, return_scores=fmt == "jsonl",
                                   **settings)
                write(out, results, texts, ids, start, generate.key, fmt)
                if progress:
                    print(f"\r{min(start + CHUNK, len(texts))}/{len(texts)} texts", end="", file=sys.stderr,
                          flush=True)
        if progress:
            print(file=sys.stderr)
    except (FileNotFoundError, ValueError) as e:  # bad input: one line naming the problem
        print(f"generate: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # anything else: one clear line, the traceback in a file
        return common.fail("generate", e, args.storage_options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
