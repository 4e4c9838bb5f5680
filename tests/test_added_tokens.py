"""Added tokens in every tokenizer kind (WordPiece: MiniLM's vocabulary; byte-level BPE: gpt2 and roberta-base;
SentencePiece: the spiece_dir fixture), in the folder layouts transformers reads (tokenizer.json as transformers
5 saves it; the vocabulary files with tokenizer_config.json's added_tokens_decoder, or with added_tokens.json):
ids, decoded text and special-token roles as transformers'. And clean_up_tokenization_spaces, True and False."""

from __future__ import annotations

import json
import pathlib
import random
import shutil

import pytest
import transformers

from model import Tokenizer
from tests.helpers import MINILM, ROOT, articles, wmt_sentences

transformers.logging.set_verbosity_error()
BPE = ROOT / "data" / "bpe"
ADDED = ["zzword", "New Tok", "<x1>"]
SPECIAL = {"pad_token": "<pad>"}  # GPT-2 has none: the common case
EXTRA = {"additional_special_tokens": ["<extra>"]}


def strings() -> list[str]:
    """300 pieces of CNN/DailyMail articles and WMT sentences, added tokens inserted into every third."""
    rng = random.Random(0)
    texts = [r["article"] for r in articles(20)] + wmt_sentences()
    out = []
    while len(out) < 300:
        text = rng.choice(texts)
        start = rng.randrange(max(1, len(text) - 200))
        piece = text[start:start + rng.randrange(20, 200)]
        if len(out) % 3 == 0:
            at = rng.randrange(len(piece) + 1)
            token = rng.choice([*ADDED, "<pad>", "<extra>"])
            piece = piece[:at] + rng.choice(["", " "]) + token + rng.choice(["", " "]) + piece[at:]
        out.append(piece)
    return out


STRINGS = strings()


def base(kind: str, folder: pathlib.Path, spiece_dir: pathlib.Path) -> pathlib.Path:
    """The kind's vocabulary as a folder transformers loads."""
    folder.mkdir(parents=True)
    if kind == "wordpiece":
        for name in ("vocab.txt", "tokenizer_config.json"):
            shutil.copy(MINILM / name, folder / name)
    elif kind == "sentencepiece":
        shutil.copytree(spiece_dir, folder, dirs_exist_ok=True)
    else:
        name, cls = {"gpt2": ("gpt2", "GPT2Tokenizer"), "roberta": ("roberta-base", "RobertaTokenizer")}[kind]
        for file in ("vocab.json", "merges.txt"):
            shutil.copy(BPE / name / file, folder / file)
        (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": cls}))
    return folder


def with_added(kind: str, tmp: pathlib.Path, spiece_dir: pathlib.Path, layout: str,
               config: dict | None = None) -> pathlib.Path:
    """A folder with added tokens, written by transformers (`saved`) or turned into a legacy layout: the
    vocabulary files with added_tokens_decoder in tokenizer_config.json, or with added_tokens.json."""
    tok = transformers.AutoTokenizer.from_pretrained(base(kind, tmp / "base", spiece_dir))
    tok.add_tokens(ADDED)
    tok.add_special_tokens({**SPECIAL, **EXTRA} if kind == "gpt2" else EXTRA)
    out = tmp / layout
    tok.save_pretrained(out)
    saved = json.loads((out / "tokenizer_config.json").read_text())
    saved.update(config or {})
    if layout != "saved" and kind != "sentencepiece":
        (out / "tokenizer.json").unlink()
        for file in (tmp / "base").iterdir():
            if file.name != "tokenizer_config.json":
                shutil.copy(file, out / file.name)
    vocab_size = tok.vocab_size
    added = {i: t for i, t in tok.added_tokens_decoder.items() if i >= vocab_size}
    saved.pop("added_tokens_decoder", None)
    if layout == "added_tokens_decoder":
        saved["added_tokens_decoder"] = {str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized,
                                                  "rstrip": t.rstrip, "single_word": t.single_word,
                                                  "special": t.special} for i, t in added.items()}
    elif layout == "added_tokens.json":
        (out / "added_tokens.json").write_text(json.dumps({t.content: i for i, t in added.items()}))
        saved.pop("extra_special_tokens", None)
        saved.update(EXTRA)
    (out / "tokenizer_config.json").write_text(json.dumps(saved))
    return out


def assert_as_transformers(folder: pathlib.Path, texts: list[str]) -> None:
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    ours = Tokenizer.from_pretrained(folder)
    expected = hf(texts, truncation=False).input_ids
    got = ours.encode_batch(texts, truncation=False)
    assert got == expected
    for skip in (True, False):
        assert ours.batch_decode(got, skip_special_tokens=skip) == hf.batch_decode(expected, skip_special_tokens=skip)
    for role in ("pad", "eos", "bos", "unk"):
        assert getattr(ours, f"{role}_token_id") == getattr(hf, f"{role}_token_id"), role
    assert len(ours) == len(hf)


KINDS = ["wordpiece", "gpt2", "roberta", "sentencepiece"]


@pytest.mark.parametrize("layout", ["saved", "added_tokens_decoder", "added_tokens.json"])
@pytest.mark.parametrize("kind", KINDS)
def test_added_tokens_as_transformers(kind, layout, tmp_path, spiece_dir):
    folder = with_added(kind, tmp_path, spiece_dir, layout)
    if kind == "gpt2":
        assert Tokenizer.from_pretrained(folder).pad_token_id == 50260  # after the three added
    assert_as_transformers(folder, STRINGS)


CLEANUP_TEXTS = ["It 's a test . Is it ? Yes ! No , they 're here , I 've seen ' em ; don 't , I 'm sure n't",
                 "Hello , world . she said ' hi ' to me ."] + STRINGS[:40]


@pytest.mark.parametrize("clean_up", [True, False])
@pytest.mark.parametrize("kind", KINDS)
def test_clean_up_tokenization_spaces_as_transformers(kind, clean_up, tmp_path, spiece_dir):
    folder = with_added(kind, tmp_path, spiece_dir, "saved", {"clean_up_tokenization_spaces": clean_up})
    assert_as_transformers(folder, CLEANUP_TEXTS)
    if kind in ("gpt2", "roberta"):  # transformers 5 cleans a BPE vocabulary's text only when forced to
        forced = with_added(kind, tmp_path / "forced", spiece_dir, "saved", {
            "clean_up_tokenization_spaces": clean_up,
            "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output": True})
        assert_as_transformers(forced, CLEANUP_TEXTS)
