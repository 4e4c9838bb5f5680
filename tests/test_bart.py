"""BART (bart-large-cnn, distilbart) against transformers: random BartForConditionalGeneration checkpoints saved by
transformers (unequal depths as distilbart, scale_embedding on and off, fp32 and fp16 files) with roberta-base's
real vocabulary: logits, loss, checkpoints both ways, and greedy, CNN-recipe beam and sampled tokens on
CNN/DailyMail articles, in calls and in flight."""

from __future__ import annotations

import json
import pathlib
import shutil

import pytest
import torch
import transformers

from model import EncoderDecoderModel, Tokenizer
from model.convert import convert
from tests.helpers import articles, bart_folder

# (d_model, heads, encoder layers, decoder layers, scale_embedding, file dtype): 12/6 and 6/6-like, scaled down
SIZES = [(32, 4, 4, 2, True, torch.float32), (48, 6, 2, 2, False, torch.float16)]
CNN = dict(num_beams=4, length_penalty=2.0, no_repeat_ngram_size=3, min_length=10, max_length=24,
           early_stopping=True)


@pytest.fixture(scope="module")
def bart(tmp_path_factory) -> pathlib.Path:
    return bart_folder(tmp_path_factory.mktemp("bart"), *SIZES[0][:5])


def batch(n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 50265, (n, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    labels = torch.randint(3, 50265, (n, 6), generator=g)
    labels[1, 4:] = -100
    return ids, mask, labels


@pytest.mark.parametrize("size", SIZES, ids=["4+2-scaled-fp32", "2+2-unscaled-fp16"])
def test_logits_loss_and_saved_folder(size, tmp_path):
    folder = bart_folder(tmp_path / "hf", *size)
    hf = transformers.BartForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    ours = EncoderDecoderModel.from_pretrained(folder, dtype=torch.float32)
    assert ours.encoder.embed.tok is ours.decoder.embed.tok
    ids, mask, labels = batch(2)
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, labels=labels)
        got = ours(ids, mask, labels=labels)
    torch.testing.assert_close(got.logits, want.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(got.loss, want.loss, atol=1e-5, rtol=0)
    ours.save_pretrained(tmp_path / "ours")
    theirs_cfg = json.loads((folder / "config.json").read_text())
    assert json.loads((tmp_path / "ours" / "config.json").read_text()) == theirs_cfg
    back = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "ours", dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=ids, attention_mask=mask, labels=labels).logits, want.logits,
                                   atol=1e-4, rtol=0)


def test_pickle_through_the_converter(bart, tmp_path):
    src = tmp_path / "bin"
    shutil.copytree(bart, src)
    hf = transformers.BartForConditionalGeneration.from_pretrained(bart).eval()
    state = hf.state_dict()  # bart-large-cnn's pickle: every tied copy present
    (src / "model.safetensors").unlink()
    torch.save({k: v.clone() for k, v in state.items()}, src / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pickle"):
        EncoderDecoderModel.from_pretrained(src)
    convert(str(src), str(tmp_path / "st"))
    ids, mask, _ = batch(2)
    with torch.no_grad():
        torch.testing.assert_close(EncoderDecoderModel.from_pretrained(tmp_path / "st").decode(
            torch.tensor([[2, 0, 7]] * 2), *_memory(EncoderDecoderModel.from_pretrained(bart), ids, mask)),
            hf(input_ids=ids, attention_mask=mask, decoder_input_ids=torch.tensor([[2, 0, 7]] * 2)).logits,
            atol=1e-4, rtol=0)


def _memory(model, ids, mask):
    return model.memory_kv(model.encode(ids, mask)), mask.bool()[:, None, None, :]


@pytest.mark.parametrize("model_type", ["mbart", "pegasus"])
def test_mbart_and_pegasus_refused_by_name(model_type, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type, "d_model": 16}))
    with pytest.raises(ValueError, match=f"model_type '{model_type}'.*not supported"):
        EncoderDecoderModel.from_pretrained(tmp_path)


def up_to_eos(rows: torch.Tensor) -> list[list[int]]:
    return [row[: row.index(2, 1) + 1] if 2 in row[1:] else row for row in rows.tolist()]


@pytest.mark.parametrize("settings", [dict(max_length=20), CNN, dict(CNN, num_return_sequences=2)],
                         ids=["greedy", "cnn-beam4", "cnn-beam4-return2"])
def test_generation_tokens_on_articles(bart, settings):
    """transformers' generate of each article alone; ours in calls and in flight, all at once."""
    hf = transformers.BartForConditionalGeneration.from_pretrained(bart).eval()
    ours = EncoderDecoderModel.from_pretrained(bart)
    tok = Tokenizer.from_pretrained(bart)
    enc = tok([a["article"] for a in articles(5)], max_length=60, truncation=True, padding=True)
    want = []
    for i in range(5):
        n = int(enc["attention_mask"][i].sum())
        with torch.no_grad():
            out = hf.generate(input_ids=enc["input_ids"][i:i + 1, :n],
                              attention_mask=enc["attention_mask"][i:i + 1, :n], output_scores=True,
                              return_dict_in_generate=True, **settings)
        want += up_to_eos(out.sequences)
        if settings.get("num_beams", 1) > 1:
            _, scores = ours.generate(enc["input_ids"][i:i + 1, :n], enc["attention_mask"][i:i + 1, :n],
                                      return_scores=True, **settings)
            torch.testing.assert_close(scores, out.sequences_scores, atol=1e-4, rtol=0)
    assert want[0][:2] == [2, 0]  # decoder start </s>, then the forced <s>
    for inflight in (False, True):
        got = ours.generate(enc["input_ids"], enc["attention_mask"], inflight=inflight, **settings)
        assert up_to_eos(got) == want, inflight


def test_sampling_with_a_seed(bart):
    hf = transformers.BartForConditionalGeneration.from_pretrained(bart).eval()
    ours = EncoderDecoderModel.from_pretrained(bart)
    tok = Tokenizer.from_pretrained(bart)
    for article in articles(2):
        enc = tok([article["article"]], max_length=60, truncation=True)
        torch.manual_seed(5)
        with torch.no_grad():
            want = hf.generate(**enc, do_sample=True, top_k=20, temperature=0.8, max_length=16)
        got = ours.generate(enc["input_ids"], enc["attention_mask"], do_sample=True, seed=5, top_k=20,
                            temperature=0.8, max_length=16)
        assert up_to_eos(got) == up_to_eos(want)
