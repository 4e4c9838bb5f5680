"""Byte-level BPE parity with transformers' RobertaTokenizerFast and GPT2TokenizerFast on the real roberta-base
and gpt2 vocabularies (data/bpe), and the two-vocabulary folder layout (encoder's tokenizer at the root, the
decoder's in decoder_tokenizer/)."""

import json
import pathlib
import random
import shutil

import pytest
import torch
import transformers

from model import Tokenizer
from model.tokenization import load_tokenizers, save_tokenizers, special_token_ids
from tests.helpers import MINILM, ROOT, wmt_sentences

BPE = ROOT / "data" / "bpe"
FAMILIES = {"roberta": ("roberta-base", transformers.RobertaTokenizerFast),
            "gpt2": ("gpt2", transformers.GPT2TokenizerFast)}
EDGES = ["", " ", "  ", "\t", "\n", " \n ", "a", " leading space", "trailing space ", "multiple   spaces  inside",
         "\ttab first\tand\ttabs", "line\nbreaks\r\nand\n\n\nblank lines", "Café au lait — naïve façade, Ångström",
         "Zürich, São Paulo, Kraków, Reykjavík, İstanbul", "ﬁ ligature, Ⅻ, ½, x²", "e\u0301 combining acute",
         "中文字符 and 日本語のテキスト and 한국어",
         "emoji 🤖🎉 👩\u200d👩\u200d👧 🇫🇷 ❤️ 🏳️\u200d🌈", "non\u00a0breaking\u2009thin\u3000ideo",
         "zero\u200bwidth", "It's, they're, we'll, I'd, don't", "  <s> raw </s> <pad> <unk> <mask> x<mask>y",
         "<|endoftext|>Text after<|endoftext|>", "$1,234.56 (+7%) & 100°C; email: a.b@c.org #tag",
         "URLs: https://example.com/path?q=1&r=2", "....!!!???---", "   \t  \n  "]


def real_strings() -> list[str]:
    rows = [json.loads(line) for line in (ROOT / "data" / "cnndm_200.jsonl").read_text("utf-8").splitlines()]
    # 50 whole articles and the openings of the others: the file's time
    texts = [r["highlights"] for r in rows] + [r["article"] for r in rows[:50]]
    texts += [r["article"][:300] for r in rows[50:]]
    for line in (ROOT / "data" / "xsum_sample.jsonl").read_text("utf-8").splitlines():
        row = json.loads(line)
        texts += [row["document"], row["summary"]]
    targets = sorted((ROOT / "data" / "wmt_en_ro").glob("*.target"))  # Romanian: ș, ț, ă, î, â
    sentences = wmt_sentences() + [s for f in targets for s in f.read_text("utf-8").splitlines()]
    rnd = random.Random(0)
    inserts = ["  ", "\t", "\n", " \u00a0", "🤖", "é", "<s>", "</s>", "<|endoftext|>", " <mask>", "中"]
    spliced = []
    for s in sentences:
        i = rnd.randrange(len(s) + 1)
        spliced.append(s[:i] + rnd.choice(inserts) + s[i:])
    return texts + sentences + spliced + EDGES + [" " + s for s in EDGES]


TEXTS = real_strings()
TRUNCATED = [(True, 5), (True, 64), (False, 7)]  # (add_special_tokens, max_length)


def vocab_folder(family: str, folder: pathlib.Path, model_config: dict | None = None,
                 tokenizer_config: dict | None = None) -> pathlib.Path:
    """vocab.json + merges.txt alone with a config.json (how checkpoints published before 2022 come)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(BPE / FAMILIES[family][0] / name, folder / name)
    for name, content in (("config.json", model_config), ("tokenizer_config.json", tokenizer_config)):
        if content is not None:
            (folder / name).write_text(json.dumps(content))
    return folder


@pytest.fixture(scope="module")
def oracles(tmp_path_factory) -> dict[str, transformers.PreTrainedTokenizerBase]:
    # transformers 5 ignores vocab_file=/merges_file= keywords (its classes take vocab=, merges=); from_pretrained
    # on the folder is how it reads vocab.json + merges.txt
    return {family: cls.from_pretrained(str(vocab_folder(family, tmp_path_factory.mktemp(family))))
            for family, (_, cls) in FAMILIES.items()}


@pytest.fixture(scope="module")
def expected(oracles) -> dict[str, dict]:
    """transformers' ids of TEXTS, computed once per vocabulary: full, without special tokens, truncated."""
    out = {}
    for family, hf in oracles.items():
        ids = {(True, None): hf(TEXTS)["input_ids"], (False, None): hf(TEXTS, add_special_tokens=False)["input_ids"]}
        for special, n in TRUNCATED:
            ids[special, n] = hf(TEXTS, truncation=True, max_length=n, add_special_tokens=special)["input_ids"]
        out[family] = ids
    return out


@pytest.fixture(scope="module", params=[(f, s) for f in FAMILIES for s in ("vocab.json", "tokenizer.json")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def pair(request, oracles, expected, tmp_path_factory) -> tuple[Tokenizer, transformers.PreTrainedTokenizerBase,
                                                                 dict]:
    family, source = request.param
    hf = oracles[family]
    folder = tmp_path_factory.mktemp(f"{family}-{source}")
    if source == "vocab.json":
        vocab_folder(family, folder, model_config={"model_type": family})
    else:
        hf.save_pretrained(str(folder))
        assert (folder / "tokenizer.json").exists() and not (folder / "vocab.json").exists()
    return Tokenizer.from_pretrained(folder), hf, expected[family]


def test_ids_equal_transformers(pair):
    tok, _, ids = pair
    assert len(TEXTS) >= 500
    for special in (True, False):
        assert tok.encode_batch(TEXTS, truncation=False, add_special_tokens=special) == ids[special, None]
    for special, n in TRUNCATED:
        rows, cut = tok.encode_truncated(TEXTS, max_length=n, add_special_tokens=special)
        assert rows == ids[special, n]
        assert cut == [len(row) > n for row in ids[special, None]]


def test_decoded_text_equal_transformers(pair):
    tok, hf, ids = pair
    rows = ids[True, None] + ids[True, 5] + ids[False, 7]  # truncated rows end inside characters
    rnd = random.Random(1)
    rows += [[rnd.randrange(len(hf)) for _ in range(rnd.randrange(25))] for _ in range(300)]  # any id, specials too
    rows += [hf.all_special_ids * 2]
    for skip in (True, False):
        assert tok.batch_decode(rows, skip_special_tokens=skip) == hf.batch_decode(rows, skip_special_tokens=skip)
    assert tok.decode(torch.tensor(rows[0])) == hf.decode(rows[0], skip_special_tokens=True)


def test_special_tokens_as_transformers(pair):
    tok, hf, _ = pair
    names = ("cls", "sep", "bos", "eos", "pad", "unk", "mask")
    ours = {n: getattr(tok, f"{n}_token_id") for n in names}
    assert ours == {n: getattr(hf, f"{n}_token_id") for n in names}
    if isinstance(hf, transformers.RobertaTokenizerFast):
        assert ours == {"cls": 0, "sep": 2, "bos": 0, "eos": 2, "pad": 1, "unk": 3, "mask": 50264}
        assert (len(tok), tok.vocab_size) == (50265, 50265)
    else:
        assert ours == {"cls": None, "sep": None, "bos": 50256, "eos": 50256, "pad": None, "unk": 50256, "mask": None}
        assert (len(tok), tok.vocab_size) == (50257, 50257)
    assert (tok.kind, len(tok), sorted(tok.all_special_ids)) == ("bpe", len(hf), sorted(hf.all_special_ids))


def test_call_pads_as_transformers(pair):
    tok, hf, _ = pair
    batch = TEXTS[-60:]
    if hf.pad_token_id is None:  # GPT-2: see test_gpt2_padding_needs_a_pad_token
        with pytest.raises(ValueError, match="no pad token"):
            tok(batch, max_length=40)
        return
    for kwargs in ({"padding": True}, {"padding": "max_length"}):
        ours = tok(batch, max_length=40, **kwargs)
        theirs = hf(batch, truncation=True, max_length=40, return_tensors="pt", **kwargs)
        assert set(ours) == set(theirs) == {"input_ids", "attention_mask"}
        assert torch.equal(ours["input_ids"], theirs["input_ids"])
        assert torch.equal(ours["attention_mask"], theirs["attention_mask"])


def test_gpt2_padding_needs_a_pad_token(oracles, tmp_path):
    folder = vocab_folder("gpt2", tmp_path / "gpt2", tokenizer_config={"tokenizer_class": "GPT2TokenizerFast"})
    tok, hf = Tokenizer.from_pretrained(folder), oracles["gpt2"]
    batch = ["A short one.", "And a longer text, with more tokens in it."]
    with pytest.raises(ValueError, match="no pad token"):
        tok(batch)
    with pytest.raises(ValueError, match="padding token"):
        hf(batch, padding=True)
    assert tok(batch, padding=False)["input_ids"] == hf(batch)["input_ids"]
    assert tok(batch[:1], padding=False, return_tensors="pt")["input_ids"].tolist() == hf(batch[:1])["input_ids"]

    hf = transformers.GPT2TokenizerFast.from_pretrained(str(folder))
    tok.pad_token, hf.pad_token = tok.eos_token, hf.eos_token  # the bert2gpt2 model card's recipe
    assert tok.pad_token_id == hf.pad_token_id == 50256
    assert torch.equal(tok(batch)["input_ids"], hf(batch, padding=True, return_tensors="pt")["input_ids"])
    assert torch.equal(tok(batch)["attention_mask"], hf(batch, padding=True, return_tensors="pt")["attention_mask"])
    tok.save_pretrained(tmp_path / "saved")
    assert Tokenizer.from_pretrained(tmp_path / "saved").pad_token_id == 50256
    assert transformers.AutoTokenizer.from_pretrained(str(tmp_path / "saved")).pad_token_id == 50256
    assert Tokenizer.from_pretrained(folder, pad_token="<|endoftext|>").pad_token_id == 50256
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok.pad_token = "<pad>"


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_folder_loads_in_transformers(family, oracles, tmp_path):
    tok = Tokenizer.from_pretrained(vocab_folder(family, tmp_path / "src", model_config={"model_type": family}))
    assert tok.model_max_length == {"roberta": 512, "gpt2": 1024}[family]  # the models' positions
    tok.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == [
        "merges.txt", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.json"]
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "saved"))
    assert type(hf) is FAMILIES[family][1]
    texts = TEXTS[::7]
    assert hf(texts)["input_ids"] == oracles[family](texts)["input_ids"] == tok.encode_batch(texts, truncation=False)
    assert hf.pad_token_id == oracles[family].pad_token_id
    (tmp_path / "saved" / "tokenizer.json").unlink()  # the vocabulary files we wrote, alone
    assert Tokenizer.from_pretrained(tmp_path / "saved").encode_batch(texts, truncation=False) == \
        tok.encode_batch(texts, truncation=False)
    for name in ("vocab.json", "merges.txt"):
        assert (tmp_path / "saved" / name).read_bytes() == (BPE / FAMILIES[family][0] / name).read_bytes() or \
            name == "vocab.json" and json.loads((tmp_path / "saved" / name).read_text("utf-8")) == \
            json.loads((BPE / FAMILIES[family][0] / name).read_text("utf-8"))


def test_which_bpe_tokenizer_and_clear_errors(tmp_path):
    encoder_decoder = {"model_type": "encoder-decoder", "encoder": {"model_type": "roberta"},
                       "decoder": {"model_type": "gpt2"}}
    tok = Tokenizer.from_pretrained(vocab_folder("roberta", tmp_path / "ed", model_config=encoder_decoder))
    assert (tok.cls_token_id, tok.pad_token_id) == (0, 1)
    tok = Tokenizer.from_pretrained(vocab_folder("gpt2", tmp_path / "tc", tokenizer_config={
        "tokenizer_class": "GPT2Tokenizer"}, model_config={"model_type": "roberta"}))  # tokenizer_class first
    assert (tok.bos_token_id, tok.pad_token_id) == (50256, None)
    with pytest.raises(ValueError, match="tokenizer_class .*RobertaTokenizer or GPT2Tokenizer.* model_type"):
        Tokenizer.from_pretrained(vocab_folder("gpt2", tmp_path / "bare"))
    for name, config in (("bart", {"tokenizer_class": "BartTokenizer"}), ("bart-type", None)):  # RoBERTa's
        tok = Tokenizer.from_pretrained(vocab_folder("roberta", tmp_path / name, tokenizer_config=config,
                                                     model_config={"model_type": "bart"}))
        assert (tok.cls_token_id, tok.pad_token_id, tok.eos_token_id) == (0, 1, 2)
    with pytest.raises(ValueError, match="'CLIPTokenizer' with a byte-level BPE vocabulary is not supported"):
        Tokenizer.from_pretrained(vocab_folder("gpt2", tmp_path / "clip",
                                               tokenizer_config={"tokenizer_class": "CLIPTokenizer"}))
    with pytest.raises(ValueError, match=r"special tokens \['</s>', '<s>'\] are not in the vocabulary"):
        Tokenizer.from_pretrained(vocab_folder("gpt2", tmp_path / "wrong", model_config={"model_type": "roberta"}))


def test_special_token_ids_of_bpe_vocabularies(tmp_path):
    roberta = vocab_folder("roberta", tmp_path / "roberta", model_config={"model_type": "roberta"})
    gpt2 = vocab_folder("gpt2", tmp_path / "gpt2", model_config={"model_type": "gpt2"})
    assert special_token_ids(str(roberta)) == {"decoder_start_token_id": 0, "pad_token_id": 1, "eos_token_id": 2}
    assert special_token_ids(str(gpt2)) == {"decoder_start_token_id": 50256, "pad_token_id": None,
                                            "eos_token_id": 50256}


def test_two_vocabularies_layout(tmp_path):
    """bert2gpt2: BERT's WordPiece for the articles at the root, GPT-2's BPE for the summaries beside it."""
    bert = Tokenizer.from_pretrained(MINILM)
    gpt2 = Tokenizer.from_pretrained(vocab_folder("gpt2", tmp_path / "gpt2", model_config={"model_type": "gpt2"}))
    folder = tmp_path / "bert2gpt2"
    save_tokenizers(folder, bert, gpt2)
    assert (folder / "vocab.txt").exists() and (folder / "decoder_tokenizer" / "vocab.json").exists()
    assert type(transformers.AutoTokenizer.from_pretrained(str(folder))).__name__ == "BertTokenizer"
    assert type(transformers.AutoTokenizer.from_pretrained(str(folder / "decoder_tokenizer"))) is \
        transformers.GPT2TokenizerFast
    encoder, decoder = load_tokenizers(folder)
    assert (encoder.kind, decoder.kind) == ("wordpiece", "bpe")
    text = ["An article, tokenized by BERT; its summary by GPT-2."]
    assert encoder(text)["input_ids"].tolist() == bert(text)["input_ids"].tolist()
    assert decoder.encode_batch(text) == gpt2.encode_batch(text) == [[2025, 2708, 11, 11241, 1143, 416, 347, 17395,
                                                                      26, 663, 10638, 416, 402, 11571, 12, 17, 13]]
    assert special_token_ids(str(folder)) == {"decoder_start_token_id": 50256, "pad_token_id": None,
                                              "eos_token_id": 50256}
    # a checkpoint with one tokenizer, the decoder's given apart
    single = tmp_path / "bert2bert"
    save_tokenizers(single, bert, bert)
    assert not (single / "decoder_tokenizer").exists()
    encoder, decoder = load_tokenizers(single)
    assert encoder is decoder and encoder.kind == "wordpiece"
    assert special_token_ids(str(single)) == {"decoder_start_token_id": 101, "pad_token_id": 0, "eos_token_id": 102}
    encoder, decoder = load_tokenizers(single, decoder_tokenizer=folder / "decoder_tokenizer")
    assert (encoder.kind, decoder.kind, decoder.eos_token_id) == ("wordpiece", "bpe", 50256)
    # saving one vocabulary over the pair removes the decoder's folder
    save_tokenizers(folder, bert, Tokenizer.from_pretrained(MINILM))
    assert not (folder / "decoder_tokenizer").exists()
