"""The decoder's special ids for a warm start (EncoderDecoderModel.from_encoder_decoder_pretrained), from its
checkpoint's vocabulary."""

from __future__ import annotations

from typing import Any

from .layout import load_tokenizers


def special_token_ids(path: str, storage_options: dict[str, Any] | None = None) -> dict[str, int | None]:
    """decoder_start/pad/eos ids from the vocabulary of a checkpoint's decoder (`decoder_tokenizer/` if the
    folder has one), if any: [CLS], [PAD], [SEP] for BERT's; bos, pad, eos for SentencePiece (<s>, <pad>, </s>)
    and byte-level BPE ones (RoBERTa's <s>, <pad>, </s>; GPT-2's <|endoftext|> twice and no pad: None, since
    the model card's pad = eos = start would hide the start token from a decoder mask taken from pad; set
    pad_token_id yourself)."""
    try:
        tok = load_tokenizers(path, storage_options)[1]
    except FileNotFoundError:
        return {"decoder_start_token_id": None, "pad_token_id": None, "eos_token_id": None}
    if tok.kind in ("sentencepiece", "bpe"):
        return {"decoder_start_token_id": tok.bos_token_id, "pad_token_id": tok.pad_token_id,
                "eos_token_id": tok.eos_token_id}
    return {"decoder_start_token_id": tok.cls_token_id, "pad_token_id": tok.pad_token_id,
            "eos_token_id": tok.sep_token_id}
