"""Transformer building blocks for every family: embeddings, attention (self and cross, SDPA, KV cache),
feed-forward, block (post-LN as BERT or pre-LN as GPT-2), LM head. What differs is read from the config's family.

Shapes: B articles, N = B * G decoder rows (G beams per article, rows grouped by article),
T new tokens, S keys, H heads, D head dim, C hidden size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import StackConfig
from ..generation import CacheWrite, Segments
from .packing import LINEAR_POINTWISE, Linear, PackedWeight, linear, packable


def activation(name: str):
    if name == "gelu":
        return F.gelu
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: F.gelu(x, approximate="tanh")
    return F.relu


class Embeddings(nn.Module):
    def __init__(self, cfg: StackConfig):
        super().__init__()
        fam = cfg.family
        self.tok = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id if fam.pad_row else None)
        self.pad_positions = cfg.pad_token_id if fam.positions_after_pad else None
        self.offset = fam.position_offset
        self.pos = nn.Embedding(cfg.max_position_embeddings + self.offset, cfg.hidden_size,
                                padding_idx=self.pad_positions)
        self.scale = cfg.hidden_size**0.5 if cfg.scale_embedding else None
        self.tok_type = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size) if fam.token_types else None
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps) if fam.embed_norm else None
        drop = cfg.embed_dropout_prob
        self.drop = nn.Dropout(cfg.hidden_dropout_prob if drop is None else drop)

    def positions(self, ids: torch.Tensor, start: int | torch.Tensor) -> torch.Tensor:
        """Positions of ids [N, T] after `start` earlier tokens (start may be a [1, 1] or [N, 1] tensor).

        RoBERTa counts from pad_token_id + 1 over the non-pad tokens of `ids` and gives pads pad_token_id, as
        transformers' create_position_ids_from_input_ids (also one token at a time after a cache); BART's table
        holds `offset` rows before position 0."""
        if self.pad_positions is None:
            return start + torch.arange(self.offset, self.offset + ids.shape[1], device=ids.device)
        real = (ids != self.pad_positions).long()
        return (real.cumsum(1) + start) * real + self.pad_positions

    def forward(self, ids: torch.Tensor, start: int | torch.Tensor = 0,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        x = self.tok(ids)
        if self.scale is not None:
            x = x * self.scale
        x = x + self.pos(self.positions(ids, start))
        if self.tok_type is None:
            if token_type_ids is not None and bool(token_type_ids.any()):
                raise ValueError("token_type_ids other than 0 given to a model without token type embeddings")
        elif token_type_ids is None:
            x = x + self.tok_type.weight[0]  # token type 0 everywhere, as transformers does without token_type_ids
        else:
            x = x + self.tok_type(token_type_ids)
        if self.norm is not None:
            x = self.norm(x)
        return self.drop(x) if self.training else x


class Attention(nn.Module):
    """Multi-head attention: projections, scores, output projection; `norm` is its sublayer's LayerNorm, which the
    block applies before (pre-LN) or after (post-LN) it."""

    def __init__(self, cfg: StackConfig, layer: int = 0):
        super().__init__()
        c = cfg.hidden_size
        self.heads = cfg.num_attention_heads
        self.scale = (c // self.heads) ** -0.5 if cfg.scale_attn_weights else 1.0
        if cfg.scale_attn_by_inverse_layer_idx:
            self.scale /= layer + 1
        self.q, self.k, self.v, self.o = (Linear(c, c) for _ in range(4))
        self.qkv_packed = PackedWeight()
        self.norm = nn.LayerNorm(c, eps=cfg.layer_norm_eps)
        self.attn_drop = cfg.attention_probs_dropout_prob

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        return x.view(b, t, self.heads, c // self.heads).transpose(1, 2)  # [B, H, T, D]

    def project_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.split_heads(self.k(x)), self.split_heads(self.v(x))

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Self-attention queries [N, T, C], keys and values [N, H, T, D]; packed, as one product."""
        if packable(x, self.q.weight):
            weight = self.qkv_packed(self.q.weight, self.k.weight, self.v.weight)
            qkv = LINEAR_POINTWISE(x, weight, torch.cat((self.q.bias, self.k.bias, self.v.bias)), "none", [], "")
            q, k, v = qkv.split(x.shape[-1], -1)
        else:
            q, k, v = self.q(x), self.k(x), self.v(x)
        return q, self.split_heads(k), self.split_heads(v)

    def forward(self, q, k, v, mask=None, is_causal: bool = False, group: int = 1) -> torch.Tensor:
        """q [N, T, C] (projected); k, v [N / group, H, S, D]; mask broadcastable to [N / group, H, group * T, S],
        True = attend, or Segments (rows that hold different lengths). Returns the output projection [N, T, C].

        With group > 1 the G rows of one article share one k/v: their queries are stacked along the
        query axis instead of copying k/v per row.
        """
        if isinstance(mask, Segments):
            return self.o(mask.attend(self.context, q, k, v))
        return self.o(self.context(q, k, v, mask, is_causal, group))

    def context(self, q, k, v, mask=None, is_causal: bool = False, group: int = 1) -> torch.Tensor:
        """forward before the output projection."""
        n, t, c = q.shape
        q = self.split_heads(q.reshape(n // group, group * t, c))  # [B, H, G*T, D]
        if t == 1 and not (self.training or is_causal) and q.device.type == "cpu":  # decode: SDPA is slow on CPU
            scores = (q @ k.transpose(-1, -2)).mul_(self.scale)  # [B, H, G, S]
            if mask is not None and mask.dtype == torch.bool:  # masked_fill_'s values; its broadcast is 2x slower
                mask = torch.zeros(mask.shape, dtype=scores.dtype).masked_fill_(~mask, -torch.inf)
            if mask is not None:
                scores += mask
            out = scores.softmax(-1) @ v
        else:
            p = self.attn_drop if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=is_causal,
                                                 scale=self.scale)
        return out.transpose(1, 2).reshape(n, t, c)


class Block(nn.Module):
    """One layer: self-attention, optional cross-attention, feed-forward; each LN(x + f(x)) (post-LN, BERT) or
    x + f(LN(x)) (pre-LN, GPT-2)."""

    def __init__(self, cfg: StackConfig, layer: int = 0):
        super().__init__()
        self.pre_ln = cfg.family.pre_ln
        self.attn = Attention(cfg, layer)
        self.cross = Attention(cfg, layer) if cfg.add_cross_attention else None
        self.ffn_up = Linear(cfg.hidden_size, cfg.intermediate_size)
        self.ffn_down = Linear(cfg.intermediate_size, cfg.hidden_size)
        self.ffn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.act = activation(cfg.hidden_act)
        self.drop = nn.Dropout(cfg.hidden_dropout_prob)

    def residual(self, x: torch.Tensor, out: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
        out = self.drop(out) if self.training else out
        return x + out if self.pre_ln else norm(x + out)

    def forward(self, x, mask=None, is_causal=False, write: CacheWrite | None = None, layer=0, memory_kv=None,
                memory_mask=None, group=1) -> torch.Tensor:
        """write: where this layer's self-attention keys/values go (a KVCache's `at`), None without a cache."""
        h = self.attn.norm(x) if self.pre_ln else x
        q, k, v = self.attn.project_qkv(h)
        if write is not None:
            k, v = write(layer, k, v)
        x = self.residual(x, self.attn(q, k, v, mask, is_causal=is_causal), self.attn.norm)
        if self.cross is not None:
            h = self.cross.norm(x) if self.pre_ln else x
            x = self.residual(x, self.cross(self.cross.q(h), *memory_kv, memory_mask, group=group), self.cross.norm)
        h = self.ffn_norm(x) if self.pre_ln else x
        return self.residual(x, self.ffn_down(self.act(self.ffn_up(h))), self.ffn_norm)


class Stack(nn.Module):
    """Embeddings and layers of one side: the encoder (with its pooler, where the family has one) or the decoder;
    pre-LN families end with a LayerNorm."""

    def __init__(self, cfg: StackConfig, pooler: bool):
        super().__init__()
        self.embed = Embeddings(cfg)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_hidden_layers))
        self.final_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps) if cfg.family.pre_ln else None
        self.pooler = Linear(cfg.hidden_size, cfg.hidden_size) if pooler else None

    def share(self, other: Stack) -> None:
        """Use other's modules wherever both stacks have them (transformers 4.x's tie_encoder_decoder): one
        tensor in memory; what only one side has (cross-attention, pooler, this stack's layers past other's
        depth: 4.x pairs layer i with layer i) stays its own."""
        self.embed = other.embed
        self.final_norm = other.final_norm
        for mine, theirs in zip(self.layers, other.layers, strict=False):  # the config checks self is the deeper
            for name in ("attn", "ffn_up", "ffn_down", "ffn_norm"):
                setattr(mine, name, getattr(theirs, name))


class LMHead(nn.Module):
    """An optional transform (dense, activation, LayerNorm: BERT, RoBERTa), then the projection (tied to the
    word embeddings unless the config unties it) plus an optional bias."""

    def __init__(self, cfg: StackConfig):
        super().__init__()
        fam = cfg.family
        self.dense = Linear(cfg.hidden_size, cfg.hidden_size) if fam.head_transform else None
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps) if fam.head_transform else None
        self.act = activation(fam.head_act or cfg.hidden_act)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size)) if fam.head_bias is not None else None
        self.weight = None if cfg.tie_word_embeddings else nn.Parameter(torch.zeros(cfg.vocab_size, cfg.hidden_size))
        self.packed = PackedWeight()

    def forward(self, x: torch.Tensor, tied_weight: torch.Tensor) -> torch.Tensor:
        if self.dense is not None:
            x = self.norm(self.act(self.dense(x)))
        return linear(x, tied_weight if self.weight is None else self.weight, self.bias, self.packed)
