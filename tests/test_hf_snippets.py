"""The code samples of transformers' EncoderDecoderModel page, as written there: only the import line changed
(`from model import ...`) and hub names replaced by local folders. Each runs once with transformers and once
with this package, and prints (or computes) the same thing on the same folders."""

from __future__ import annotations

import contextlib
import io
import pathlib

import pytest
import torch
import transformers

from model import BatchEncoding, EncoderDecoderModel, Tokenizer
from tests.helpers import BOS, EOS, PAD, random_bert2bert, tiny_hf

# the page's AutoModel sample; transformers maps no encoder-decoder to AutoModelForCausalLM, so its side runs
# the same sample with AutoModelForSeq2SeqLM (ours takes either name)
SUMMARIZE = '''
import torch
from {lib} import {auto}, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{bert2bert}")
model = {auto}.from_pretrained("{bert2bert}", dtype=torch.bfloat16, device_map="auto",attn_implementation="sdpa")

text = "Plants create energy through a process known as photosynthesis. This involves capturing sunlight and converting carbon dioxide and water into glucose and oxygen."

inputs = tokenizer(text, return_tensors="pt", truncation=True, padding=True).to(model.device)

summary = model.generate(**inputs, max_length=60, num_beams=4, early_stopping=True)
print(tokenizer.decode(summary[0], skip_special_tokens=True))
'''

WARM_START_LOSS = '''
from {lib} import BertTokenizer, EncoderDecoderModel

tokenizer = BertTokenizer.from_pretrained("{bert}")
model = EncoderDecoderModel.from_encoder_decoder_pretrained("{bert}", "{bert}")

model.config.decoder_start_token_id = tokenizer.cls_token_id
model.config.pad_token_id = tokenizer.pad_token_id

input_ids = tokenizer(
    "The tower is 324 metres (1,063 ft) tall, about the same height as an 81-storey building, and the tallest structure in Paris. Its base is square, measuring 125 metres (410 ft) on each side.During its construction, the Eiffel Tower surpassed the Washington Monument to become the tallest man-made structure in the world, a title it held for 41 years until the Chrysler Building in New York City was  finished in 1930. It was the first structure to reach a height of 300 metres. Due to the addition of a broadcasting aerial at the top of the tower in 1957, it is now taller than the Chrysler Building by 5.2 metres (17 ft).Excluding transmitters, the Eiffel Tower is the second tallest free-standing structure in France after the Millau Viaduct.",
    return_tensors="pt",
).input_ids

labels = tokenizer(
    "the eiffel tower surpassed the washington monument to become the tallest structure in the world. it was the first structure to reach a height of 300 metres in paris in 1930. it is now taller than the chrysler building by 5. 2 metres ( 17 ft ) and is the second tallest free - standing structure in paris.",
    return_tensors="pt",
).input_ids

# the forward function automatically creates the correct decoder_input_ids
loss = model(input_ids=input_ids, labels=labels).loss
'''

RANDOM_INIT = '''
from {lib} import BertConfig, EncoderDecoderConfig, EncoderDecoderModel

config_encoder = BertConfig()
config_decoder = BertConfig()

config = EncoderDecoderConfig.from_encoder_decoder_configs(config_encoder, config_decoder)
model = EncoderDecoderModel(config=config)
'''

TRANSLATE = '''
from {lib} import AutoTokenizer, EncoderDecoderModel

# Load a pre-trained translation model
model_name = "{wmt}"
tokenizer = AutoTokenizer.from_pretrained(model_name, pad_token="<pad>", eos_token="</s>", bos_token="<s>")
model = EncoderDecoderModel.from_pretrained(model_name)

# Input sentence to translate
input_text = "Plants create energy through a process known as"

# Encode the input text
inputs = tokenizer(input_text, return_tensors="pt", add_special_tokens=False).input_ids

# Generate the translated output
outputs = model.generate(inputs)[0]

# Decode the output tokens to get the translated sentence
translated_text = tokenizer.decode(outputs, skip_special_tokens=True)

print("Translated text:", translated_text)
'''


def run(snippet: str, lib: str, **names) -> tuple[str, dict]:
    """What the snippet prints, and its variables."""
    scope: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(snippet.format(lib=lib, **names), scope)  # the page's code, as written
    return out.getvalue(), scope


def sharpened(model: torch.nn.Module) -> None:
    """Weights of std 0.3 (not 0.02): peaked next-token distributions, whose choices bf16 rounding cannot flip,
    and outputs that depend on the input."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)


@pytest.fixture(scope="module")
def bert2bert(tmp_path_factory) -> pathlib.Path:
    """A random bert2bert with MiniLM's vocabulary and sharpened weights (the stand-in for the page's
    patrickvonplaten/bert2bert-cnn_dailymail-fp16)."""
    folder = random_bert2bert(tmp_path_factory.mktemp("b2b"), hidden=64, layers=2, intermediate=128)
    model = EncoderDecoderModel.from_pretrained(folder)
    torch.manual_seed(0)
    sharpened(model)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def wmt_dir(spiece_dir, tmp_path_factory) -> pathlib.Path:
    """A random BertGeneration encoder-decoder on a SentencePiece vocabulary with the page's special tokens and
    its own generation settings, saved by transformers (the stand-in for google/bert2bert_L-24_wmt_en_de)."""
    model = tiny_hf("gen", vocab=len(Tokenizer.from_pretrained(spiece_dir)), seed=5)
    sharpened(model)
    model.config.decoder_start_token_id, model.config.eos_token_id, model.config.pad_token_id = BOS, EOS, PAD
    model.generation_config = transformers.GenerationConfig(
        decoder_start_token_id=BOS, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, num_beams=4, max_length=16)
    folder = tmp_path_factory.mktemp("wmt")
    model.save_pretrained(str(folder))
    transformers.AutoTokenizer.from_pretrained(str(spiece_dir)).save_pretrained(str(folder))
    return folder


def test_summarize_sample_prints_what_transformers_prints(bert2bert):
    theirs, _ = run(SUMMARIZE, "transformers", auto="AutoModelForSeq2SeqLM", bert2bert=bert2bert)
    ours, scope = run(SUMMARIZE, "model", auto="AutoModelForCausalLM", bert2bert=bert2bert)
    assert ours == theirs and len(ours.split()) > 3
    assert isinstance(scope["model"], EncoderDecoderModel) and scope["model"].dtype == torch.bfloat16
    inputs = scope["inputs"]
    assert isinstance(inputs, BatchEncoding) and set(inputs) == {"input_ids", "attention_mask", "token_type_ids"}
    assert inputs.input_ids is inputs["input_ids"] and inputs.input_ids.shape[0] == 1


def test_warm_start_and_loss_samples_give_transformers_loss(minilm_dir, tmp_path):
    _, theirs = run(WARM_START_LOSS, "transformers", bert=minilm_dir)
    _, ours = run(WARM_START_LOSS, "model", bert=minilm_dir)
    assert torch.equal(ours["input_ids"], theirs["input_ids"]) and torch.equal(ours["labels"], theirs["labels"])
    assert ours["model"].config.decoder_start_token_id == theirs["model"].config.decoder_start_token_id == 101
    hf_encoder = theirs["model"].encoder.state_dict()
    assert torch.equal(ours["model"].state_dict()["encoder.layers.0.attn.q.weight"],
                       hf_encoder["encoder.layer.0.attention.self.query.weight"])
    # the fresh cross-attention differs (each library draws its own); with transformers' draw, the same loss
    theirs["model"].save_pretrained(tmp_path)
    same = EncoderDecoderModel.from_pretrained(tmp_path)
    same.config.decoder_start_token_id = ours["model"].config.decoder_start_token_id
    loss = same(input_ids=ours["input_ids"], labels=ours["labels"]).loss
    assert abs(loss.item() - theirs["loss"].item()) < 1e-4 and ours["loss"].item() > 0


def test_random_init_sample_builds_transformers_architecture():
    _, theirs = run(RANDOM_INIT, "transformers")
    _, ours = run(RANDOM_INIT, "model")
    assert sum(p.numel() for p in ours["model"].parameters()) == sum(p.numel() for p in theirs["model"].parameters())
    for side in ("encoder", "decoder"):
        a, b = getattr(ours["config"], side), getattr(theirs["config"], side)
        assert (a.hidden_size, a.num_hidden_layers, a.vocab_size, a.is_decoder, a.add_cross_attention) == (
            b.hidden_size, b.num_hidden_layers, b.vocab_size, b.is_decoder, b.add_cross_attention)


def test_translation_sample_prints_what_transformers_prints(wmt_dir):
    theirs, _ = run(TRANSLATE, "transformers", wmt=wmt_dir)
    ours, _ = run(TRANSLATE, "model", wmt=wmt_dir)
    assert ours == theirs and ours.startswith("Translated text: ") and len(ours.split()) > 3


def test_placement_keywords_that_cannot_be_honoured_are_refused(bert2bert_dir):
    for kwargs, message in (({"attn_implementation": "eager"}, "sdpa"),
                            ({"device_map": {"encoder": 0}}, "per-module"),
                            ({"device_map": "cuda:0"}, "no CUDA device"),
                            ({"dtype": "float64"}, "dtype must be")):
        with pytest.raises(ValueError, match=message):
            EncoderDecoderModel.from_pretrained(bert2bert_dir, **kwargs)
    model = EncoderDecoderModel.from_pretrained(bert2bert_dir, torch_dtype="bfloat16", device_map="cpu")
    assert (model.dtype, model.device.type) == (torch.bfloat16, "cpu")


def test_tokenizer_keywords_as_transformers(minilm_dir):
    tok, hf = Tokenizer.from_pretrained(minilm_dir), transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
    texts = ["A short one.", "A somewhat longer sentence about the weather today."]
    for kwargs in ({"padding": "max_length", "max_length": 16, "return_tensors": "pt"},
                   {"padding": "longest", "return_tensors": "pt"},
                   {"padding": True, "truncation": "longest_first", "max_length": 6, "return_tensors": "pt"}):
        ours, theirs = tok(texts, **kwargs), hf(texts, **kwargs)
        assert set(ours) == set(theirs)
        for key in theirs:
            assert torch.equal(ours[key], theirs[key]), (kwargs, key)
    assert tok(texts, padding=False).input_ids == hf(texts).input_ids
    with pytest.raises(ValueError, match="padding=True"):
        tok(texts, padding=False, return_tensors="pt")
    with pytest.raises(ValueError, match="return_tensors"):
        tok(texts, return_tensors="np")
