"""generate against transformers (token for token up to EOS), against the slow reference, batch invariance, errors."""

from __future__ import annotations

import functools
import json
import tempfile

import pytest
import torch
import transformers

from model import EncoderDecoderModel, Tokenizer, decode_step, static_decode_step
from model.generation import POLICIES
from model.generation import calls as generation_calls
from model.generation.top_k import first_argmax, top_candidates
from tests.generation_reference import reference_beam_search
from tests.helpers import MINILM, ROOT, padded_batch

VOCAB, EOS = 60, 2
transformers.logging.set_verbosity_error()


@pytest.fixture(autouse=True, params=["cpu", "gpu"])
def decode_policy(request, monkeypatch):
    """Every test here runs under both decode policies: the CPU's, and the GPU's forced on the CPU."""
    forced = POLICIES[request.param]
    monkeypatch.setattr(generation_calls, "policy_for",
                        lambda device, override=None: POLICIES.get(override, override) or forced)
    return forced


@functools.cache
def twins(kind: str, seed: int, dec_hidden: int = 32):
    """A seeded tiny transformers model and ours with the same weights.

    initializer_range 0.5 makes the next-token distributions peaked, so float noise cannot reorder beams.
    """
    torch.manual_seed(seed)
    cls = transformers.BertConfig if kind == "bert" else transformers.BertGenerationConfig
    common = dict(vocab_size=VOCAB, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                  max_position_embeddings=64, pad_token_id=0, initializer_range=0.5)
    enc = cls(hidden_size=32, **common)
    dec = cls(hidden_size=dec_hidden, is_decoder=True, add_cross_attention=True, **common)
    config = transformers.EncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = 1, 0, EOS
    hf = transformers.EncoderDecoderModel(config).eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = EncoderDecoderModel.from_pretrained(tmp).eval()
    return hf, ours


def up_to(rows: torch.Tensor, eos: int) -> list[list[int]]:
    return [row[: row.index(eos) + 1] if eos in row else row for row in rows.tolist()]


def up_to_eos(rows: torch.Tensor) -> list[list[int]]:
    return up_to(rows, EOS)


def assert_same_as_transformers(kind: str, seed: int, lengths: list[int], dec_hidden: int = 32, **kwargs):
    hf, ours = twins(kind, seed, dec_hidden)
    ids, mask = padded_batch(VOCAB, lengths, seed)
    ours_seq, ours_scores = ours.generate(ids, mask, return_scores=True, **kwargs)
    with torch.no_grad():
        out = hf.generate(input_ids=ids, attention_mask=mask, output_scores=True, return_dict_in_generate=True,
                          **kwargs)
    assert up_to_eos(ours_seq) == up_to_eos(out.sequences)
    assert ours_seq.shape == out.sequences.shape
    if getattr(out, "sequences_scores", None) is not None:
        torch.testing.assert_close(ours_scores, out.sequences_scores, rtol=1e-4, atol=1e-4)
    return ours_seq


BEAM_CASES = [
    dict(num_beams=2, max_length=20),
    dict(num_beams=3, max_length=24, early_stopping=True, length_penalty=2.0),
    dict(num_beams=4, max_length=20, early_stopping=False, length_penalty=0.6),
    dict(num_beams=4, max_length=22, early_stopping="never", length_penalty=2.0),
    dict(num_beams=5, max_length=18, early_stopping="never", length_penalty=0.6, num_return_sequences=3),
    dict(num_beams=6, max_length=20, early_stopping=True, length_penalty=1.0, num_return_sequences=6),
    dict(num_beams=4, max_length=30, min_length=12, no_repeat_ngram_size=2),
    dict(num_beams=3, max_new_tokens=9, no_repeat_ngram_size=3, length_penalty=2.0, early_stopping=True),
    dict(num_beams=4, max_length=26, min_new_tokens=10, repetition_penalty=1.5),
    dict(num_beams=2, max_length=16, bad_words_ids=[[5], [7, 8], [EOS]], forced_bos_token_id=9),
    dict(num_beams=3, max_length=12, forced_eos_token_id=EOS, early_stopping=True),
    dict(num_beams=3, length_penalty=2.0),  # no length set: transformers' default of 20 new tokens
]


@pytest.mark.parametrize("case", range(len(BEAM_CASES)))
@pytest.mark.parametrize("kind,seed", [("bert", 0), ("gen", 1), ("bert", 2)])
def test_beam_search_matches_transformers(kind, seed, case):
    assert_same_as_transformers(kind, seed, [7, 12, 3, 9], **BEAM_CASES[case])


@pytest.mark.parametrize("kwargs", [
    dict(num_beams=1),
    dict(num_beams=1, max_new_tokens=15, min_length=8, no_repeat_ngram_size=2),
    dict(num_beams=1, max_length=20, repetition_penalty=1.3, bad_words_ids=[[4, 5]]),
])
@pytest.mark.parametrize("kind,seed", [("bert", 3), ("gen", 4)])
def test_greedy_matches_transformers(kind, seed, kwargs):
    assert_same_as_transformers(kind, seed, [5, 11, 8], **kwargs)


@pytest.mark.parametrize("seed", range(5, 13))
def test_many_seeds_and_widths(seed):
    kind = ("bert", "gen")[seed % 2]
    assert_same_as_transformers(kind, seed, [4 + seed % 5, 13, 2], dec_hidden=(32, 48)[seed % 2],
                                num_beams=1 + seed % 6, max_length=20, length_penalty=(0.6, 1.0, 2.0)[seed % 3],
                                early_stopping=(True, False, "never")[seed % 3])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kwargs", [
    dict(num_beams=3, max_length=16),
    dict(num_beams=4, max_length=20, early_stopping=True, length_penalty=2.0, min_length=6),
    dict(num_beams=2, max_length=18, early_stopping="never", length_penalty=0.6, no_repeat_ngram_size=2),
    dict(num_beams=3, max_length=14, repetition_penalty=1.4),
])
def test_fast_matches_slow_reference(seed, kwargs):
    _, ours = twins("bert", seed)
    ids, mask = padded_batch(VOCAB, [6, 10, 3], seed)
    fast = ours.generate(ids, mask, **kwargs)
    slow = reference_beam_search(ours, ids, mask, **kwargs)
    assert up_to_eos(fast) == [row[: row.index(EOS) + 1] if EOS in row else row for row in slow]


@pytest.mark.parametrize("kwargs", [dict(num_beams=4, max_length=20, no_repeat_ngram_size=2), dict(num_beams=1)])
def test_batch_invariance(kwargs):
    _, ours = twins("bert", 0)
    ids, mask = padded_batch(VOCAB, [9, 3, 14, 6, 11], 7)
    together = ours.generate(ids, mask, **kwargs)
    for budget in (1, 40, 200, None):  # one article per search, some, all
        assert up_to_eos(ours.generate(ids, mask, max_batch_tokens=budget, **kwargs)) == up_to_eos(together)
    for i in range(ids.shape[0]):
        n = int(mask[i].sum())
        alone = ours.generate(ids[i:i + 1, :n], **kwargs)
        assert up_to_eos(alone) == up_to_eos(together[i:i + 1])
        extra_pad = torch.nn.functional.pad(ids[i:i + 1, :n], (0, 7))
        padded = ours.generate(extra_pad, (extra_pad != 0).long(), **kwargs)
        assert up_to_eos(padded) == up_to_eos(alone)


def test_sampling_is_seeded_and_top_k_1_is_greedy():
    _, ours = twins("gen", 1)
    ids, mask = padded_batch(VOCAB, [6, 9], 3)
    a = ours.generate(ids, mask, do_sample=True, seed=11, max_length=20, num_return_sequences=3, top_p=0.9)
    b = ours.generate(ids, mask, do_sample=True, seed=11, max_length=20, num_return_sequences=3, top_p=0.9)
    assert torch.equal(a, b) and a.shape[0] == 6
    greedy = ours.generate(ids, mask, max_length=20)
    sampled = ours.generate(ids, mask, do_sample=True, top_k=1, seed=0, max_length=20)
    assert up_to_eos(sampled) == up_to_eos(greedy)
    beam_sample = ours.generate(ids, mask, do_sample=True, num_beams=3, seed=5, max_length=20, temperature=0.7)
    assert beam_sample.shape[0] == 2 and (beam_sample[:, 0] == 1).all()


def test_bf16_runs_and_returns_start_tokens():
    _, ours = twins("bert", 0)
    model = EncoderDecoderModel(ours.config)
    model.load_state_dict(ours.state_dict())
    model = model.to(torch.bfloat16).eval()
    ids, mask = padded_batch(VOCAB, [6, 9], 3)
    out = model.generate(ids, mask, num_beams=3, max_length=12)
    assert out.dtype == torch.long and (out[:, 0] == 1).all() and out.shape[1] <= 12



@pytest.mark.parametrize("kwargs,message", [
    (dict(num_beams=2, num_return_sequences=3), "num_return_sequences"),
    (dict(num_return_sequences=2), "greedy"),
    (dict(max_length=1), "max_length"),
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(min_length=-2), "min_length"),
    (dict(num_beams=0), "num_beams"),
    (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size"),
    (dict(max_length=None, eos_token_id=None), "never stops"),
    (dict(max_length=500), "max_position_embeddings"),
    (dict(early_stopping="sometimes"), "early_stopping"),
    (dict(do_sample=True, temperature=0.0), "temperature"),
    (dict(decoder_start_token_id=None), "decoder_start_token_id"),
])
def test_bad_settings_are_value_errors(kwargs, message):
    _, ours = twins("bert", 0)
    ids, mask = padded_batch(VOCAB, [4, 6], 0)
    with pytest.raises(ValueError, match=message):
        ours.generate(ids, mask, **kwargs)


def test_unknown_setting_is_a_type_error():
    _, ours = twins("bert", 0)
    with pytest.raises(TypeError, match="num_beam"):
        ours.generate(torch.tensor([[5, 6]]), num_beam=3)


@functools.cache
def minilm_twins():
    """The real MiniLM bert2bert warm start (flat next-token distributions) and transformers' copy of it."""
    torch.manual_seed(0)
    ours = EncoderDecoderModel.from_encoder_decoder_pretrained(MINILM, MINILM).eval()
    with tempfile.TemporaryDirectory() as tmp:
        ours.save_pretrained(tmp)
        hf = transformers.EncoderDecoderModel.from_pretrained(tmp).eval()
    texts = [json.loads(line)["article"] for line in open(ROOT / "data" / "cnndm_200.jsonl")][:5]
    batch = Tokenizer.from_pretrained(MINILM)([t[: 150 + 97 * i] for i, t in enumerate(texts)], max_length=96)
    return ours, hf, batch


@pytest.mark.parametrize("kwargs", [
    dict(num_beams=3, max_length=24, no_repeat_ngram_size=3),
    dict(num_beams=4, max_length=20, length_penalty=2.0, early_stopping=True, min_length=8),
])
def test_real_warm_start_matches_transformers_and_is_batch_invariant(kwargs):
    ours, hf, batch = minilm_twins()
    ids, mask = batch["input_ids"], batch["attention_mask"]
    special = dict(decoder_start_token_id=101, eos_token_id=102, pad_token_id=0)
    together = ours.generate(ids, mask, **kwargs)
    with torch.no_grad():
        theirs = hf.generate(input_ids=ids, attention_mask=mask, **special, **kwargs)
    assert up_to(together, 102) == up_to(theirs, 102)
    for i in range(ids.shape[0]):
        n = int(mask[i].sum())
        assert up_to(ours.generate(ids[i:i + 1, :n], **kwargs), 102) == up_to(together[i:i + 1], 102)


@pytest.mark.parametrize("kwargs", [dict(num_beams=3, max_length=20), dict(num_beams=1, max_new_tokens=12)])
def test_static_step_gives_the_same_tokens(kwargs):
    _, ours = twins("bert", 0)
    ids, mask = padded_batch(VOCAB, [7, 12, 3, 9], 0)
    want = up_to_eos(ours.generate(ids, mask, **kwargs))
    assert up_to_eos(ours.generate(ids, mask, step=static_decode_step(ours), **kwargs)) == want


def test_static_step_traces_once_for_every_position():
    _, ours = twins("gen", 1)
    graphs = []

    def counting_backend(gm, example_inputs):  # dynamo without code generation: counts the graphs it hands over
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    step = static_decode_step(ours, lambda f: torch.compile(f, backend=counting_backend, fullgraph=True,
                                                            dynamic=False))
    ids, mask = padded_batch(VOCAB, [5, 8], 2)
    with torch.inference_mode():
        memory_kv = ours.memory_kv(ours.encode(ids, mask))
        cache = ours.new_cache(6, 16)
        tokens = torch.full((6, 1), 1)
        memory_mask, plain, eager_step = mask.bool()[:, None, None, :], ours.new_cache(6, 16), decode_step(ours)
        compiled = [step(tokens, memory_kv, memory_mask, cache, pos, 3) for pos in range(10)]
        eager = [eager_step(tokens, memory_kv, memory_mask, plain, pos, 3) for pos in range(10)]
    assert len(graphs) == 1
    for a, b in zip(compiled, eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()


def test_compiled_static_step_sees_only_power_of_two_article_counts_under_the_gpu_policy():
    _, ours = twins("bert", 1)
    rows = []

    def counting_backend(gm, example_inputs):
        tokens = [t for t in example_inputs if isinstance(t, torch.Tensor) and t.dtype == torch.long and t.dim() == 2]
        rows.append(tokens[0].shape[0])  # the step's tokens [rows, 1]
        return gm.forward

    torch._dynamo.reset()
    step = static_decode_step(ours, lambda f: torch.compile(f, backend=counting_backend, dynamic=False))
    ids, mask = padded_batch(VOCAB, [9, 3, 14, 6, 11], 7)
    kwargs = dict(num_beams=3, max_length=24, min_length=4)
    compiled = ours.generate(ids, mask, step=step, policy="gpu", **kwargs)
    torch._dynamo.reset()
    assert up_to_eos(compiled) == up_to_eos(ours.generate(ids, mask, **kwargs))
    # 5 articles run as 8 (first step: one row per article, then 3 beams each), compacted into 4, 2, 1
    assert len(rows) == len(set(rows)) and set(rows) <= {8, 24, 12, 6, 3} and {8, 24} <= set(rows)


def test_top_candidates_equal_torch_topk_on_long_rows():
    torch.manual_seed(7)
    scores = torch.randn(6, 4 * 30522 + 37)  # not a whole number of blocks: the tail counts too
    scores[1, 500:520] = torch.linspace(50, 60, 20)  # all winners in one block
    scores[2, -5:] = 100.0 + torch.arange(5.0)  # winners in the tail
    scores[3, ::2] = -torch.inf  # banned tokens
    scores[4, 12345] = torch.nan  # NaN ranks first, as in torch.topk
    for k in (1, 8, 12):
        top, idx = top_candidates(scores, k)
        want_top, want_idx = torch.topk(scores, k)
        torch.testing.assert_close(top, want_top, rtol=0, atol=0, equal_nan=True)
        assert torch.equal(idx, want_idx)
    short = torch.randn(3, 50)
    assert torch.equal(top_candidates(short, 8)[1], torch.topk(short, 8)[1])


def test_first_argmax_equals_argmax_with_ties_and_nan():
    torch.manual_seed(8)
    scores = torch.randn(7, 30522)
    scores[1, [300, 9000, 30500]] = 9.0  # tied maxima: the first one counts
    scores[2, 30510] = 9.0  # maximum in the tail
    scores[3, [40, 30515]] = torch.nan  # the first NaN counts
    scores[4, 30516] = torch.nan  # NaN in the tail only
    scores[5] = -torch.inf
    scores[6, [129, 200]] = 9.0  # tie inside one block
    assert torch.equal(first_argmax(scores), scores.argmax(-1))
    assert torch.equal(first_argmax(scores[:, :1024]), scores[:, :1024].argmax(-1))  # whole blocks, no tail
    short = torch.randn(3, 50)
    assert torch.equal(first_argmax(short), short.argmax(-1))
