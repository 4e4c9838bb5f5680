"""Each summary's score through every way in: TextGenerator's against transformers' (beams: sequences_scores;
greedy: the mean of compute_transition_scores over the generated tokens, EOS included)."""

from __future__ import annotations

import pytest
import torch
import transformers

from model import EncoderDecoderModel, TextGenerator, Tokenizer, pad_ids, pipeline
from tests.helpers import articles, random_bert2bert


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """Our random bert2bert, transformers' copy, the tokenizer and eight articles' token ids."""
    folder = random_bert2bert(tmp_path_factory.mktemp("scores") / "model", hidden=32, layers=1, intermediate=64)
    tok = Tokenizer.from_pretrained(folder)
    rows = tok.encode_batch([r["article"][: 80 + 60 * i] for i, r in enumerate(articles(8))], 64)
    hf = transformers.EncoderDecoderModel.from_pretrained(folder).eval()
    return EncoderDecoderModel.from_pretrained(folder), hf, tok, rows


def hf_generate(hf, tok, rows, **settings):
    ids, mask = pad_ids(rows, tok.pad_token_id)
    with torch.inference_mode():
        return hf.generate(ids, attention_mask=mask, output_scores=True, return_dict_in_generate=True, **settings)


@pytest.mark.parametrize("batching", ["calls", "inflight"])
def test_beam_scores_are_transformers_sequences_scores(scored, batching):
    ours, hf, tok, rows = scored
    settings = dict(num_beams=4, max_length=20, length_penalty=1.5, num_return_sequences=2)
    got = TextGenerator(ours, tok, settings, batching=batching)(rows)
    want = hf_generate(hf, tok, rows, **settings).sequences_scores
    torch.testing.assert_close(torch.tensor([g.score for g in got]), want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("batching", ["calls", "inflight"])
@pytest.mark.parametrize("ends", ["at_eos", "at_max_length"])
def test_greedy_scores_are_the_mean_transition_score_of_the_generated_tokens(scored, batching, ends):
    ours, hf, tok, rows = scored
    first = hf_generate(hf, tok, rows, max_length=20).sequences
    assert first.shape[1] == 20  # the random model never writes [SEP]: at_eos makes its 4th token the EOS
    eos = int(first[0, 4]) if ends == "at_eos" else tok.sep_token_id
    settings = dict(max_length=20, eos_token_id=eos)
    out = hf_generate(hf, tok, rows, **settings)
    steps = hf.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)  # [B, T - 1]
    ended = out.sequences[:, 1:] == eos
    generated = (ended.cumsum(1) - ended.int()) == 0  # up to and including the first EOS
    assert generated.sum(1).tolist() == [4 if ends == "at_eos" else 19] * len(rows)
    want = (steps * generated).sum(1) / generated.sum(1)
    got = TextGenerator(ours, tok, settings, batching=batching)(rows)
    torch.testing.assert_close(torch.tensor([g.score for g in got]), want, atol=1e-4, rtol=0)


def test_an_errored_row_has_no_score(scored):
    ours, _, tok, rows = scored
    got = TextGenerator(ours, tok, dict(max_length=8))([[], rows[0]])
    assert got[0].score is None and got[0].error and isinstance(got[1].score, float)


@pytest.mark.parametrize("settings", [dict(num_beams=4, max_length=16, num_return_sequences=2),
                                      dict(max_length=16)], ids=["beam", "greedy"])
def test_pipeline_return_scores_gives_text_generators_scores(scored, settings):
    ours, _, tok, _ = scored
    texts = [r["article"][: 80 + 60 * i] for i, r in enumerate(articles(4))]
    summarize = pipeline("summarization", model=ours, tokenizer=tok, device="cpu")
    got = summarize([*texts, ""], return_scores=True, **settings)
    want = TextGenerator(ours, tok, settings)(tok.encode_batch(texts, ours.config.encoder.max_positions))
    flat = flatten(got)
    g = settings.get("num_return_sequences", 1)
    assert [d["score"] for d in flat[:-g]] == pytest.approx([w.score for w in want], abs=1e-6)
    assert [d["summary_text"] for d in flat[:-g]] == [w.text for w in want]
    assert flat[-1] == {"summary_text": None, "score": None, "error": "empty text"}
    assert all(set(d) == {"summary_text"} for d in flatten(summarize(texts, **settings)))  # by default


def flatten(results: list) -> list[dict]:
    return [d for items in results for d in (items if isinstance(items, list) else [items])]
