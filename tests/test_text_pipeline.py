"""pipeline("summarization", ...): transformers' shapes, its generate's summaries, per-item errors."""

from __future__ import annotations

import pytest
import torch
import transformers

from model import EncoderDecoderModel, Tokenizer, pipeline
from tests.helpers import articles

GEN = dict(num_beams=2, max_length=24, no_repeat_ngram_size=3)


def test_forty_mixed_articles_in_one_call_equal_transformers_generate_of_each_alone(bert2bert_dir):
    # mixed lengths: whole articles (truncated to 512 tokens) and cuts of 100 to 1,500 characters
    texts = [r["article"] if i % 4 == 0 else r["article"][: 100 + 37 * i] for i, r in enumerate(articles(40))]
    got = pipeline("summarization", model=bert2bert_dir, device="cpu")(texts, **GEN)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(bert2bert_dir))
    hf = transformers.EncoderDecoderModel.from_pretrained(str(bert2bert_dir)).eval()
    want = []
    with torch.inference_mode():
        for text in texts:
            enc = hf_tok(text, truncation=True, max_length=512, return_tensors="pt")
            out = hf.generate(input_ids=enc.input_ids, attention_mask=enc.attention_mask, **GEN)
            want.append(hf_tok.decode(out[0], skip_special_tokens=True))
    assert [g["summary_text"] for g in got] == want
    assert all(set(g) == {"summary_text"} for g in got)


def test_bad_items_get_their_own_error_and_the_rest_are_summarized(tiny_model):
    summarize = pipeline("summarization", model=tiny_model)
    huge = " ".join(["word"] * 50_000)
    got = summarize(["", None, huge, "   ", "A normal sentence about the weather."], max_length=8)
    assert got[0] == {"summary_text": None, "error": "empty text"}
    assert got[1] == {"summary_text": None, "error": "not a string: NoneType"}
    assert got[3] == {"summary_text": None, "error": "empty text"}
    assert isinstance(got[2]["summary_text"], str) and isinstance(got[4]["summary_text"], str)  # the huge one truncated
    assert summarize("A normal sentence about the weather.", max_length=8) == [got[4]]


def test_tasks_keys_loaded_models_and_refusals(tiny_model):
    model, tok = EncoderDecoderModel.from_pretrained(tiny_model), Tokenizer.from_pretrained(tiny_model)
    text = "A normal sentence about the weather."
    summary = pipeline("summarization", model=tiny_model)(text, max_length=8)[0]["summary_text"]
    assert pipeline("translation_en_to_de", model=model, tokenizer=tok)(text, max_length=8) == [
        {"translation_text": summary}]
    assert pipeline("text2text-generation", model=tiny_model, tokenizer=tiny_model)([text], max_length=8) == [
        {"generated_text": summary}]
    with pytest.raises(ValueError, match="task must be one of"):
        pipeline("fill-mask", model=tiny_model)
    with pytest.raises(ValueError, match="tokenizer="):
        pipeline("summarization", model=model)


def test_num_return_sequences_gives_transformers_shapes_best_first(tiny_model):
    model, tok = EncoderDecoderModel.from_pretrained(tiny_model), Tokenizer.from_pretrained(tiny_model)
    texts = [r["article"][:300] for r in articles(3)]
    summarize = pipeline("summarization", model=tiny_model)
    gen = dict(num_beams=3, num_return_sequences=3, max_length=12)
    got = summarize([texts[0], "", texts[1], texts[2]], **gen)
    assert got[1] == [{"summary_text": None, "error": "empty text"}] * 3
    enc = tok([texts[0], texts[1], texts[2]], padding=True, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**enc, **gen)
    want = tok.batch_decode(out, skip_special_tokens=True)
    assert [[g["summary_text"] for g in items] for items in (got[0], got[2], got[3])] == [want[0:3], want[3:6],
                                                                                        want[6:9]]
    assert summarize(texts[0], **gen) == got[0]  # one string: a list of its sequences


def test_no_items_and_only_bad_items_give_per_item_results_not_a_crash(tiny_model):
    summarize = pipeline("summarization", model=tiny_model)  # in flight on a CPU: no table of zero articles
    assert summarize([]) == []
    assert summarize(["", None]) == [{"summary_text": None, "error": "empty text"},
                                     {"summary_text": None, "error": "not a string: NoneType"}]
    assert pipeline("summarization", model=tiny_model, batching="calls")(["  "]) == [
        {"summary_text": None, "error": "empty text"}]


def test_inputs_are_bounded_by_the_encoders_positions_not_the_tokenizers_model_max_length(tiny_model):
    tok = Tokenizer.from_pretrained(tiny_model)
    tok.model_max_length = int(1e30)  # as many tokenizer_config.json files say
    model = EncoderDecoderModel.from_pretrained(tiny_model)
    summarize = pipeline("summarization", model=model, tokenizer=tok)
    long_text = " ".join(["weather"] * 3000)  # 3,002 tokens with [CLS] and [SEP]
    short = "A normal sentence about the weather."
    got = summarize([long_text, short], max_length=8, truncation=False)
    assert got[0] == {"summary_text": None, "error": "input of 3002 tokens is longer than the encoder's 512 usable "
                                                     "positions (max_position_embeddings 512): truncate it"}
    assert got[1] == summarize(short, max_length=8)[0] and got[1]["summary_text"]
    truncated = summarize(long_text, max_length=8)[0]  # truncated to the 512 positions by default
    assert truncated == summarize(" ".join(["weather"] * 510), max_length=8)[0]
    with pytest.raises(ValueError, match=r"max_input_tokens must be in 1\.\.512"):
        summarize(short, max_input_tokens=600)
    with pytest.raises(ValueError, match="longer than the encoder's 512 usable positions"):
        model.generate(torch.ones(1, 600, dtype=torch.long), max_length=8)


@pytest.mark.parametrize("settings", [dict(batch_size=0), dict(max_batch_tokens=0), dict(batch_size=-3),
                                      dict(max_batch_tokens=1.5)])
def test_caps_below_one_are_refused_before_any_work(tiny_model, settings):
    with pytest.raises(ValueError, match="must be a whole number >= 1"):
        pipeline("summarization", model=tiny_model, **settings)


def test_bad_generation_settings_are_refused_before_any_item_is_summarized(tiny_model):
    summarize = pipeline("summarization", model=tiny_model)
    with pytest.raises(ValueError, match=r"num_return_sequences \(3\) must be <= num_beams \(2\)"):
        summarize(["A sentence.", ""], num_beams=2, num_return_sequences=3)
    with pytest.raises(TypeError, match="unknown generation setting"):
        summarize("A sentence.", num_beam=2)
