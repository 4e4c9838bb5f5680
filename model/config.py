"""The three configs, read from and written to Hugging Face's json layout.

Every config keeps the keys it does not know in `extra` and writes them back, so a config.json
round-trips without losing anything another tool put there.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from .families import Family, family, seq2seq_family

ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")


def _split_known(cls, data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
    known = {k: v for k, v in data.items() if k in names}
    extra = {k: v for k, v in data.items() if k not in names}
    return known, extra


@dataclass
class StackConfig:
    """One side's config.json (BERT, BertGeneration, RoBERTa or GPT-2) in BERT's field names; the family
    (`model_type`) says how its config.json names them and which it has."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int | None = 3072  # None: 4 * hidden_size (GPT-2's n_inner)
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    embed_dropout_prob: float | None = None  # None: hidden_dropout_prob (GPT-2's embd_pdrop)
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int | None = 0
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    is_decoder: bool = False
    add_cross_attention: bool = False
    tie_word_embeddings: bool = True
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    reorder_and_upcast_attn: bool = False
    scale_embedding: bool = False  # word embeddings times sqrt(hidden_size) (BART)
    model_type: str = "bert"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        family(self.model_type)
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        if self.hidden_act not in ACTIVATIONS:
            name = self.family.renames.get("hidden_act", "hidden_act")
            raise ValueError(f"{name} {self.hidden_act!r} is not supported; expected one of {ACTIVATIONS}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}"
            )
        position_type = self.extra.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ValueError(f"position_embedding_type {position_type!r} is not supported; only 'absolute' is")
        if self.reorder_and_upcast_attn:
            raise ValueError("reorder_and_upcast_attn=True is not supported (it changes only transformers' eager "
                             "attention); set it to false")
        if self.extra.get("cross_attention_hidden_size") is not None:
            raise ValueError("cross_attention_hidden_size is not supported (the encoder's states are projected with "
                             "enc_to_dec_proj when the widths differ)")

    @property
    def family(self) -> Family:
        return family(self.model_type)

    @property
    def max_positions(self) -> int:
        """The longest input this side can embed: RoBERTa's positions start after pad_token_id."""
        offset = self.pad_token_id + 1 if self.family.positions_after_pad and self.pad_token_id is not None else 0
        return self.max_position_embeddings - offset

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StackConfig:
        fam = family(data.get("model_type", "bert"))
        data = {**fam.defaults, **{name: data[key] for name, key in fam.renames.items() if key in data},
                **{k: v for k, v in data.items() if k not in fam.renames.values()}}
        known, extra = _split_known(cls, data)
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        fam = self.family
        out = {fam.renames.get(f.name, f.name): getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name != "extra" and f.name not in fam.omit}
        return {**self.extra, **out}


BertConfig = StackConfig  # the name BERT users know


@dataclass
class EncoderDecoderConfig:
    """An `encoder-decoder` config.json: the two sides' configs and the ids that tie them together."""

    encoder: StackConfig
    decoder: StackConfig
    decoder_start_token_id: int | None = None
    pad_token_id: int | None = None
    eos_token_id: int | None = None
    tie_encoder_decoder: bool = False  # the encoder shares the decoder's weights (transformers 4.x's roberta_shared)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (self.decoder.is_decoder and self.decoder.add_cross_attention):
            raise ValueError("the decoder config needs is_decoder=True and add_cross_attention=True")
        if self.encoder.is_decoder:
            raise ValueError("the encoder config has is_decoder=True; an encoder must be bidirectional")
        if self.encoder.family.decoder_only:
            raise ValueError(f"model_type {self.encoder.model_type!r} is a decoder only; it cannot be the encoder")
        if self.tie_encoder_decoder:
            names = ("model_type", "vocab_size", "hidden_size", "num_attention_heads", "intermediate_size",
                     "max_position_embeddings", "type_vocab_size")
            differ = [name for name in names if getattr(self.encoder, name) != getattr(self.decoder, name)]
            if differ:
                raise ValueError(f"tie_encoder_decoder=True needs the same encoder and decoder shapes; "
                                 f"they differ in {', '.join(differ)}")
            # transformers 4.x ties decoder layer i to encoder layer i; a deeper encoder keeps its extra layers,
            # a deeper decoder has no encoder layer to tie to (4.x fails on it with a KeyError)
            if self.encoder.num_hidden_layers < self.decoder.num_hidden_layers:
                raise ValueError(f"tie_encoder_decoder=True needs an encoder at least as deep as the decoder; the "
                                 f"encoder has {self.encoder.num_hidden_layers} layers, the decoder "
                                 f"{self.decoder.num_hidden_layers} (transformers 4.x cannot tie them either)")

    @classmethod
    def from_encoder_decoder_configs(
        cls, encoder: StackConfig, decoder: StackConfig, **kwargs: Any
    ) -> EncoderDecoderConfig:
        decoder = dataclasses.replace(decoder, is_decoder=True, add_cross_attention=True, extra=dict(decoder.extra))
        return cls(encoder=encoder, decoder=decoder, **kwargs)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderDecoderConfig:
        fam = seq2seq_family(data.get("model_type"))
        if fam is not None:
            return cls.from_seq2seq_dict(data, fam)
        if data.get("model_type") != "encoder-decoder":
            raise ValueError(f"expected model_type 'encoder-decoder', got {data.get('model_type')!r}")
        for part in ("encoder", "decoder"):
            if not isinstance(data.get(part), dict):
                raise ValueError(f"config has no '{part}' section")
        known, extra = _split_known(cls, data)
        known["encoder"] = StackConfig.from_dict(data["encoder"])
        known["decoder"] = StackConfig.from_dict(data["decoder"])
        extra.pop("model_type", None)
        extra.pop("is_encoder_decoder", None)
        return cls(**known, extra=extra)

    @classmethod
    def from_seq2seq_dict(cls, data: dict[str, Any], fam: Family) -> EncoderDecoderConfig:
        """A seq2seq family's one config.json (BART's d_model, encoder_layers, decoder_ffn_dim...) as two sides."""
        sides, used = {}, {"model_type", "is_encoder_decoder"}
        for side in ("encoder", "decoder"):
            names = {f.name: f.name for f in dataclasses.fields(StackConfig)
                     if f.name not in fam.omit and f.name not in ("extra", "model_type")}
            names.update({**fam.renames, **fam.sides[side]})
            known = {ours: data[theirs] for ours, theirs in names.items() if theirs in data}
            used.update(theirs for theirs in names.values() if theirs in data)
            decoder = side == "decoder"
            sides[side] = StackConfig(**{**fam.defaults, **known}, model_type=fam.model_type, is_decoder=decoder,
                                      add_cross_attention=decoder)
        ids = {k: data[k] for k in ("decoder_start_token_id", "pad_token_id", "eos_token_id") if k in data}
        extra = {k: v for k, v in data.items() if k not in used and k not in ids}
        return cls(**sides, **ids, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        fam = self.decoder.family
        if fam.sides is not None:
            out = {**self.extra, "model_type": fam.model_type, "is_encoder_decoder": True}
            for side, cfg in (("encoder", self.encoder), ("decoder", self.decoder)):
                names = {**fam.renames, **fam.sides[side]}
                out.update({names.get(f.name, f.name): getattr(cfg, f.name) for f in dataclasses.fields(cfg)
                            if f.name not in fam.omit and f.name not in ("extra", "model_type")})
            ids = ("decoder_start_token_id", "pad_token_id", "eos_token_id")
            return {**out, **{name: value for name in ids if (value := getattr(self, name)) is not None}}
        return {
            **self.extra,
            "model_type": "encoder-decoder",
            "is_encoder_decoder": True,
            "encoder": self.encoder.to_dict(),
            "decoder": self.decoder.to_dict(),
            "tie_encoder_decoder": self.tie_encoder_decoder,
            **{
                name: value
                for name in ("decoder_start_token_id", "pad_token_id", "eos_token_id")
                if (value := getattr(self, name)) is not None
            },
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"


@dataclass
class GenerationConfig:
    """Generation settings as in generation_config.json (transformers' names, meanings and defaults)."""

    max_length: int | None = None  # unset: 20 new tokens, as transformers
    max_new_tokens: int | None = None
    min_length: int = 0
    min_new_tokens: int | None = None
    early_stopping: bool | str = False
    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    bad_words_ids: list[list[int]] | None = None
    num_return_sequences: int = 1
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | None = None
    decoder_start_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationConfig:
        known, extra = _split_known(cls, data)
        return cls(**known, extra=extra)

    @classmethod
    def from_model_config(cls, config: dict[str, Any]) -> GenerationConfig:
        """Legacy checkpoints keep generation keys at the top of config.json (and ids in the decoder section)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        out = cls(**{k: v for k, v in config.items() if k in names and v is not None})
        default = cls()
        for name, value in (config.get("decoder") or {}).items():
            if name in names and value is not None and getattr(out, name) == getattr(default, name):
                setattr(out, name, value)
        return out

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**self.extra, **out}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def updated(self, **overrides: Any) -> GenerationConfig:
        """A copy with the given settings replaced; an unknown name is a TypeError naming it."""
        names = {f.name for f in dataclasses.fields(self)} - {"extra"}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"unknown generation setting(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **overrides, extra=dict(self.extra))
