"""In-flight batching (model/generation/inflight.py): 300 mixed-length articles (CNN/DailyMail and Wikipedia) decoded
through a table of 16 article places refilled as articles finish give transformers' generate of each article
alone, under both decode policies; the logits rules and several sequences per article give what the calls
loop gives; a compiled step is traced once per row count, not per refill."""

from __future__ import annotations

import copy
import pathlib

import pytest
import torch
import transformers

from benchmarks.workloads import mixed_texts
from model import DecodeStats, EncoderDecoderModel, TextGenerator, Tokenizer, pad_ids, static_decode_step
from model.generation.logits_rules import Rules, process
from tests.helpers import MINILM

ARTICLES = 300
PLACES = 16
EOS_BIAS = 5.0  # on this random model, outputs then stop anywhere from min_length to max_length
SETTINGS = {
    "greedy": dict(num_beams=1, max_length=40, min_length=5, no_repeat_ngram_size=3),
    "beam, early stopping": dict(num_beams=4, max_length=40, min_length=5, no_repeat_ngram_size=3,
                                 length_penalty=2.0, early_stopping=True),
    "beam, no early stopping": dict(num_beams=4, max_length=40, min_length=5, no_repeat_ngram_size=3,
                                    length_penalty=2.0, early_stopping=False),
}
TIE = 1e-5
RULES_TIE = 1e-2  # score gap of a flipped near tie between two batchings (seen: 1.5e-3 on an AMD EPYC)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> pathlib.Path:
    """A small random bert2bert built by transformers (initializer_range 0.2, so that its logits are spread)
    with MiniLM's vocabulary and a raised EOS bias."""
    tok = Tokenizer.from_pretrained(MINILM)
    cfg = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64, initializer_range=0.2)
    ids = dict(decoder_start_token_id=tok.cls_token_id, pad_token_id=tok.pad_token_id, eos_token_id=tok.sep_token_id)
    torch.manual_seed(0)
    hf = transformers.EncoderDecoderModel(
        config=transformers.EncoderDecoderConfig.from_encoder_decoder_configs(cfg, copy.deepcopy(cfg), **ids))
    hf.generation_config.update(**ids)
    with torch.no_grad():
        hf.decoder.cls.predictions.bias[tok.sep_token_id] += EOS_BIAS
    path = tmp_path_factory.mktemp("inflight_b2b")
    hf.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def inputs(folder) -> list[list[int]]:
    return Tokenizer.from_pretrained(folder).encode_batch(mixed_texts(ARTICLES), 512, True, True)


@pytest.fixture(scope="module")
def alone(folder, inputs):
    """transformers' output of each article alone, and its score, by setting (computed when first asked)."""
    hf = transformers.EncoderDecoderModel.from_pretrained(folder).eval()
    found = {}

    def get(name: str) -> list[tuple[list[int], float | None]]:
        if name not in found:
            settings = SETTINGS[name]
            out = []
            with torch.inference_mode():
                for row in inputs:
                    r = hf.generate(torch.tensor([row]), attention_mask=torch.ones(1, len(row), dtype=torch.long),
                                    output_scores=True, return_dict_in_generate=True, **settings)
                    score = float(r.sequences_scores[0]) if settings["num_beams"] > 1 else None
                    out.append((r.sequences[0].tolist(), score))
            found[name] = out
        return found[name]
    return get


def greedy_tie(hf, row: list[int], prefix: list[int], a: int, b: int) -> float:
    """How far apart transformers' raw logits of tokens a and b are after `prefix`."""
    with torch.inference_mode():
        logits = hf(input_ids=torch.tensor([row]), decoder_input_ids=torch.tensor([prefix])).logits[0, -1]
    return abs(float(logits[a] - logits[b]))


@pytest.mark.parametrize("policy", ["cpu", "gpu"])
@pytest.mark.parametrize("name", list(SETTINGS))
def test_inflight_equals_transformers_on_each_article_alone(folder, inputs, alone, name, policy):
    settings = SETTINGS[name]
    ours = EncoderDecoderModel.from_pretrained(folder).eval()
    ids, mask = pad_ids(inputs, 0)
    stats, call_stats = DecodeStats(), DecodeStats()
    out, scores = ours.generate(ids, mask, inflight=True, max_batch_articles=PLACES, policy=policy, stats=stats,
                                return_scores=True, **settings)
    calls = 4 * PLACES  # the calls loop's counts, on the first articles (all 300 would double the test's time)
    ours.generate(ids[:calls], mask[:calls], max_batch_articles=PLACES, policy=policy, stats=call_stats, **settings)
    want = alone(name)
    lengths = [len(w) for w, _ in want]
    assert min(lengths) <= 25 and max(lengths) == 40 and len(set(lengths)) > 3  # outputs stop anywhere
    hf = transformers.EncoderDecoderModel.from_pretrained(folder).eval()
    ties = []
    for i, (tokens, score) in enumerate(want):
        got = out[i].tolist()
        if got[:len(tokens)] == tokens and all(t == 0 for t in got[len(tokens):]):
            continue
        if settings["num_beams"] > 1:  # a flipped choice between two hypotheses of (nearly) equal score
            gap = abs(float(scores[i]) - score)
        else:
            at = next(t for t, (x, y) in enumerate(zip(got, tokens, strict=False)) if x != y)
            gap = greedy_tie(hf, inputs[i], tokens[:at], got[at], tokens[at])
        assert gap < TIE, f"article {i}: {got} != {tokens} (scores {gap} apart)"
        ties.append(i)
    print(f"{name}, {policy} policy: {len(ties)} of {ARTICLES} articles differ by a tie (< {TIE}); "
          f"{stats.steps} steps; live row-steps {stats.live_share:.1%} (calls on the first {calls} articles: "
          f"{call_stats.live_share:.1%})")
    assert len(ties) <= 3
    assert call_stats.self_share == 1.0  # a call's articles all began at its first step
    assert stats.self_share < 1.0 and stats.cross_share < 1.0
    if name == "greedy" and policy == "cpu":  # each article holds a place for its T steps, at ages 1..T
        steps = [int(row.nonzero().max()) for row in out]
        assert stats.self_own == sum(t * (t + 1) // 2 for t in steps)
        assert stats.cross_own == sum(t * len(row) for t, row in zip(steps, inputs, strict=True))
    # the places are refilled as soon as their articles are done (found within `lag` steps): while the queue
    # lasts, every place holds an article, so the steps are at most the place-steps of all articles shared by
    # the places, then the tail of the longest
    lag = 8 if policy == "gpu" else 0
    outputs = [len(w) - 1 for w, _ in want]
    assert stats.steps <= sum(n + lag for n in outputs) / PLACES + max(outputs) + lag


def test_rules_on_rows_of_their_own_lengths_equal_the_rules_on_each_row_alone():
    torch.manual_seed(3)
    vocab, width = 12, 9
    ids = torch.randint(0, 6, (10, width))  # few distinct tokens: repeated n-grams and bad-word matches happen
    lengths = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8, 9, 4])
    scores = torch.randn(10, vocab)
    articles = torch.randint(0, 6, (10, 7)).masked_fill(torch.arange(7) >= torch.arange(10)[:, None] % 4 + 4, -1)
    for rules in (Rules(max_length=10, min_length=5, eos=[1], repetition_penalty=1.7, no_repeat_ngram_size=2,
                        bad_words_ids=[[3], [2, 4], [5, 0, 2]], forced_bos_token_id=7),
                  Rules(max_length=10, min_length=0, eos=[1, 2], no_repeat_ngram_size=3, forced_eos_token_id=[8, 9]),
                  Rules(max_length=6, min_length=3, eos=[1], repetition_penalty=0.6, do_sample=True, top_k=4,
                        top_p=0.8, temperature=0.7),
                  Rules(max_length=10, min_length=0, eos=[1, 2], sequence_bias=(((3,), -1.5), ((2, 4), 2.0),
                                                                              ((5, 0, 2), -3.0), ((0, 4), 1.0)),
                        encoder_repetition_penalty=1.8, encoder_no_repeat_ngram_size=2, remove_invalid_values=True,
                        exponential_decay_length_penalty=(2, 1.7), suppress_tokens=(6,), begin_suppress_tokens=(3, 7),
                        renormalize_logits=True),
                  Rules(max_length=10, min_length=0, eos=[1], encoder_no_repeat_ngram_size=3, begin_index=2,
                        begin_suppress_tokens=(5,), do_sample=True, top_k=0, min_p=0.2, typical_p=0.9,
                        epsilon_cutoff=0.02, eta_cutoff=0.1, top_h=0.9, min_tokens_to_keep=2)):
        together = process(ids, scores, rules, lengths, articles)
        for i, n in enumerate(lengths.tolist()):
            alone = process(ids[i:i + 1, :n], scores[i:i + 1], rules, encoder=articles[i:i + 1])
            assert torch.equal(together[i:i + 1], alone), (rules, i)


RULES = [
    dict(num_beams=1, max_length=30, repetition_penalty=1.4, bad_words_ids=[[2003], [1996, 2158]],
         forced_bos_token_id=2023),
    dict(num_beams=3, max_length=30, min_length=6, repetition_penalty=0.8, forced_eos_token_id=102,
         num_return_sequences=2, length_penalty=0.5),
    dict(num_beams=2, max_new_tokens=25, min_new_tokens=9, no_repeat_ngram_size=2, bad_words_ids=[[2000, 2001]],
         early_stopping="never"),
    dict(num_beams=2, max_length=30, encoder_no_repeat_ngram_size=2, encoder_repetition_penalty=1.5,
         sequence_bias=[[[2003], -2.0], [[1996, 2158], -5.0]], exponential_decay_length_penalty=[5, 1.5],
         suppress_tokens=[1012], begin_suppress_tokens=[1996], renormalize_logits=True),
]


@pytest.mark.parametrize("settings", RULES)
def test_inflight_applies_every_rule_as_the_calls_loop(folder, inputs, settings):
    ours = EncoderDecoderModel.from_pretrained(folder).eval()
    ids, mask = pad_ids(inputs[:60], 0)
    for policy in ("cpu", "gpu"):
        calls, call_scores = ours.generate(ids, mask, max_batch_articles=8, policy=policy, return_scores=True,
                                           **settings)
        inflight, scores = ours.generate(ids, mask, inflight=True, max_batch_articles=8, policy=policy,
                                         return_scores=True, **settings)
        assert_equal_but_near_ties(inflight, scores, calls, call_scores)


def assert_equal_but_near_ties(got: torch.Tensor, got_scores: torch.Tensor, want: torch.Tensor,
                               want_scores: torch.Tensor) -> None:
    """Two batchings give the same outputs and scores, except where one flips a near tie: such a row's score is
    within RULES_TIE of the other's (a choice between two hypotheses of nearly equal score, which the order of
    float sums decides differently on another CPU), and such rows are few."""
    width = max(got.shape[1], want.shape[1])
    got, want = (torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in (got, want))
    same = (got == want).all(dim=1)
    torch.testing.assert_close(got_scores[same], want_scores[same], rtol=0, atol=1e-4)
    gaps = (got_scores[~same] - want_scores[~same]).abs()
    assert bool((gaps < RULES_TIE).all()), f"rows {(~same).nonzero().flatten().tolist()} differ by {gaps.tolist()}"
    assert int((~same).sum()) <= 4


def test_text_generator_batching_gives_the_same_texts(folder, inputs):
    ours = EncoderDecoderModel.from_pretrained(folder).eval()
    tok = Tokenizer.from_pretrained(folder)
    settings = SETTINGS["beam, early stopping"]
    texts = {way: TextGenerator(ours, tok, settings, batch_size=8, batching=way)(inputs[:40])
             for way in ("calls", "inflight")}
    assert [g[:3] for g in texts["inflight"]] == [g[:3] for g in texts["calls"]]  # text, tokens, error
    assert [g.score for g in texts["inflight"]] == pytest.approx([g.score for g in texts["calls"]], abs=1e-4)
    assert not TextGenerator(ours, tok, settings, policy="gpu").inflight
    assert TextGenerator(ours, tok, settings, policy="cpu").inflight
    with pytest.raises(ValueError, match="batching must be one of"):
        TextGenerator(ours, tok, settings, batching="continuous")


def test_compiled_step_is_traced_once_per_row_count_not_per_refill(folder, inputs):
    ours = EncoderDecoderModel.from_pretrained(folder).eval()
    rows = []

    def counting_backend(gm, example_inputs):
        tokens = [t for t in example_inputs if isinstance(t, torch.Tensor) and t.dtype == torch.long and t.dim() == 2]
        rows.append(tokens[0].shape[0])  # the step's tokens [rows, 1]
        return gm.forward

    torch._dynamo.reset()
    step = static_decode_step(ours, lambda f: torch.compile(f, backend=counting_backend, dynamic=False))
    ids, mask = pad_ids(inputs[:50], 0)
    settings = SETTINGS["beam, early stopping"]
    compiled = ours.generate(ids, mask, inflight=True, max_batch_articles=8, policy="gpu", step=step, **settings)
    torch._dynamo.reset()
    assert torch.equal(compiled, ours.generate(ids, mask, max_batch_articles=8, policy="gpu", **settings))
    # 8 places of 4 beams while the queue lasts (dozens of refills), then compacted into 4, 2 and 1 places
    assert len(rows) == len(set(rows)) and set(rows) <= {32, 16, 8, 4} and 32 in rows
