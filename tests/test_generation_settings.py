"""Every key of transformers' GenerationConfig is honoured with transformers' tokens, refused by name, or listed
as not changing the tokens (model/config.py); the newer processors and warpers against transformers 5."""

from __future__ import annotations

import dataclasses
import json
import warnings

import pytest
import torch
import transformers

from model import EncoderDecoderModel, GenerationConfig, Tokenizer
from model.config import REFUSED_GENERATION_KEYS, TOKEN_NEUTRAL_KEYS
from model.generation.logits_rules import Rules, process
from tests.helpers import DATA, random_bert2bert

MODES = {
    "greedy": dict(num_beams=1),
    "beam 4": dict(num_beams=4, num_return_sequences=2),
    "sampling": dict(do_sample=True, top_k=4),  # few tokens to draw from: suppressing or biasing one bites
}
SAMPLING = {"sampling": dict(do_sample=True, top_k=0), "beam sampling": dict(do_sample=True, num_beams=4, top_k=0)}
PROCESSORS = {
    "encoder_no_repeat_ngram_size": dict(encoder_no_repeat_ngram_size=2),
    "encoder_repetition_penalty": dict(encoder_repetition_penalty=3.0),
    "suppress_tokens": None,  # the tokens transformers picks unsuppressed, filled in by the fixture
    "begin_suppress_tokens": None,
    "sequence_bias": None,
    "exponential_decay_length_penalty": dict(exponential_decay_length_penalty=[2, 40.0]),
    "renormalize_logits": dict(renormalize_logits=True, repetition_penalty=0.2),  # changes beam search's sums
    "remove_invalid_values": dict(remove_invalid_values=True, bad_words_ids=[[1996]]),
}
WARPERS = {
    "min_p": dict(min_p=0.6),
    "typical_p": dict(typical_p=0.3),
    "epsilon_cutoff": dict(epsilon_cutoff=3e-4),
    "eta_cutoff": dict(eta_cutoff=0.9),
    "top_h": dict(top_h=0.3),
}
NEW = 10  # tokens generated
LENGTH = 30  # input tokens: every article is longer, so the batch has no padding


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    folder = random_bert2bert(tmp_path_factory.mktemp("settings_b2b"), hidden=32, layers=2, intermediate=64)
    ours = EncoderDecoderModel.from_pretrained(folder).eval()
    hf = transformers.EncoderDecoderModel.from_pretrained(folder).eval()
    texts = [json.loads(line)["article"] for line in DATA.read_text().splitlines()[:2]]
    batch = Tokenizer.from_pretrained(folder)(texts, max_length=LENGTH)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert bool(mask.all())
    # a random model does not copy its input: the articles begin with what it says, so that the encoder rules bite
    said = torch.tensor(hf_tokens(hf, ids, mask, 0))[:, 1:9]
    ids[:, 1:9] = said
    return ours, hf, ids, mask


def hf_tokens(hf, ids, mask, seed: int, **settings) -> list[list[int]]:
    torch.manual_seed(seed)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW, **settings)
    return cut(out, hf.generation_config.eos_token_id)


def cut(rows: torch.Tensor, eos: int) -> list[list[int]]:
    out = []
    for row in rows.tolist():
        out.append(row[:row.index(eos, 1) + 1] if eos in row[1:] else row)
    return out


def assert_same(twins, seed: int, key: str, **settings) -> None:
    """Our tokens are transformers', and the key changes transformers' tokens (else the test proves nothing)."""
    ours, hf, ids, mask = twins
    want = hf_tokens(hf, ids, mask, seed, **settings)
    got = cut(ours.generate(ids, mask, seed=seed, max_new_tokens=NEW, **settings), hf.generation_config.eos_token_id)
    assert got == want, settings
    if key not in NEVER_BITES:
        assert hf_tokens(hf, ids, mask, seed, **{k: v for k, v in settings.items() if k != key}) != want, \
            f"{settings} do not change transformers' tokens: pick other values"


NEVER_BITES = {"remove_invalid_values"}  # no NaN or +inf comes out of these models' processors


def resolved(twins, key: str, seed: int, mode: dict) -> dict:
    """Values that bite on this model: the tokens transformers picks without them, suppressed or biased."""
    ours, hf, ids, mask = twins
    plain = hf_tokens(hf, ids, mask, seed, **mode)
    first = sorted({row[1] for row in plain})
    if key == "suppress_tokens":
        return dict(suppress_tokens=sorted({t for row in plain for t in row[1:4]}))
    if key == "begin_suppress_tokens":
        return dict(begin_suppress_tokens=first)
    return dict(sequence_bias=[[[first[0]], -4.0], [[plain[0][1], plain[0][2]], -9.0], [[plain[1][2]], 2.5]])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("key", PROCESSORS)
def test_processors_give_transformers_tokens(twins, key, mode):
    settings = {**MODES[mode], **(PROCESSORS[key] or resolved(twins, key, 3, MODES[mode]))}
    if key == "encoder_no_repeat_ngram_size" and mode == "sampling":
        settings[key] = 1  # the draws leave the article's bigrams at once; its tokens they do not
    if key == "renormalize_logits" and mode != "beam 4":
        pytest.skip("a log-softmax changes neither the argmax nor the distribution drawn from, only beam sums")
    assert_same(twins, 3, key, **settings)


@pytest.mark.parametrize("mode", SAMPLING)
@pytest.mark.parametrize("key", WARPERS)
def test_warpers_give_transformers_tokens(twins, key, mode):
    assert_same(twins, 7, key, **SAMPLING[mode], **WARPERS[key])


def test_every_transformers_key_is_honoured_refused_or_token_neutral():
    honoured = {f.name for f in dataclasses.fields(GenerationConfig)} - {"extra"}
    known = honoured | REFUSED_GENERATION_KEYS.keys() | TOKEN_NEUTRAL_KEYS
    assert not honoured & REFUSED_GENERATION_KEYS.keys() and not honoured & TOKEN_NEUTRAL_KEYS
    assert sorted(set(transformers.GenerationConfig().to_dict()) - known) == []


REFUSALS = {
    "num_beam_groups": 2, "diversity_penalty": 0.5, "force_words_ids": [[2023]], "constraints": ["x"],
    "penalty_alpha": 0.6, "dola_layers": "high", "guidance_scale": 1.5, "watermarking_config": {"bias": 2.0},
    "stop_strings": ["."], "token_healing": True, "max_time": 1.0, "low_memory": True,
    "prompt_lookup_num_tokens": 3, "assistant_early_exit": 2, "num_assistant_tokens": 5,
}


@pytest.mark.parametrize("key", REFUSALS)
def test_refused_keys_name_themselves_at_load_and_in_a_call(twins, key):
    ours, _, ids, mask = twins
    with pytest.raises(ValueError, match=rf"{key}=.*generation_config.json.*not supported: it asks for"):
        GenerationConfig.from_dict({"num_beams": 2, key: REFUSALS[key]})
    with pytest.raises(ValueError, match=rf"{key}=.*the call.*not supported"):
        ours.generate(ids, mask, **{key: REFUSALS[key]})


def test_neutral_values_of_refused_keys_load_and_unknown_keys_warn_by_name():
    GenerationConfig.from_dict({"num_beam_groups": 1, "diversity_penalty": 0.0, "guidance_scale": None,
                                "use_cache": True, "output_scores": True, "transformers_version": "4.40.0"})
    with pytest.warns(UserWarning, match="frobnicate"):
        config = GenerationConfig.from_dict({"frobnicate": 3, "num_beams": 2})
    assert config.extra == {"frobnicate": 3} and config.num_beams == 2


def test_return_format_flags_beyond_sequences_scores_are_refused(twins):
    ours, _, ids, mask = twins
    with pytest.raises(ValueError, match="output_attentions=True is not supported"):
        ours.generate(ids, mask, output_attentions=True)
    with pytest.raises(ValueError, match="output_scores gives sequences_scores for beam search"):
        ours.generate(ids, mask, return_dict_in_generate=True, output_scores=True)
    ours.generate(ids, mask, use_cache=False, max_new_tokens=2)  # harmless names


def test_sequences_scores_and_a_passed_generation_config_as_transformers(twins):
    ours, hf, ids, mask = twins
    config = transformers.GenerationConfig(num_beams=4, num_return_sequences=2, length_penalty=1.5,
                                           no_repeat_ngram_size=2, max_new_tokens=NEW, early_stopping=True)
    with torch.no_grad():
        want = hf.generate(input_ids=ids, attention_mask=mask, generation_config=config, return_dict_in_generate=True,
                           output_scores=True)
    got = ours.generate(ids, mask, generation_config=config, return_dict_in_generate=True, output_scores=True)
    eos = hf.generation_config.eos_token_id
    assert cut(got.sequences, eos) == cut(want.sequences, eos)
    torch.testing.assert_close(got.sequences_scores, want.sequences_scores, atol=1e-4, rtol=0)
    ours_config = GenerationConfig(num_beams=4, num_return_sequences=2, length_penalty=1.5, no_repeat_ngram_size=2,
                                   max_new_tokens=NEW, early_stopping=True)
    assert torch.equal(ours.generate(ids, mask, generation_config=ours_config), got.sequences)


class BanAtEvenLengths:
    def __init__(self, tokens: list[int]):
        self.tokens = tokens

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[1] % 2:
            return scores
        scores = scores.clone()
        scores[:, self.tokens] = -float("inf")
        return scores


class StopAfter:
    def __init__(self, token: int):
        self.token = token

    def __call__(self, input_ids: torch.Tensor, scores) -> torch.Tensor:
        return input_ids[:, -1] == self.token


@pytest.mark.parametrize("mode", MODES)
def test_logits_processor_callables_as_transformers(twins, mode):
    ours, hf, ids, mask = twins
    banned = sorted({t for row in hf_tokens(hf, ids, mask, 3, **MODES[mode]) for t in row[1:5]})
    rule = BanAtEvenLengths(banned)
    want = hf_tokens(hf, ids, mask, 3, **MODES[mode], logits_processor=transformers.LogitsProcessorList([rule]))
    assert want != hf_tokens(hf, ids, mask, 3, **MODES[mode])
    got = ours.generate(ids, mask, seed=3, max_new_tokens=NEW, logits_processor=[rule], **MODES[mode])
    assert cut(got, hf.generation_config.eos_token_id) == want


@pytest.mark.parametrize("mode", ["greedy"])  # sampling too, but a stopped article leaves the batch: other draws
def test_stopping_criteria_callables_as_transformers(twins, mode):
    ours, hf, ids, mask = twins
    plain = hf_tokens(hf, ids, mask, 3, **MODES[mode])
    criterion = StopAfter(plain[0][4])
    want = hf_tokens(hf, ids, mask, 3, **MODES[mode], stopping_criteria=transformers.StoppingCriteriaList([criterion]))
    assert want != plain
    got = ours.generate(ids, mask, seed=3, max_new_tokens=NEW, stopping_criteria=[criterion], **MODES[mode])
    assert cut(got, hf.generation_config.eos_token_id) == want
    with pytest.raises(ValueError, match="stopping_criteria run with greedy search and sampling"):
        ours.generate(ids, mask, num_beams=2, stopping_criteria=[criterion])


def test_sequence_bias_as_a_dict_round_trips_as_transformers_writes_it():
    config = GenerationConfig(sequence_bias={(5, 6): -1.0})
    assert config.sequence_bias == [[[5, 6], -1.0]]
    assert GenerationConfig.from_dict(json.loads(config.to_json())).sequence_bias == [[[5, 6], -1.0]]


@pytest.mark.parametrize("settings, message", [
    (dict(sequence_bias=[[[99999], 1.0]]), "sequence_bias entries"),
    (dict(exponential_decay_length_penalty=3), "exponential_decay_length_penalty must be"),
    (dict(encoder_repetition_penalty=0.0), "encoder_repetition_penalty must be > 0"),
    (dict(do_sample=True, eta_cutoff=1.5), "eta_cutoff must be"),
    (dict(do_sample=True, top_h=0.0), "top_h must be"),
])
def test_bad_values_are_value_errors(twins, settings, message):
    ours, _, ids, mask = twins
    with pytest.raises(ValueError, match=message):
        ours.generate(ids, mask, **settings)


def test_encoder_rules_read_each_rows_own_article():
    """The encoder rules on rows of articles of their own lengths (padding -1) equal each row alone."""
    torch.manual_seed(4)
    articles = torch.randint(0, 6, (4, 7))
    articles[1, 5:] = -1
    articles[3, :2] = -1
    ids, scores = torch.randint(0, 6, (4, 5)), torch.randn(4, 9)
    rules = Rules(max_length=9, min_length=0, eos=[1], encoder_repetition_penalty=2.0, encoder_no_repeat_ngram_size=2)
    together = process(ids, scores, rules, encoder=articles)
    for i in range(4):
        own = articles[i:i + 1][articles[i:i + 1] >= 0][None]
        assert torch.equal(together[i:i + 1], process(ids[i:i + 1], scores[i:i + 1], rules, encoder=own))
