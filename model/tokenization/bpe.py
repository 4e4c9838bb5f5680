"""Byte-level BPE vocabularies (RoBERTa, GPT-2) on the `tokenizers` library, built as transformers 5 builds
RobertaTokenizerFast and GPT2TokenizerFast from `vocab.json` + `merges.txt`.

Which of the two a folder holds comes from tokenizer_config.json's `tokenizer_class`, or, without one, from the
model's `model_type` in config.json (an encoder-decoder folder's encoder: its root holds the encoder's
tokenizer). RoBERTa wraps a text as `<s> ... </s>` and pads with `<pad>`; GPT-2 adds nothing and has no pad
token (`<|endoftext|>` is its bos, eos and unk). Decoding cleans up tokenization spaces only when
tokenizer_config.json forces it (`clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output` with
`clean_up_tokenization_spaces`): transformers 5 ignores `clean_up_tokenization_spaces` alone for BPE vocabularies.
"""

from __future__ import annotations

import json
from typing import Any

from tokenizers import Tokenizer as Backend
from tokenizers import decoders, pre_tokenizers, processors
from tokenizers.models import BPE

from .special_tokens import token_content

ROBERTA, GPT2 = "RobertaTokenizer", "GPT2Tokenizer"
CLASSES = {ROBERTA: ROBERTA, "RobertaTokenizerFast": ROBERTA, GPT2: GPT2, "GPT2TokenizerFast": GPT2,
           "BartTokenizer": ROBERTA, "BartTokenizerFast": ROBERTA}  # BART's is RoBERTa's
MODEL_TYPES = {"roberta": ROBERTA, "gpt2": GPT2, "bart": ROBERTA}
# transformers' defaults per class; None: the class has no such token.
SPECIAL = {
    ROBERTA: {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>",
              "pad_token": "<pad>", "cls_token": "<s>", "mask_token": "<mask>"},
    GPT2: {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
           "pad_token": None},
}
# What the models' position embeddings hold, for truncation when tokenizer_config.json gives no model_max_length.
MAX_LENGTH = {ROBERTA: 512, GPT2: 1024}
MERGES_HEADER = "#version: 0.2"
VOCAB_NAME, MERGES_NAME = "vocab.json", "merges.txt"


def tokenizer_class(config: dict[str, Any], model_config: dict[str, Any] | None) -> str | None:
    """RobertaTokenizer or GPT2Tokenizer for a byte-level BPE folder, from its tokenizer_config.json (`config`)
    or its config.json (`model_config`); None when neither names one of them."""
    if config.get("tokenizer_class"):
        return CLASSES.get(config["tokenizer_class"])
    model_config = model_config or {}
    if model_config.get("model_type") == "encoder-decoder":
        model_config = model_config.get("encoder") or {}
    return MODEL_TYPES.get(model_config.get("model_type"))


def special_tokens(config: dict[str, Any]) -> dict[str, Any] | None:
    """The special tokens of a byte-level BPE tokenizer_config.json (transformers' defaults for those it leaves
    out); None when its class is not one."""
    defaults = SPECIAL.get(CLASSES.get(config.get("tokenizer_class")))
    return None if defaults is None else {name: config.get(name, tok) for name, tok in defaults.items()}


def _merges(text: str, name: str) -> list[tuple[str, str]]:
    lines = [line.rstrip("\r") for line in text.split("\n")]
    if lines and lines[0].startswith("#version"):
        lines = lines[1:]
    merges = []
    for n, line in enumerate(lines, 1):
        parts = line.split(" ")
        if len(parts) == 2:
            merges.append((parts[0], parts[1]))
        elif line:
            raise ValueError(f"{name}: merge {n} is not two tokens separated by a space: {line!r}")
    return merges


def from_files(vocab_json: str, merges_txt: str, config: dict[str, Any], names: tuple[str, str]) -> Backend:
    """The backend transformers builds from vocab.json and merges.txt (`names`: their URLs, for messages) for
    the tokenizer_config.json `config` (its tokenizer_class set); Tokenizer marks the special tokens."""
    if config.get("add_bos_token") or config.get("add_eos_token"):
        raise ValueError("add_bos_token / add_eos_token are not supported for byte-level BPE vocabularies")
    try:
        vocab = json.loads(vocab_json)
    except json.JSONDecodeError as e:
        raise ValueError(f"{names[0]}: not valid JSON ({e})") from e
    backend = Backend(BPE(vocab, _merges(merges_txt, names[1]), continuing_subword_prefix="", end_of_word_suffix="",
                          fuse_unk=False))
    prefix_space = bool(config.get("add_prefix_space", False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix_space)
    backend.decoder = decoders.ByteLevel()
    if CLASSES[config["tokenizer_class"]] == ROBERTA:
        tokens = special_tokens(config)
        sep, cls = token_content(tokens["sep_token"]), token_content(tokens["cls_token"])
        missing = [t for t in (sep, cls) if t not in vocab]
        if missing:
            raise ValueError(f"{names[0]}: special tokens {missing} are not in the vocabulary")
        backend.post_processor = processors.RobertaProcessing(
            (sep, vocab[sep]), (cls, vocab[cls]), trim_offsets=config.get("trim_offsets", True),
            add_prefix_space=prefix_space)
    return backend


def vocab_files(backend: Backend) -> dict[str, bytes]:
    """vocab.json and merges.txt of a byte-level BPE backend."""
    model = json.loads(backend.to_str())["model"]
    merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    return {VOCAB_NAME: json.dumps(model["vocab"], ensure_ascii=False).encode(),
            MERGES_NAME: "\n".join([MERGES_HEADER, *merges, ""]).encode()}
