"""Tokenizer parity with transformers' BertTokenizerFast on real text."""

import json
import pathlib
import shutil

import pytest
import torch
import transformers

from model import Tokenizer
from tests.helpers import MINILM

DATA = pathlib.Path(__file__).resolve().parents[1] / "data"


def real_texts() -> list[str]:
    texts = []
    for line in (DATA / "cnndm_200.jsonl").read_text().splitlines():
        row = json.loads(line)
        texts += [row["article"], row["highlights"]]
    for line in (DATA / "xsum_sample.jsonl").read_text().splitlines():
        row = json.loads(line)
        texts += [row["document"], row["summary"]]
    texts += ["Café au lait — naïve façade!", "中文字符 and émojis 🤖", "  spaced\tout\n", "", "[CLS] raw [SEP]"]
    return texts


@pytest.fixture(scope="module", params=["tokenizer.json", "vocab.txt"])
def pair(request, tmp_path_factory):
    folder = MINILM
    if request.param == "vocab.txt":
        folder = tmp_path_factory.mktemp("vocab_only")
        for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "config.json"):
            shutil.copy(MINILM / name, folder / name)
    return Tokenizer.from_pretrained(folder), transformers.AutoTokenizer.from_pretrained(str(folder))


def test_encode_with_truncation_and_padding(pair):
    ours, hf = pair
    texts = real_texts()
    assert len(texts) > 400
    for start in range(0, len(texts), 64):
        chunk = texts[start:start + 64]
        for max_length in (16, 128, 512):
            a = ours(chunk, max_length=max_length, truncation=True, padding=True)
            b = hf(chunk, max_length=max_length, truncation=True, padding=True, return_tensors="pt")
            assert torch.equal(a["input_ids"], b["input_ids"])
            assert torch.equal(a["attention_mask"], b["attention_mask"])


def test_decode_matches(pair):
    ours, hf = pair
    texts = real_texts()
    ids = ours(texts, max_length=200)["input_ids"]
    assert ours.batch_decode(ids, skip_special_tokens=True) == hf.batch_decode(ids, skip_special_tokens=True)
    assert ours.batch_decode(ids, skip_special_tokens=False) == hf.batch_decode(ids, skip_special_tokens=False)


def test_special_ids_and_save_round_trip(tmp_path):
    tok = Tokenizer.from_pretrained(MINILM)
    assert (tok.cls_token_id, tok.sep_token_id, tok.pad_token_id, tok.vocab_size) == (101, 102, 0, 30522)
    tok.save_pretrained(tmp_path)
    again = Tokenizer.from_pretrained(tmp_path)
    text = ["Round trip, with punctuation: yes."]
    assert torch.equal(tok(text)["input_ids"], again(text)["input_ids"])
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert hf(text)["input_ids"] == tok(text)["input_ids"].tolist()


def test_missing_tokenizer_files_is_clear(tmp_path):
    missing = r"no tokenizer.json, spiece.model, vocab.json \+ merges.txt or vocab.txt"
    with pytest.raises(FileNotFoundError, match=missing):
        Tokenizer.from_pretrained(tmp_path)
