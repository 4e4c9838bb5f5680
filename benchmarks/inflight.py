"""Workload (d): in-flight batching against the calls loop, through the replica's path (model.TextGenerator).

256 articles of mixed length (CNN/DailyMail articles and Wikipedia paragraphs, 100-512 input tokens), beam 4
with the CNN/DM recipe but min_length 20, so that outputs stop anywhere between 20 and 142 tokens. The model
is the MiniLM warm start (seeded cross-attention) with the EOS logit raised by --eos-bias, as a fine-tuned
summarizer's EOS comes at varied lengths. Both ways run in one process, alternating; prints articles/s, the
ratio, decode steps, the share of row-steps spent on live articles, and whether the outputs are identical.

    .venv/bin/python -m benchmarks.inflight --decode-policy cpu --repeats 3
    .venv/bin/python -m benchmarks.inflight --decode-policy gpu
    .venv/bin/python -m cProfile -s cumtime -m benchmarks.inflight --ways calls   # where one way's time goes
    python -m benchmarks.inflight --device cuda --dtype bf16 --model bert-base [--compile]

benchmarks/generate.py runs it as workload d (MiniLM, CPU policy on a CPU; bert-base, eager and compiled, on a
GPU).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.workloads import DTYPES, bert_base, minilm_path, minilm_warm_start, raise_eos, workload_d  # noqa: E402
from model import Tokenizer  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--articles", type=int, default=256)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    ap.add_argument("--model", choices=("minilm", "bert-base"), default="minilm",
                    help="the MiniLM warm start, or a bert-base-sized bert2bert with random weights")
    ap.add_argument("--decode-policy", choices=("cpu", "gpu"), default=None, help="default: the device's")
    ap.add_argument("--compile", action="store_true", help="the compiled decode step (both ways)")
    ap.add_argument("--eos-bias", type=float, default=None,
                    help="added to the EOS logit's bias (default: 2.5 for minilm, 1.75 for bert-base, whose outputs "
                         "then stop at 34-103 tokens in fp32)")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per way (alternating); medians reported")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ways", default="calls,inflight",
                    help="the batchings to run, comma-separated (one alone, e.g. under python -m cProfile)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.model == "minilm":
        model, tok = minilm_warm_start(2.5 if args.eos_bias is None else args.eos_bias)
    else:
        model, tok = raise_eos(bert_base(12).eval(), 1.75 if args.eos_bias is None else args.eos_bias), \
            Tokenizer.from_pretrained(minilm_path())
    model = model.to(args.device, DTYPES[args.dtype])
    workload_d(model, tok, args.decode_policy or ("gpu" if args.device == "cuda" else "cpu"), args.compile,
               args.repeats, args.articles, tuple(args.ways.split(",")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
