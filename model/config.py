"""The three configs, read from and written to Hugging Face's json layout.

Every config keeps the keys it does not know in `extra` and writes them back, so a config.json
round-trips without losing anything another tool put there.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")
MODEL_TYPES = ("bert", "bert-generation")


def _split_known(cls, data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
    known = {k: v for k, v in data.items() if k in names}
    extra = {k: v for k, v in data.items() if k not in names}
    return known, extra


@dataclass
class BertConfig:
    """A BERT or BertGeneration config.json, as transformers writes it."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
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
    model_type: str = "bert"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type {self.model_type!r} is not supported; expected one of {MODEL_TYPES}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported; expected one of {ACTIVATIONS}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}"
            )
        position_type = self.extra.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ValueError(f"position_embedding_type {position_type!r} is not supported; only 'absolute' is")

    @property
    def has_token_types(self) -> bool:
        return self.model_type == "bert"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BertConfig:
        data = dict(data)
        if data.get("model_type") == "bert-generation":
            data.setdefault("type_vocab_size", 0)
            data.setdefault("bos_token_id", 2)
            data.setdefault("eos_token_id", 1)
        known, extra = _split_known(cls, data)
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        if self.model_type == "bert-generation":
            out.pop("type_vocab_size")
        return {**self.extra, **out}


@dataclass
class EncoderDecoderConfig:
    """An `encoder-decoder` config.json: two nested BERT configs and the ids that tie them together."""

    encoder: BertConfig
    decoder: BertConfig
    decoder_start_token_id: int | None = None
    pad_token_id: int | None = None
    eos_token_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (self.decoder.is_decoder and self.decoder.add_cross_attention):
            raise ValueError("the decoder config needs is_decoder=True and add_cross_attention=True")
        if self.extra.get("tie_encoder_decoder"):
            raise ValueError("tie_encoder_decoder=True is not supported")
        if self.encoder.is_decoder:
            raise ValueError("the encoder config has is_decoder=True; an encoder must be bidirectional")

    @classmethod
    def from_encoder_decoder_configs(
        cls, encoder: BertConfig, decoder: BertConfig, **kwargs: Any
    ) -> EncoderDecoderConfig:
        decoder = dataclasses.replace(decoder, is_decoder=True, add_cross_attention=True, extra=dict(decoder.extra))
        return cls(encoder=encoder, decoder=decoder, **kwargs)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderDecoderConfig:
        if data.get("model_type") != "encoder-decoder":
            raise ValueError(f"expected model_type 'encoder-decoder', got {data.get('model_type')!r}")
        for part in ("encoder", "decoder"):
            if not isinstance(data.get(part), dict):
                raise ValueError(f"config has no '{part}' section")
        known, extra = _split_known(cls, data)
        known["encoder"] = BertConfig.from_dict(data["encoder"])
        known["decoder"] = BertConfig.from_dict(data["decoder"])
        extra.pop("model_type", None)
        extra.pop("is_encoder_decoder", None)
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.extra,
            "model_type": "encoder-decoder",
            "is_encoder_decoder": True,
            "encoder": self.encoder.to_dict(),
            "decoder": self.decoder.to_dict(),
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
