"""The tokenizers of a model folder, in this layout, which save_tokenizers writes and load_tokenizers reads:
- the root: the encoder's tokenizer (the inputs'), what transformers' AutoTokenizer.from_pretrained(folder)
  and Tokenizer.from_pretrained(folder) load;
- `decoder_tokenizer/`: the decoder's tokenizer, only when its vocabulary differs from the encoder's (bert2gpt2:
  BERT's WordPiece at the root, GPT-2's BPE here). Without it the root's tokenizer serves both sides.
Special ids for the decoder (start, pad, eos: special_token_ids) come from the decoder's tokenizer.
"""

from __future__ import annotations

import os
from typing import Any

from ..storage import Folder
from .tokenizer import Tokenizer

DECODER_TOKENIZER = "decoder_tokenizer"


def load_tokenizers(path: str | os.PathLike, storage_options: dict[str, Any] | None = None,
                    decoder_tokenizer: str | os.PathLike | None = None) -> tuple[Tokenizer, Tokenizer]:
    """(encoder's, decoder's) tokenizers of a model folder: the root's, and the one in `decoder_tokenizer` (a
    folder path or URL, for a checkpoint that has only one) if given, else the folder's `decoder_tokenizer/` if
    it has one, else the root's again (the same object)."""
    encoder = Tokenizer.from_pretrained(path, storage_options)
    if decoder_tokenizer is None:
        folder = Folder(path, storage_options)
        if not folder.exists(DECODER_TOKENIZER):
            return encoder, encoder
        decoder_tokenizer = folder.name(DECODER_TOKENIZER)
    return encoder, Tokenizer.from_pretrained(decoder_tokenizer, storage_options)


def save_tokenizers(path: str | os.PathLike, encoder: Tokenizer, decoder: Tokenizer,
                    storage_options: dict[str, Any] | None = None) -> None:
    """The encoder's tokenizer at the folder's root and, when the decoder's files differ from it, the decoder's
    in `decoder_tokenizer/`; when they do not, a `decoder_tokenizer/` left by an earlier save is removed."""
    folder = Folder(path, storage_options)
    encoder.save_pretrained(path, storage_options)
    if decoder is not encoder and decoder.files() != encoder.files():
        decoder.save_pretrained(folder.name(DECODER_TOKENIZER), storage_options)
    elif folder.exists(DECODER_TOKENIZER):
        folder.fs.rm(f"{folder.root}/{DECODER_TOKENIZER}", recursive=True)
