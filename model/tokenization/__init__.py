"""Tokenizers: WordPiece and byte-level BPE on the `tokenizers` library, SentencePiece on `sentencepiece`, one
interface for every kind; the two-vocabulary folder layout; padding; the decoder's special ids for a warm start."""

from .layout import DECODER_TOKENIZER, load_tokenizers, save_tokenizers
from .padding import pad_ids
from .tokenizer import BatchEncoding, Tokenizer
from .warm_start import special_token_ids

__all__ = ["DECODER_TOKENIZER", "BatchEncoding", "Tokenizer", "load_tokenizers", "pad_ids", "save_tokenizers",
           "special_token_ids"]
