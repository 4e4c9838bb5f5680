"""The three configs, read from and written to Hugging Face's json layout.

Every config keeps the keys it does not know in `extra` and writes them back, so a config.json
round-trips without losing anything another tool put there.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
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
    encoder_repetition_penalty: float = 1.0
    encoder_no_repeat_ngram_size: int = 0
    sequence_bias: list[list[Any]] | None = None  # [[token ids, bias], ...]; a {tuple: bias} dict is converted
    exponential_decay_length_penalty: list[Any] | None = None  # [start index, decay factor]
    suppress_tokens: list[int] | None = None
    begin_suppress_tokens: list[int] | None = None
    remove_invalid_values: bool = False
    renormalize_logits: bool = False
    top_h: float | None = None
    min_p: float | None = None
    typical_p: float = 1.0
    epsilon_cutoff: float = 0.0
    eta_cutoff: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.sequence_bias, dict):
            self.sequence_bias = [[list(word), bias] for word, bias in self.sequence_bias.items()]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationConfig:
        """A generation_config.json: None stands for transformers' default; a key for a mode we do not run is a
        ValueError naming it, and a key we do not know a warning naming it."""
        known, extra = _split_known(cls, data)
        check_generation_keys(extra, source="generation_config.json")
        return cls(**{k: v for k, v in known.items() if v is not None}, extra=extra)

    @classmethod
    def from_model_config(cls, config: dict[str, Any]) -> GenerationConfig:
        """Legacy checkpoints keep generation keys at the top of config.json (and ids in the decoder section)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        for name in REFUSED_GENERATION_KEYS.keys() & config.keys():
            _refuse(name, config[name], "config.json")
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
        for name in sorted(REFUSED_GENERATION_KEYS.keys() & overrides.keys()):
            _refuse(name, overrides[name], "the call")
        for name in sorted(RETURN_FORMAT_KEYS & overrides.keys()):
            if overrides[name]:
                raise ValueError(f"{name}=True is not supported: generate returns the sequences and, with "
                                 f"return_dict_in_generate and output_scores, beam search's sequences_scores")
        extra = {k: overrides.pop(k) for k in sorted(TOKEN_NEUTRAL_KEYS & overrides.keys())}
        unknown = sorted(set(overrides) - names - REFUSED_GENERATION_KEYS.keys())
        if unknown:
            raise TypeError(f"unknown generation setting(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if k in names},
                                   extra={**self.extra, **extra})


_GROUP_BEAMS = "group (diverse) beam search, which transformers 5 no longer runs itself (Hub custom_generate)"
_CONSTRAINED = "constrained beam search, which transformers 5 no longer runs itself (Hub custom_generate)"
_ASSISTED = "assisted or speculative decoding, which needs a second model; generate runs one model"

# Keys of transformers 5.25's GenerationConfig for modes generate does not run, with the values that leave them
# off (transformers' defaults, also those transformers 4.x wrote) and why. Any other value is a ValueError.
REFUSED_GENERATION_KEYS: dict[str, tuple[tuple[Any, ...], str]] = {
    "num_beam_groups": ((None, 1), _GROUP_BEAMS),
    "diversity_penalty": ((None, 0, 0.0), _GROUP_BEAMS),
    "force_words_ids": ((None, []), _CONSTRAINED),
    "constraints": ((None, []), _CONSTRAINED),
    "penalty_alpha": ((None, 0, 0.0), "contrastive search, which transformers 5 no longer runs itself"),
    "dola_layers": ((None,), "DoLa decoding, for decoder-only models, which transformers 5 no longer runs itself"),
    "guidance_scale": ((None, 1, 1.0), "classifier-free guidance, which needs negative prompts"),
    "watermarking_config": ((None,), "watermarking"),
    "stop_strings": ((None, []), "stopping on strings, which needs the tokenizer inside generate; use eos_token_id"),
    "token_healing": ((None, False), "token healing, a prompt repair for decoder-only models"),
    "max_time": ((None,), "a wall-clock limit, which would make the summaries depend on the machine's speed"),
    "low_memory": ((None, False), "sequential beam search, which transformers 5 refuses too"),
    "use_mtp": ((None, False), "multi-token prediction, " + _ASSISTED),
    "speculation_type": ((None,), _ASSISTED),
    "prompt_lookup_num_tokens": ((None,), "prompt lookup decoding, " + _ASSISTED),
    "assistant_early_exit": ((None,), "self-speculative decoding, " + _ASSISTED),
    "is_assistant": ((None, False), _ASSISTED),
    "num_assistant_tokens": ((None,), _ASSISTED),
    "num_assistant_tokens_schedule": ((None,), _ASSISTED),
    "assistant_confidence_threshold": ((None,), _ASSISTED),
    "assistant_lookbehind": ((None,), _ASSISTED),
    "target_lookbehind": ((None,), _ASSISTED),
    "assistant_ensemble_weight": ((None,), _ASSISTED),
    "max_matching_ngram_size": ((None,), _ASSISTED),
}

# Keys of transformers' GenerationConfig that do not change the tokens: what transformers' generate returns
# besides them, its caches and compilation, and the file's own bookkeeping.
RETURN_FORMAT_KEYS = frozenset({"output_logits", "output_attentions", "output_hidden_states"})
TOKEN_NEUTRAL_KEYS = RETURN_FORMAT_KEYS | {"return_dict_in_generate", "output_scores",
    "use_cache", "cache_implementation", "cache_config", "max_cache_len", "compile_config", "disable_compile",
    "prefill_chunk_size", "continuous_batching_config", "transformers_version", "_from_model_config"}


def _refuse(name: str, value: Any, source: str) -> None:
    neutral, why = REFUSED_GENERATION_KEYS[name]
    if value is not None and not any(value == v and isinstance(value, bool) == isinstance(v, bool)
                                     for v in neutral if v is not None):
        raise ValueError(f"generation setting {name}={value!r} ({source}) is not supported: it asks for {why}")


def check_generation_keys(extra: dict[str, Any], source: str) -> None:
    """Refuse the keys of modes generate does not run; warn, naming them, about keys nobody knows."""
    for name in sorted(REFUSED_GENERATION_KEYS.keys() & extra.keys()):
        _refuse(name, extra[name], source)
    unknown = sorted(extra.keys() - REFUSED_GENERATION_KEYS.keys() - TOKEN_NEUTRAL_KEYS)
    if unknown:
        warnings.warn(f"{source}: unknown generation setting(s) {', '.join(unknown)} are not applied", stacklevel=3)
