"""The model families (BERT, BertGeneration, RoBERTa, GPT-2) as data: what the layers build, how config.json
names things, and how checkpoint keys map to ours.

The layers, the config and the key map read a `Family`; none of them tests a model type. Adding a family
(ELECTRA, XLM-R...) is one more record here, and a test against transformers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Rule:
    """One HF module and ours (`{}`: the layer index; `.weight` / `.bias` follow both). With several of ours the
    HF tensor is theirs stacked along the output axis (GPT-2's fused c_attn); conv1d: HF stores the weight
    [in, out] (transformers' Conv1D), the transpose of nn.Linear's."""

    hf: str
    ours: tuple[str, ...]
    conv1d: bool = False


def rule(hf: str, *ours: str, conv1d: bool = False) -> Rule:
    return Rule(hf, ours, conv1d)


@dataclass(frozen=True)
class Family:
    model_type: str
    base_prefix: str  # the base model's name inside the causal-LM class (decoder.<base_prefix>.<stack key>)
    stack: tuple[Rule, ...]  # keys of the base model, relative to it
    head: tuple[Rule, ...]  # the LM head's transform modules, relative to the causal-LM class (ours: under lm_head)
    head_weight: str  # the output projection (a copy of the word embeddings unless the head is untied)
    head_bias: str | None  # the LM head's own bias parameter (None: the projection has no bias)
    ignored: re.Pattern  # (searched) keys of the base model or the causal-LM class that hold no weight we use
    pre_ln: bool = False  # x + f(LN(x)) (GPT-2) instead of LN(x + f(x)) (BERT)
    positions_after_pad: bool = False  # RoBERTa: positions count from pad_token_id + 1 and pads keep pad_token_id
    token_types: bool = True
    embed_norm: bool = True  # a LayerNorm right after the embeddings (pre-LN families end with one instead)
    pad_row: bool = True  # the word embeddings' pad row is held at zero (nn.Embedding's padding_idx)
    pooler: bool = False  # the encoder's pooler (loaded and saved, used by nothing)
    head_transform: bool = True  # dense, activation, LayerNorm before the projection
    head_act: str | None = None  # the transform's activation (None: hidden_act)
    decoder_only: bool = False  # a causal model: never an encoder
    renames: dict[str, str] = field(default_factory=dict)  # our config field -> its config.json name
    defaults: dict[str, Any] = field(default_factory=dict)  # transformers' defaults where they differ from BERT's
    omit: frozenset[str] = frozenset()  # our config fields this family's config.json does not have

    def bias_copy(self) -> str | None:
        """The projection's bias, a copy of head_bias that transformers ties to it."""
        return None if self.head_bias is None else self.head_weight.removesuffix("weight") + "bias"


BERT_STACK = (
    rule("embeddings.word_embeddings", "embed.tok"),
    rule("embeddings.position_embeddings", "embed.pos"),
    rule("embeddings.token_type_embeddings", "embed.tok_type"),
    rule("embeddings.LayerNorm", "embed.norm"),
    rule("encoder.layer.{}.attention.self.query", "layers.{}.attn.q"),
    rule("encoder.layer.{}.attention.self.key", "layers.{}.attn.k"),
    rule("encoder.layer.{}.attention.self.value", "layers.{}.attn.v"),
    rule("encoder.layer.{}.attention.output.dense", "layers.{}.attn.o"),
    rule("encoder.layer.{}.attention.output.LayerNorm", "layers.{}.attn.norm"),
    rule("encoder.layer.{}.crossattention.self.query", "layers.{}.cross.q"),
    rule("encoder.layer.{}.crossattention.self.key", "layers.{}.cross.k"),
    rule("encoder.layer.{}.crossattention.self.value", "layers.{}.cross.v"),
    rule("encoder.layer.{}.crossattention.output.dense", "layers.{}.cross.o"),
    rule("encoder.layer.{}.crossattention.output.LayerNorm", "layers.{}.cross.norm"),
    rule("encoder.layer.{}.intermediate.dense", "layers.{}.ffn_up"),
    rule("encoder.layer.{}.output.dense", "layers.{}.ffn_down"),
    rule("encoder.layer.{}.output.LayerNorm", "layers.{}.ffn_norm"),
    rule("pooler.dense", "pooler"),
)
BERT_IGNORED = re.compile(r"(^|\.)(embeddings\.(position_ids|token_type_ids)|cls\.seq_relationship\.(weight|bias))$")
# transformers' GPT-2 config names for our fields
GPT2_NAMES = {
    "hidden_size": "n_embd", "num_hidden_layers": "n_layer", "num_attention_heads": "n_head",
    "intermediate_size": "n_inner", "max_position_embeddings": "n_positions", "hidden_act": "activation_function",
    "layer_norm_eps": "layer_norm_epsilon", "hidden_dropout_prob": "resid_pdrop",
    "attention_probs_dropout_prob": "attn_pdrop", "embed_dropout_prob": "embd_pdrop",
}
GPT2_ONLY = frozenset({"embed_dropout_prob", "scale_attn_weights", "scale_attn_by_inverse_layer_idx",
                       "reorder_and_upcast_attn"})

BERT = Family(
    model_type="bert", base_prefix="bert", stack=BERT_STACK,
    head=(rule("cls.predictions.transform.dense", "dense"), rule("cls.predictions.transform.LayerNorm", "norm")),
    head_weight="cls.predictions.decoder.weight", head_bias="cls.predictions.bias", ignored=BERT_IGNORED,
    pooler=True, omit=GPT2_ONLY,
)
BERT_GENERATION = Family(
    model_type="bert-generation", base_prefix="bert", stack=BERT_STACK, head=(),
    head_weight="lm_head.decoder.weight", head_bias="lm_head.bias", ignored=BERT_IGNORED,
    token_types=False, head_transform=False, defaults={"type_vocab_size": 0, "bos_token_id": 2, "eos_token_id": 1},
    omit=GPT2_ONLY | {"type_vocab_size"},
)
ROBERTA = Family(
    model_type="roberta", base_prefix="roberta", stack=BERT_STACK,
    head=(rule("lm_head.dense", "dense"), rule("lm_head.layer_norm", "norm")),
    head_weight="lm_head.decoder.weight", head_bias="lm_head.bias", ignored=BERT_IGNORED,
    positions_after_pad=True, pooler=True, head_act="gelu",
    defaults={"vocab_size": 50265, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2}, omit=GPT2_ONLY,
)
GPT2 = Family(
    model_type="gpt2", base_prefix="transformer",
    stack=(
        rule("wte", "embed.tok"),
        rule("wpe", "embed.pos"),
        rule("h.{}.ln_1", "layers.{}.attn.norm"),
        rule("h.{}.attn.c_attn", "layers.{}.attn.q", "layers.{}.attn.k", "layers.{}.attn.v", conv1d=True),
        rule("h.{}.attn.c_proj", "layers.{}.attn.o", conv1d=True),
        rule("h.{}.ln_cross_attn", "layers.{}.cross.norm"),
        rule("h.{}.crossattention.q_attn", "layers.{}.cross.q", conv1d=True),
        rule("h.{}.crossattention.c_attn", "layers.{}.cross.k", "layers.{}.cross.v", conv1d=True),
        rule("h.{}.crossattention.c_proj", "layers.{}.cross.o", conv1d=True),
        rule("h.{}.ln_2", "layers.{}.ffn_norm"),
        rule("h.{}.mlp.c_fc", "layers.{}.ffn_up", conv1d=True),
        rule("h.{}.mlp.c_proj", "layers.{}.ffn_down", conv1d=True),
        rule("ln_f", "final_norm"),
    ),
    head=(), head_weight="lm_head.weight", head_bias=None,
    ignored=re.compile(r"(^|\.)h\.\d+\.(attn|crossattention)\.(bias|masked_bias)$"),  # old files' causal-mask buffers
    pre_ln=True, token_types=False, embed_norm=False, pad_row=False, head_transform=False, decoder_only=True,
    renames=GPT2_NAMES,
    defaults={"vocab_size": 50257, "max_position_embeddings": 1024, "hidden_act": "gelu_new", "layer_norm_eps": 1e-5,
              "intermediate_size": None, "pad_token_id": None, "bos_token_id": 50256, "eos_token_id": 50256},
    omit=frozenset({"type_vocab_size"}),
)
FAMILIES = {f.model_type: f for f in (BERT, BERT_GENERATION, ROBERTA, GPT2)}


def family(model_type: str) -> Family:
    if model_type not in FAMILIES:
        raise ValueError(f"model_type {model_type!r} is not supported; expected one of {tuple(FAMILIES)}")
    return FAMILIES[model_type]
