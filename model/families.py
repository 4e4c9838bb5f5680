"""The model families (BERT, BertGeneration, RoBERTa, GPT-2, BART) as data: what the layers build, how config.json
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
    position_offset: int = 0  # rows of the position table before position 0 (BART: 2)
    shared_embeddings: bool = False  # the encoder's word embeddings are the decoder's (BART's model.shared)
    head_bias_row: bool = False  # the checkpoint stores head_bias as [1, V] (BART's final_logits_bias buffer)
    # A seq2seq model of its own (BART): one config.json for both sides, each side's names here (the rest from
    # renames); None for the families that make one side of an EncoderDecoderModel.
    sides: dict[str, dict[str, str]] | None = None
    model_rules: tuple[Rule, ...] = ()  # a seq2seq family's keys outside the two stacks (relative to the model)
    labels_pad_mask: bool = True  # decoder inputs made from labels mask their pads (EncoderDecoderModel; not BART)

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
BART_ONLY = frozenset({"scale_embedding"})

BERT = Family(
    model_type="bert", base_prefix="bert", stack=BERT_STACK,
    head=(rule("cls.predictions.transform.dense", "dense"), rule("cls.predictions.transform.LayerNorm", "norm")),
    head_weight="cls.predictions.decoder.weight", head_bias="cls.predictions.bias", ignored=BERT_IGNORED,
    pooler=True, omit=GPT2_ONLY | BART_ONLY,
)
BERT_GENERATION = Family(
    model_type="bert-generation", base_prefix="bert", stack=BERT_STACK, head=(),
    head_weight="lm_head.decoder.weight", head_bias="lm_head.bias", ignored=BERT_IGNORED,
    token_types=False, head_transform=False, defaults={"type_vocab_size": 0, "bos_token_id": 2, "eos_token_id": 1},
    omit=GPT2_ONLY | BART_ONLY | {"type_vocab_size"},
)
ROBERTA = Family(
    model_type="roberta", base_prefix="roberta", stack=BERT_STACK,
    head=(rule("lm_head.dense", "dense"), rule("lm_head.layer_norm", "norm")),
    head_weight="lm_head.decoder.weight", head_bias="lm_head.bias", ignored=BERT_IGNORED,
    positions_after_pad=True, pooler=True, head_act="gelu",
    defaults={"vocab_size": 50265, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2}, omit=GPT2_ONLY | BART_ONLY,
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
    omit=BART_ONLY | {"type_vocab_size"},
)
BART = Family(
    model_type="bart", base_prefix="model",
    stack=(
        rule("embed_positions", "embed.pos"),
        rule("layernorm_embedding", "embed.norm"),
        rule("layers.{}.self_attn.q_proj", "layers.{}.attn.q"),
        rule("layers.{}.self_attn.k_proj", "layers.{}.attn.k"),
        rule("layers.{}.self_attn.v_proj", "layers.{}.attn.v"),
        rule("layers.{}.self_attn.out_proj", "layers.{}.attn.o"),
        rule("layers.{}.self_attn_layer_norm", "layers.{}.attn.norm"),
        rule("layers.{}.encoder_attn.q_proj", "layers.{}.cross.q"),
        rule("layers.{}.encoder_attn.k_proj", "layers.{}.cross.k"),
        rule("layers.{}.encoder_attn.v_proj", "layers.{}.cross.v"),
        rule("layers.{}.encoder_attn.out_proj", "layers.{}.cross.o"),
        rule("layers.{}.encoder_attn_layer_norm", "layers.{}.cross.norm"),
        rule("layers.{}.fc1", "layers.{}.ffn_up"),
        rule("layers.{}.fc2", "layers.{}.ffn_down"),
        rule("layers.{}.final_layer_norm", "layers.{}.ffn_norm"),
    ),
    model_rules=(rule("model.shared", "decoder.embed.tok"),),
    head=(), head_weight="lm_head.weight", head_bias="final_logits_bias", head_bias_row=True,
    # copies of model.shared that transformers ties to it whatever the file holds
    ignored=re.compile(r"^model\.(encoder|decoder)\.embed_tokens\.weight$"),
    token_types=False, head_transform=False, position_offset=2, shared_embeddings=True, labels_pad_mask=False,
    renames={"hidden_size": "d_model", "hidden_act": "activation_function", "hidden_dropout_prob": "dropout",
             "attention_probs_dropout_prob": "attention_dropout", "initializer_range": "init_std"},
    sides={side: {"num_hidden_layers": f"{side}_layers", "num_attention_heads": f"{side}_attention_heads",
                  "intermediate_size": f"{side}_ffn_dim"} for side in ("encoder", "decoder")},
    defaults={"vocab_size": 50265, "hidden_size": 1024, "num_hidden_layers": 12, "num_attention_heads": 16,
              "intermediate_size": 4096, "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.0,
              "max_position_embeddings": 1024, "layer_norm_eps": 1e-5, "type_vocab_size": 0, "pad_token_id": 1,
              "bos_token_id": 0, "eos_token_id": 2},
    omit=GPT2_ONLY | {"type_vocab_size", "layer_norm_eps", "is_decoder", "add_cross_attention"},
)
FAMILIES = {f.model_type: f for f in (BERT, BERT_GENERATION, ROBERTA, GPT2, BART)}
# model types that look close but need what no family has; refused by name
REFUSED = {
    "mbart": "mBART (pre-LayerNorm BART with a final LayerNorm on each side) is not supported; BART is",
    "pegasus": "PEGASUS (pre-LayerNorm blocks, sinusoidal positions) is not supported; BART is",
}


def seq2seq_family(model_type: str | None) -> Family | None:
    """The family of a seq2seq model with a config.json of its own (BART); None for other model types (an
    encoder-decoder's); a refused model type raises."""
    if model_type in REFUSED:
        family(model_type)
    fam = FAMILIES.get(model_type)
    return fam if fam is not None and fam.sides is not None else None


def family(model_type: str) -> Family:
    if model_type in REFUSED:
        raise ValueError(f"model_type {model_type!r}: {REFUSED[model_type]}")
    if model_type not in FAMILIES:
        raise ValueError(f"model_type {model_type!r} is not supported; expected one of {tuple(FAMILIES)}")
    return FAMILIES[model_type]
