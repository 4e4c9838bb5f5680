"""Tokenizers with transformers' behaviour: BERT WordPiece on the `tokenizers` library, SentencePiece
(BertGeneration) in model.sentencepiece."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from .checkpoint import Folder
from .sentencepiece import SentencePieceVocab, token_content

SPIECE_NAME = "spiece.model"

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


def special_token_ids(path: str, storage_options: dict[str, Any] | None = None) -> dict[str, int | None]:
    """decoder_start/pad/eos ids from a checkpoint's vocabulary, if any: [CLS], [PAD], [SEP] for BERT's,
    <s>, <pad>, </s> for a SentencePiece one (BertGeneration)."""
    try:
        tok = Tokenizer.from_pretrained(path, storage_options)
    except FileNotFoundError:
        return {"decoder_start_token_id": None, "pad_token_id": None, "eos_token_id": None}
    if tok.kind == "sentencepiece":
        return {"decoder_start_token_id": tok.bos_token_id, "pad_token_id": tok.pad_token_id,
                "eos_token_id": tok.eos_token_id}
    return {"decoder_start_token_id": tok.cls_token_id, "pad_token_id": tok.pad_token_id,
            "eos_token_id": tok.sep_token_id}


def pad_ids(rows: Sequence[Sequence[int]] | None, pad_id: int, flat: np.ndarray | None = None,
            lengths: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, longest] int64 ids padded with pad_id on the right, and the attention mask (1 on tokens). Rows come
    as sequences, or flat: every row's tokens end to end with each row's length (Arrow's list layout)."""
    if rows is not None:
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        flat = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows]) if len(rows) else np.zeros(0, np.int64)
    width = int(lengths.max(initial=0))
    mask = np.arange(width) < lengths[:, None]
    ids = np.full(mask.shape, pad_id, dtype=np.int64)
    ids[mask] = flat
    return torch.from_numpy(ids), torch.from_numpy(mask.astype(np.int64))


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
    BertTokenizerFast for WordPiece vocabularies and tokenizer.json files, BertGenerationTokenizer for
    SentencePiece ones."""

    def __init__(self, backend: Backend | SentencePieceVocab, config: dict | None = None):
        self.backend = backend
        self.config = dict(config or {})
        self.model_max_length = int(min(self.config.get("model_max_length", 512), 2**62))
        if isinstance(backend, SentencePieceVocab):
            self.kind, tokens = "sentencepiece", backend.special
            self.all_special_ids = backend.special_ids
        else:
            self.kind = "wordpiece"
            tokens = {name: self.config.get(name, tok) for name, tok in SPECIAL.items()}
        ids = {name: backend.token_to_id(token_content(tok)) for name, tok in tokens.items()}
        if self.kind == "wordpiece":
            self.all_special_ids = sorted({i for i in ids.values() if i is not None})
        for name in ("cls", "sep", "pad", "unk", "mask", "bos", "eos"):
            setattr(self, f"{name}_token_id", ids.get(f"{name}_token"))
        self.pad_token = token_content(tokens.get("pad_token"))

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
        """tokenizer.json if the folder (local or fsspec URL) has one, else SentencePiece from spiece.model,
        else WordPiece from vocab.txt; with tokenizer_config.json. Special tokens of a SentencePiece vocabulary
        can be overridden as in transformers (pad_token="<pad>", eos_token="</s>", bos_token="<s>")."""
        folder = Folder(path, storage_options)
        config = json.loads(_read_text(folder, "tokenizer_config.json") or "{}")
        if special_tokens and (folder.exists("tokenizer.json") or not folder.exists(SPIECE_NAME)):
            raise ValueError("special token overrides apply to SentencePiece vocabularies (spiece.model) only")
        tokenizer_json = _read_text(folder, "tokenizer.json")
        if tokenizer_json is not None:
            return cls(Backend.from_str(tokenizer_json), config)
        if folder.exists(SPIECE_NAME):
            return cls(SentencePieceVocab(folder.read_bytes(SPIECE_NAME), config, special_tokens), config)
        vocab = _read_text(folder, "vocab.txt")
        if vocab is None:
            raise FileNotFoundError(f"{folder.url}: no tokenizer.json, {SPIECE_NAME} or vocab.txt found")
        return cls(_from_vocab(vocab, config), config)

    def save_pretrained(self, path: str | os.PathLike, storage_options: dict[str, Any] | None = None) -> None:
        folder = Folder(path, storage_options)
        config = {**self.config, "model_max_length": self.model_max_length}
        if isinstance(self.backend, SentencePieceVocab):
            files = self.backend.files(config)
        else:
            vocab = sorted(self.backend.get_vocab(with_added_tokens=False).items(), key=lambda kv: kv[1])
            config.setdefault("tokenizer_class", "BertTokenizer")
            files = {
                "tokenizer.json": self.backend.to_str().encode(),
                "tokenizer_config.json": json.dumps(config, indent=2).encode(),
                "special_tokens_map.json": json.dumps({k: config.get(k, v) for k, v in SPECIAL.items()},
                                                      indent=2).encode(),
                "vocab.txt": "".join(tok + "\n" for tok, _ in vocab).encode(),
            }
        for name, data in files.items():
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
            input_ids, attention_mask = pad_ids(ids, self.pad_token_id)
            if pad_to and pad_to > input_ids.shape[1]:
                extra = pad_to - input_ids.shape[1]
                input_ids = torch.nn.functional.pad(input_ids, (0, extra), value=self.pad_token_id or 0)
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
            return [self.backend.decode(row, skip_special_tokens) for row in rows]
        return self.backend.decode_batch(rows, skip_special_tokens=skip_special_tokens)
