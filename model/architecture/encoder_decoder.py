"""The encoder-decoder of any two families (model.families): forward and loss, encode once, decode with a cache,
load, save and warm start."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import checkpoints, generation
from ..config import EncoderDecoderConfig, GenerationConfig, StackConfig
from ..devices import DeviceMap, placement, resolve_dtype
from ..generation import KVCache
from ..tokenization import special_token_ids
from .blocks import LMHead, Stack
from .packing import Linear

log = logging.getLogger(__name__)


@dataclass
class Seq2SeqOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None


def shift_right(labels: torch.Tensor, start_id: int | None, pad_id: int | None) -> torch.Tensor:
    """Decoder inputs from labels: start token first, labels shifted one right, -100 replaced by pad."""
    if start_id is None:
        raise ValueError(
            "decoder_start_token_id is not set: set model.config.decoder_start_token_id "
            "(for BERT2BERT usually the [CLS] id, tokenizer.cls_token_id)"
        )
    if pad_id is None:
        raise ValueError(
            "pad_token_id is not set: set model.config.pad_token_id (for BERT usually tokenizer.pad_token_id; a GPT-2 "
            "decoder has no pad token: transformers' bert2gpt2 recipe pads with its unk id, 50256)"
        )
    shifted = labels.new_empty(labels.shape)
    shifted[:, 0] = start_id
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill_(shifted == -100, pad_id)


def padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """[B, S] 1/0 mask -> [B, 1, 1, S] boolean SDPA mask, or None when nothing is padded."""
    if attention_mask is None or bool(attention_mask.all()):
        return None
    return attention_mask.bool()[:, None, None, :]


class EncoderDecoderModel(nn.Module):
    def __init__(self, config: EncoderDecoderConfig, generation_config: GenerationConfig | None = None):
        super().__init__()
        self.config = config
        self.generation_config = generation_config or GenerationConfig(
            decoder_start_token_id=config.decoder_start_token_id,
            eos_token_id=config.eos_token_id,
            pad_token_id=config.pad_token_id,
        )
        enc, dec = config.encoder, config.decoder
        self.encoder = Stack(enc, pooler=enc.family.pooler)
        self.decoder = Stack(dec, pooler=False)
        if config.tie_encoder_decoder:
            self.encoder.share(self.decoder)
        if dec.family.shared_embeddings:  # BART's model.shared: one word-embedding table for both sides
            self.encoder.embed.tok = self.decoder.embed.tok
        self.lm_head = LMHead(dec)
        projection_needed = enc.hidden_size != dec.hidden_size
        self.enc_to_dec_proj = Linear(enc.hidden_size, dec.hidden_size) if projection_needed else None
        self.init_weights()
        if self.encoder.pooler is not None:
            # Loaded and saved for checkpoint compatibility, but no output depends on it: frozen, so that DDP
            # does not wait for gradients that never come (transformers' training leaves it untouched too).
            self.encoder.pooler.requires_grad_(False)
        if dec.family.head_bias_row and self.lm_head.bias is not None:
            self.lm_head.bias.requires_grad_(False)  # BART's final_logits_bias: a buffer transformers never trains

    @torch.no_grad()
    def init_weights(self) -> None:
        """transformers' initialisation: N(0, initializer_range) weights, zero biases, LayerNorm 1/0, pad row 0."""
        for stack, cfg in ((self.encoder, self.config.encoder), (self.decoder, self.config.decoder),
                           (self.lm_head, self.config.decoder), (self.enc_to_dec_proj, self.config.decoder)):
            if stack is None:
                continue
            for m in stack.modules():
                if isinstance(m, nn.Linear):
                    m.weight.normal_(0.0, cfg.initializer_range)
                    m.bias.zero_()
                elif isinstance(m, nn.Embedding):
                    m.weight.normal_(0.0, cfg.initializer_range)
                    if m.padding_idx is not None:
                        m.weight[m.padding_idx].zero_()
                elif isinstance(m, nn.LayerNorm):
                    m.weight.fill_(1.0)
                    m.bias.zero_()
        if self.lm_head.bias is not None:
            self.lm_head.bias.zero_()
        if self.lm_head.weight is not None:
            self.lm_head.weight.normal_(0.0, self.config.decoder.initializer_range)

    @property
    def device(self) -> torch.device:
        return self.decoder.embed.tok.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.embed.tok.weight.dtype

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder hidden states [B, S, C_dec], already projected to the decoder's width."""
        mask = padding_mask(attention_mask)
        x = self.encoder.embed(input_ids, token_type_ids=token_type_ids)
        for block in self.encoder.layers:
            x = block(x, mask)
        if self.encoder.final_norm is not None:
            x = self.encoder.final_norm(x)
        return x if self.enc_to_dec_proj is None else self.enc_to_dec_proj(x)

    def memory_kv(self, memory: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Cross-attention keys and values of every decoder layer, [B, H, S, D] each, computed once per article.

        Made contiguous once here, so that no decode step copies them for its matmuls."""
        return [tuple(t.contiguous() for t in block.cross.project_kv(memory)) for block in self.decoder.layers]

    def new_cache(self, rows: int, max_len: int) -> KVCache:
        cfg = self.config.decoder
        return KVCache(cfg.num_hidden_layers, rows, cfg.num_attention_heads, max_len, cfg.head_dim,
                       self.dtype, self.device)

    def decode(self, decoder_input_ids: torch.Tensor, memory_kv, memory_mask: torch.Tensor | None,
               decoder_attention_mask: torch.Tensor | None = None, cache: KVCache | None = None,
               pos: int = 0, group: int = 1) -> torch.Tensor:
        """Decoder logits [N, T, V] for tokens at positions pos..pos+T-1.

        memory_kv and memory_mask ([B, 1, 1, S] bool or None) are per article; N = B * group rows.
        With a cache, earlier positions are read from it and these are written into it.
        """
        t = decoder_input_ids.shape[1]
        mask, is_causal = None, False
        if decoder_attention_mask is not None:
            causal = torch.ones(t, t, dtype=torch.bool, device=decoder_input_ids.device).tril()
            mask = causal[None, None] & decoder_attention_mask.bool()[:, None, None, :]
        elif t > 1:
            if pos:
                raise ValueError("several new tokens after cached ones need an explicit mask")
            is_causal = True
        write = cache.at(pos) if cache is not None else None
        return self._decoder(decoder_input_ids, pos, mask, is_causal, write, memory_kv, memory_mask, group)

    def decode_static(self, tokens: torch.Tensor, memory_kv, memory_mask: torch.Tensor | None, cache: KVCache,
                      position: torch.Tensor, group: int = 1) -> torch.Tensor:
        """Logits [N, 1, V] of one token per row at a position tensor, [1] (every row) or [N] (each row its own),
        with shapes that do not depend on the position: every layer attends over the whole cache under a mask
        that hides what lies after each row's position."""
        write = cache.at_position(position)
        return self._decoder(tokens, position[:, None], cache.self_mask(position), False, write, memory_kv,
                             memory_mask, group)

    def _decoder(self, ids, start, mask, is_causal, write, memory_kv, memory_mask, group) -> torch.Tensor:
        x = self.decoder.embed(ids, start=start)
        for i, block in enumerate(self.decoder.layers):
            x = block(x, mask, is_causal, write, i, memory_kv[i], memory_mask, group)
        if self.decoder.final_norm is not None:
            x = self.decoder.final_norm(x)
        return self.lm_head(x, self.decoder.embed.tok.weight)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                decoder_input_ids: torch.Tensor | None = None, decoder_attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None) -> Seq2SeqOutput:
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("pass decoder_input_ids or labels")
            decoder_input_ids = shift_right(labels, self.config.decoder_start_token_id, self.config.pad_token_id)
            if decoder_attention_mask is None and self.config.decoder.family.labels_pad_mask:
                decoder_attention_mask = (decoder_input_ids != self.config.pad_token_id).long()
        memory = self.encode(input_ids, attention_mask, token_type_ids)
        logits = self.decode(decoder_input_ids, self.memory_kv(memory), padding_mask(attention_mask),
                             decoder_attention_mask)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        return Seq2SeqOutput(logits=logits, loss=loss)

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        """Beam search, greedy or sampling with transformers' settings and tokens; see model/generation/calls.py."""
        return generation.generate(self, input_ids, attention_mask, **kwargs)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype: torch.dtype | str | None = None,
                        device: torch.device | str | None = None, allow_pickle: bool = False,
                        storage_options: dict[str, Any] | None = None, *, device_map: DeviceMap = None,
                        attn_implementation: str | None = None,
                        torch_dtype: torch.dtype | str | None = None) -> EncoderDecoderModel:
        """Load an HF encoder-decoder folder: a local path or an fsspec URL such as s3://bucket/model
        (storage_options go to fsspec, e.g. {"endpoint_url": ...}; by default the AWS environment applies).

        transformers' keywords work as there: dtype (or torch_dtype) as a torch dtype, its name or "auto"
        (the stored dtype, also the default); device_map "auto" (the GPU when there is one), a device or a
        device index; attn_implementation "sdpa" (what this model runs). Values that would place or compute the
        model otherwise (a per-module device map, "eager", "flash_attention_2") are refused."""
        dtype = resolve_dtype(dtype if torch_dtype is None else torch_dtype)
        device = placement(device, device_map)
        if attn_implementation not in (None, "sdpa"):
            raise ValueError(f"attn_implementation={attn_implementation!r} is not available: this model always runs "
                             "torch's scaled_dot_product_attention ('sdpa')")
        config, generation = checkpoints.read_configs(path, storage_options)
        with torch.device("meta"):
            model = cls(config, generation)
        expected = {k: v.shape for k, v in model.state_dict().items()}
        state = checkpoints.load_hf_state(str(path), config, expected, untied_head=model.lm_head.weight is not None,
                                         dtype=dtype, allow_pickle=allow_pickle, storage_options=storage_options,
                                         shared=model.shared_keys())
        model.load_state_dict(state, strict=True, assign=True)
        return model.to(device).eval() if device is not None else model.eval()

    def save_pretrained(self, path: str | os.PathLike, storage_options: dict[str, Any] | None = None) -> None:
        """config.json, generation_config.json and model.safetensors with HF's key names (local path or URL)."""
        checkpoints.save_hf(str(path), self.state_dict(), self.config, self.generation_config,
                           self.lm_head.weight is not None, storage_options)

    def shared_keys(self) -> dict[str, str]:
        """Each state-dict key of the encoder that holds a decoder tensor (tie_encoder_decoder), with that key."""
        owner = {}
        for key, tensor in self.decoder.state_dict(prefix="decoder.", keep_vars=True).items():
            owner.setdefault(id(tensor), key)
        return {key: owner[id(tensor)]
                for key, tensor in self.encoder.state_dict(prefix="encoder.", keep_vars=True).items()
                if id(tensor) in owner}

    @classmethod
    def from_encoder_decoder_pretrained(cls, encoder_path: str | os.PathLike, decoder_path: str | os.PathLike,
                                        storage_options: dict[str, Any] | None = None,
                                        **config_kwargs) -> EncoderDecoderModel:
        """Warm start from two pretrained checkpoints of any families (a GPT-2 only as the decoder). The decoder
        gets fresh cross-attention (and a fresh LM-head transform when its checkpoint has none).
        decoder_start_token_id, pad_token_id and eos_token_id default to the decoder checkpoint's [CLS], [PAD]
        and [SEP] ids when its vocabulary has them; config_kwargs set any EncoderDecoderConfig field
        (tie_encoder_decoder=True shares the encoder's weights with the decoder's)."""
        enc_raw, enc_family, enc_tensors = checkpoints.read_pretrained(str(encoder_path), storage_options)
        dec_raw, dec_family, dec_tensors = checkpoints.read_pretrained(str(decoder_path), storage_options)
        enc_raw = {**enc_raw, "is_decoder": False, "add_cross_attention": False}
        defaults = {k: v for k, v in special_token_ids(str(decoder_path), storage_options).items() if v is not None}
        config = EncoderDecoderConfig.from_encoder_decoder_configs(
            StackConfig.from_dict(enc_raw), StackConfig.from_dict(dec_raw), **{**defaults, **config_kwargs})
        model = cls(config)
        state, unused = {}, []
        for part, fam, tensors in (("encoder", enc_family, enc_tensors), ("decoder", dec_family, dec_tensors)):
            part_state, part_unused = checkpoints.warm_start_state(tensors, fam, part)
            state.update(part_state)
            unused += [f"{part}: {k}" for k in part_unused]
        own = model.state_dict()
        for key, tensor in state.items():
            if own[key].shape != tensor.shape:
                raise ValueError(f"{key}: checkpoint shape {list(tensor.shape)} != config shape {list(own[key].shape)}")
        for alias, source in model.shared_keys().items():  # a shared encoder holds the decoder's, as 4.x tied them
            if source in state:
                state[alias] = state[source]
        fresh = sorted(set(own) - set(state))
        model.load_state_dict({**own, **state})
        if fresh:
            fresh = sorted({re.sub(r"\.\d+\.", ".{}.", k) for k in fresh})
            log.info("newly initialised weights (train them before use): %s", ", ".join(fresh))
        if unused:
            log.info("checkpoint weights not used: %s", ", ".join(unused))
        return model.eval()
