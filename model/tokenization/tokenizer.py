"""Tokenizers with transformers' behaviour: BERT WordPiece and byte-level BPE (RoBERTa, GPT-2, bpe.py) on
the `tokenizers` library, SentencePiece (BertGeneration) in sentencepiece_vocab.py; one interface for every kind.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import torch
from tokenizers import AddedToken, decoders, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as Backend
from tokenizers.models import BPE, WordPiece

from ..storage import Folder
from . import bpe
from .padding import pad_ids
from .sentencepiece_vocab import SentencePieceVocab
from .special_tokens import added_tokens, token_content

SPIECE_NAME = "spiece.model"
ADDED_TOKENS_NAME, SPECIAL_TOKENS_MAP_NAME = "added_tokens.json", "special_tokens_map.json"
ADDED_TOKEN_FIELDS = ("content", "single_word", "lstrip", "rstrip", "normalized", "special")
# transformers' clean_up_tokenization: applied in decoding when tokenizer_config.json sets
# clean_up_tokenization_spaces (to BPE vocabularies only with clean_up_tokenization_spaces_for_bpe_even_though_it_
# will_corrupt_output as well: transformers 5 ignores the flag for them)
CLEANUPS = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
            (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))
BPE_CLEANUP = "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output"


def clean_up_tokenization(text: str) -> str:
    for old, new in CLEANUPS:
        text = text.replace(old, new)
    return text

SPECIAL = {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]",
           "mask_token": "[MASK]"}


def _read_text(folder: Folder, name: str) -> str | None:
    return folder.read_bytes(name).decode("utf-8") if folder.exists(name) else None


def _from_vocab(vocab_text: str, cfg: dict) -> Backend:
    vocab = {tok: i for i, tok in enumerate(vocab_text.splitlines())}
    special = {name: cfg.get(name, default) for name, default in SPECIAL.items()}
    backend = Backend(WordPiece(vocab, unk_token=special["unk_token"], max_input_chars_per_word=100))
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=cfg.get("tokenize_chinese_chars", True),
        strip_accents=cfg.get("strip_accents"),
        lowercase=cfg.get("do_lower_case", True),
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = special["cls_token"], special["sep_token"]
    backend.post_processor = processors.BertProcessing((sep, vocab[sep]), (cls, vocab[cls]))
    backend.decoder = decoders.WordPiece(prefix="##")
    backend.add_special_tokens([t for t in special.values() if t in vocab])
    return backend


def _add_tokens(backend: Backend, added: dict[str, dict[str, Any]], where: str) -> None:
    """tokenizer_config.json's added tokens (id -> AddedToken fields) into a backend built from vocabulary
    files, as transformers adds them: after the vocabulary, in id order; each must get the id the file gives."""
    for index, fields in sorted(added.items(), key=lambda kv: int(kv[0])):
        fields = {"content": fields} if isinstance(fields, str) else fields
        backend.add_tokens([AddedToken(**{k: fields[k] for k in ADDED_TOKEN_FIELDS if k in fields})])
        got = backend.token_to_id(fields["content"])
        if got != int(index):
            raise ValueError(f"{where}: added token {fields['content']!r} has id {index} but the vocabulary gives "
                             f"it id {got}; added tokens follow the vocabulary without gaps")


def _bpe_config(folder: Folder, config: dict) -> dict:
    """tokenizer_config.json of a byte-level BPE folder with its tokenizer_class named as bpe.py names it."""
    given = config.get("tokenizer_class")
    model_config = None if given else json.loads(_read_text(folder, "config.json") or "{}")
    name = bpe.tokenizer_class(config, model_config)
    if name is None and given:
        raise ValueError(f"{folder.url}: tokenizer_class {given!r} with a byte-level BPE vocabulary is not supported; "
                         "RobertaTokenizer(Fast) and GPT2Tokenizer(Fast) are")
    if name is None:
        raise ValueError(f"{folder.url}: a byte-level BPE vocabulary needs tokenizer_config.json's tokenizer_class "
                         "(RobertaTokenizer or GPT2Tokenizer) or config.json's model_type (roberta or gpt2); "
                         "the folder has neither")
    return {**config, "tokenizer_class": name}


class BatchEncoding(dict):
    """What a tokenizer call returns, as transformers' BatchEncoding: a dict (item access, ** unpacking) whose
    keys are also attributes (`.input_ids`), with `.to(device)`."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, device: torch.device | str) -> BatchEncoding:
        return BatchEncoding({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.items()})


def _padding(padding: bool | str, max_length: int | None) -> int | None:
    """0: pad to the longest text; n: to n tokens; None: no padding."""
    if padding in (True, "longest"):
        return 0
    if padding in (False, "do_not_pad"):
        return None
    if padding == "max_length":
        if max_length is None:
            raise ValueError("padding='max_length' needs max_length")
        return max_length
    raise ValueError(f"padding must be True, False, 'longest', 'max_length' or 'do_not_pad', got {padding!r}")


def _truncation(truncation: bool | str) -> bool:
    if truncation in (True, "longest_first", "only_first"):
        return True
    if truncation in (False, "do_not_truncate"):
        return False
    raise ValueError(f"truncation must be True, False, 'longest_first', 'only_first' or 'do_not_truncate', "
                     f"got {truncation!r}")


class Tokenizer:
    """`tok(texts)` and `tok.batch_decode(ids)` as transformers' tokenizer of the checkpoint with its defaults:
    BertTokenizerFast for WordPiece vocabularies and WordPiece tokenizer.json files, RobertaTokenizerFast and
    GPT2TokenizerFast for byte-level BPE ones (kind "bpe"), BertGenerationTokenizer for SentencePiece ones.
    Token ids are attributes as in transformers (`cls_token_id`, ..., None where the vocabulary has no such
    token), the tokens themselves are `special_tokens`."""

    def __init__(self, backend: Backend | SentencePieceVocab, config: dict | None = None):
        self.backend = backend
        self.config = dict(config or {})
        bpe_tokens = bpe.special_tokens(self.config)
        if isinstance(backend, SentencePieceVocab):
            self.kind, tokens = "sentencepiece", backend.special
        elif bpe_tokens is not None:
            self.kind, tokens = "bpe", bpe_tokens
        else:
            self.kind = "wordpiece"
            tokens = {name: self.config.get(name, tok) for name, tok in SPECIAL.items()}
        # transformers 5 cleans up after decoding when the config says so, a BPE model only when forced to
        self.clean_up_spaces = bool(self.config.get("clean_up_tokenization_spaces")) and (
            isinstance(backend, SentencePieceVocab) or not isinstance(backend.model, BPE)
            or bool(self.config.get(BPE_CLEANUP)))
        default_length = bpe.MAX_LENGTH.get(bpe.CLASSES.get(self.config.get("tokenizer_class")), 512)
        self.model_max_length = int(min(self.config.get("model_max_length", default_length), 2**62))
        self.special_tokens = {name: token_content(tok) for name, tok in tokens.items()}
        ids = {name: None if tok is None else backend.token_to_id(tok) for name, tok in self.special_tokens.items()}
        if self.kind == "bpe":
            missing = sorted({tok for name, tok in self.special_tokens.items() if tok and ids[name] is None})
            if missing:
                raise ValueError(f"special tokens {missing} are not in the vocabulary")
            backend.add_special_tokens(list(dict.fromkeys(t for t in self.special_tokens.values() if t is not None)))
        if self.kind == "sentencepiece":
            self.all_special_ids = backend.special_ids
        else:
            flagged = {i for i, tok in backend.get_added_tokens_decoder().items() if tok.special}
            self.all_special_ids = sorted({i for i in ids.values() if i is not None} | flagged)
        for name in ("cls", "sep", "pad", "unk", "mask", "bos", "eos"):
            setattr(self, f"{name}_token_id", ids.get(f"{name}_token"))
        for name in ("cls", "sep", "unk", "mask", "bos", "eos"):
            setattr(self, f"{name}_token", self.special_tokens.get(f"{name}_token"))

    @property
    def pad_token(self) -> str | None:
        return self.special_tokens.get("pad_token")

    @pad_token.setter
    def pad_token(self, token: str) -> None:
        """transformers' `tok.pad_token = tok.eos_token` (GPT-2 has no pad token): a token of the vocabulary,
        marked special (skipped in decoding) and saved by save_pretrained."""
        if self.kind == "sentencepiece":
            raise ValueError("set a SentencePiece vocabulary's pad token with Tokenizer.from_pretrained(path, "
                             "pad_token=...)")
        token_id = self.backend.token_to_id(token)
        if token_id is None:
            raise ValueError(f"pad token {token!r} is not in the vocabulary")
        self.backend.add_special_tokens([token])
        self.special_tokens["pad_token"] = self.config["pad_token"] = token
        self.pad_token_id = token_id
        self.all_special_ids = sorted({*self.all_special_ids, token_id})

    @property
    def vocab_size(self) -> int:
        if isinstance(self.backend, SentencePieceVocab):
            return self.backend.vocab_size
        return self.backend.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        """Every id the tokenizer can produce, added tokens included (transformers' len(tokenizer))."""
        if isinstance(self.backend, SentencePieceVocab):
            return len(self.backend)
        return self.backend.get_vocab_size(with_added_tokens=True)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, storage_options: dict[str, Any] | None = None,
                        **special_tokens: str) -> Tokenizer:
        """From the folder (local or fsspec URL), with tokenizer_config.json: tokenizer.json if it has one, else
        SentencePiece from spiece.model, else byte-level BPE from vocab.json + merges.txt, else WordPiece from
        vocab.txt. A byte-level BPE folder is RoBERTa's or GPT-2's by tokenizer_config.json's tokenizer_class or,
        without one, config.json's model_type. Special tokens of SentencePiece and byte-level BPE vocabularies
        can be overridden as in transformers (pad_token="<pad>", eos_token="</s>", bos_token="<s>")."""
        folder = Folder(path, storage_options)
        config = json.loads(_read_text(folder, "tokenizer_config.json") or "{}")
        if "added_tokens_decoder" not in config:  # transformers' legacy files
            config.update(json.loads(_read_text(folder, SPECIAL_TOKENS_MAP_NAME) or "{}"))
            added = added_tokens(config, json.loads(_read_text(folder, ADDED_TOKENS_NAME) or "{}"))
            config.update({"added_tokens_decoder": added} if added else {})
        tokenizer_json = _read_text(folder, "tokenizer.json")
        backend = None
        if tokenizer_json is not None:
            backend = Backend.from_str(tokenizer_json)
            if isinstance(backend.model, BPE):
                config = _bpe_config(folder, config)
        elif folder.exists(SPIECE_NAME):
            return cls(SentencePieceVocab(folder.read_bytes(SPIECE_NAME), config, special_tokens), config)
        elif folder.exists(bpe.VOCAB_NAME) and folder.exists(bpe.MERGES_NAME):
            config = _bpe_config(folder, config)
            backend = bpe.from_files(_read_text(folder, bpe.VOCAB_NAME), _read_text(folder, bpe.MERGES_NAME),
                                     config, (folder.name(bpe.VOCAB_NAME), folder.name(bpe.MERGES_NAME)))
        if special_tokens and bpe.special_tokens(config) is None:
            raise ValueError("special token overrides apply to SentencePiece vocabularies (spiece.model) and "
                             "byte-level BPE ones only")
        if backend is None:
            vocab = _read_text(folder, "vocab.txt")
            if vocab is None:
                raise FileNotFoundError(f"{folder.url}: no tokenizer.json, {SPIECE_NAME}, {bpe.VOCAB_NAME} + "
                                        f"{bpe.MERGES_NAME} or vocab.txt found")
            backend = _from_vocab(vocab, config)
        if tokenizer_json is None:  # tokenizer.json holds its added tokens itself
            _add_tokens(backend, config.get("added_tokens_decoder") or {}, folder.url)
        return cls(backend, {**config, **special_tokens})

    def files(self) -> dict[str, bytes]:
        """The folder's files as transformers writes them for this tokenizer's class (and the vocabulary files
        of the class's older layout)."""
        config = {**self.config, "model_max_length": self.model_max_length}
        if isinstance(self.backend, SentencePieceVocab):
            return self.backend.files(config)
        if self.kind == "bpe":
            config.update(self.special_tokens)
            special = {name: tok for name, tok in self.special_tokens.items() if tok is not None}
            vocab_files = bpe.vocab_files(self.backend)
        else:
            config.setdefault("tokenizer_class", "BertTokenizer")
            special = {k: config.get(k, v) for k, v in SPECIAL.items()}
            vocab = sorted(self.backend.get_vocab(with_added_tokens=False).items(), key=lambda kv: kv[1])
            vocab_files = {"vocab.txt": "".join(tok + "\n" for tok, _ in vocab).encode()}
        self.backend.no_truncation()  # the last call's settings are no part of the tokenizer
        self.backend.no_padding()
        return {
            "tokenizer.json": self.backend.to_str().encode(),
            "tokenizer_config.json": json.dumps(config, indent=2).encode(),
            "special_tokens_map.json": json.dumps(special, indent=2).encode(),
            **vocab_files,
        }

    def save_pretrained(self, path: str | os.PathLike, storage_options: dict[str, Any] | None = None) -> None:
        folder = Folder(path, storage_options)
        for name, data in self.files().items():
            folder.write_atomic(name, data)

    def encode_truncated(self, texts: Sequence[str], max_length: int | None = None, truncation: bool = True,
                         add_special_tokens: bool = True) -> tuple[list[list[int]], list[bool]]:
        """Token ids, unpadded, and whether each text was cut to fit max_length (default model_max_length).
        Special tokens are added as the checkpoint's tokenizer adds them ([CLS] ... [SEP] for BERT, none for
        BertGeneration) unless add_special_tokens is False; truncation keeps them."""
        limit = (max_length or self.model_max_length) if truncation else None
        if isinstance(self.backend, SentencePieceVocab):
            rows = self.backend.encode_batch(texts)
            return [r[:limit] for r in rows], [limit is not None and len(r) > limit for r in rows]
        if limit is not None:
            self.backend.enable_truncation(limit)
        else:
            self.backend.no_truncation()
        self.backend.no_padding()
        encodings = self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        return [e.ids for e in encodings], [bool(e.overflowing) for e in encodings]

    def encode_batch(self, texts: Sequence[str], max_length: int | None = None, truncation: bool = True,
                     add_special_tokens: bool = True) -> list[list[int]]:
        """Token ids, unpadded; see encode_truncated."""
        return self.encode_truncated(texts, max_length, truncation, add_special_tokens)[0]

    def __call__(self, texts: str | Sequence[str], max_length: int | None = None, truncation: bool | str = True,
                 padding: bool | str = True, add_special_tokens: bool = True, return_tensors: str | None = None,
                 return_token_type_ids: bool | None = None, return_attention_mask: bool = True) -> BatchEncoding:
        """input_ids, attention_mask and (WordPiece vocabularies, as BertTokenizerFast) token_type_ids.

        transformers' keywords and values: padding True / "longest" (to the longest text, the default here),
        "max_length" (to max_length) or False / "do_not_pad" (lists, unless return_tensors="pt"); truncation
        True / "longest_first" / "only_first" (to max_length, default model_max_length: the default here, where
        transformers' default keeps every token) or False / "do_not_truncate". Tensors unless padding is off
        and return_tensors is not "pt"."""
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors must be 'pt' or None, got {return_tensors!r}")
        pad_to = _padding(padding, max_length)
        if pad_to is not None and self.pad_token_id is None:
            raise ValueError("Asking to pad but the tokenizer has no pad token (GPT-2's has none): set one, as "
                             "transformers' `tok.pad_token = tok.eos_token`, or pass padding=False")
        ids = self.encode_batch([texts] if isinstance(texts, str) else texts, max_length, _truncation(truncation),
                                add_special_tokens)
        with_types = self.kind == "wordpiece" if return_token_type_ids is None else return_token_type_ids
        if pad_to is None and return_tensors is None:
            out = {"input_ids": ids, "attention_mask": [[1] * len(row) for row in ids]}
            if with_types:
                out["token_type_ids"] = [[0] * len(row) for row in ids]
        else:
            if pad_to is None and len({len(row) for row in ids}) > 1:
                raise ValueError("texts of different lengths need padding=True for return_tensors='pt'")
            # without padding the rows are of one length: the pad id fills nothing
            input_ids, attention_mask = pad_ids(ids, self.pad_token_id if pad_to is not None else 0)
            if pad_to and pad_to > input_ids.shape[1]:
                extra = pad_to - input_ids.shape[1]
                input_ids = torch.nn.functional.pad(input_ids, (0, extra), value=self.pad_token_id)
                attention_mask = torch.nn.functional.pad(attention_mask, (0, extra))
            out = {"input_ids": input_ids, "attention_mask": attention_mask}
            if with_types:
                out["token_type_ids"] = torch.zeros_like(input_ids)
        if not return_attention_mask:
            del out["attention_mask"]
        return BatchEncoding(out)

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        return self.batch_decode([ids], skip_special_tokens)[0]

    def batch_decode(self, ids: Sequence[Sequence[int]] | torch.Tensor, skip_special_tokens: bool = True) -> list[str]:
        rows = ids.tolist() if isinstance(ids, torch.Tensor) else [list(map(int, row)) for row in ids]
        if isinstance(self.backend, SentencePieceVocab):
            texts = [self.backend.decode(row, skip_special_tokens) for row in rows]
        else:
            texts = self.backend.decode_batch(rows, skip_special_tokens=skip_special_tokens)
        if self.clean_up_spaces:
            texts = [clean_up_tokenization(text) for text in texts]
        return texts
