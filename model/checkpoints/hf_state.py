"""Hugging Face checkpoints: safetensors (single and sharded), pickles on request, configs, fsspec URLs.

Key names go through keymap.py (the families' tables). Unknown keys raise, naming the key and the file;
shapes are checked against the config. A shared-weight model (tie_encoder_decoder) loads from transformers
4.x's layout (the encoder's shared tensors absent) or from a file with both copies, and saves both copies.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterable
from typing import Any

import torch
from safetensors.torch import save as save_safetensors_bytes

from ..config import EncoderDecoderConfig, GenerationConfig
from ..families import Family, family
from ..storage import Folder
from .keymap import KeyMap

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
GENERATION_CONFIG_NAME = "generation_config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
PICKLE_NAME = "pytorch_model.bin"

def read_configs(url: str | os.PathLike, storage_options: dict[str, Any] | None = None
                 ) -> tuple[EncoderDecoderConfig, GenerationConfig]:
    """The model config and generation settings of a checkpoint folder, without reading its weights."""
    folder = Folder(url, storage_options)
    raw = folder.read_json(CONFIG_NAME)
    try:
        config = EncoderDecoderConfig.from_dict(raw)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{folder.name(CONFIG_NAME)}: {e}") from e
    if folder.exists(GENERATION_CONFIG_NAME):
        return config, GenerationConfig.from_dict(folder.read_json(GENERATION_CONFIG_NAME))
    return config, GenerationConfig.from_model_config(raw)


def read_weights(folder: Folder, allow_pickle: bool = False) -> Iterable[tuple[str, str, torch.Tensor]]:
    """Yield (file URL, HF key, tensor) for every tensor of the checkpoint in `folder`."""
    if folder.exists(WEIGHTS_NAME):
        files = [WEIGHTS_NAME]
    elif folder.exists(WEIGHTS_INDEX_NAME):
        weight_map = folder.read_json(WEIGHTS_INDEX_NAME).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{folder.name(WEIGHTS_INDEX_NAME)}: no 'weight_map'")
        files = sorted(set(weight_map.values()))
    elif folder.exists(PICKLE_NAME):
        if not allow_pickle:
            raise ValueError(
                f"{folder.name(PICKLE_NAME)}: pickle checkpoints can run arbitrary code and are not loaded by "
                "default. Convert it once with `python -m model.convert SRC DST` (it reads the file with "
                "torch.load(weights_only=True) and writes safetensors), or pass allow_pickle=True."
            )
        state = torch.load(io.BytesIO(folder.read_bytes(PICKLE_NAME)), map_location="cpu", weights_only=True)
        yield from ((folder.name(PICKLE_NAME), k, v) for k, v in state.items())
        return
    else:
        raise FileNotFoundError(f"{folder.url}: no {WEIGHTS_NAME}, {WEIGHTS_INDEX_NAME} or {PICKLE_NAME} found")
    for file in files:
        for key, tensor in folder.read_safetensors(file).items():
            yield folder.name(file), key, tensor


def load_hf_state(url: str, config: EncoderDecoderConfig, expected: dict[str, torch.Size], untied_head: bool,
                  dtype: torch.dtype | None, allow_pickle: bool = False, storage_options: dict[str, Any] | None = None,
                  shared: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
    """Our state dict from an HF encoder-decoder checkpoint, checked key by key and shape by shape.

    shared maps our keys that alias another key's tensor (the tied encoder's) to that key: the file may hold
    both copies (they must be equal) or only the one it aliases (transformers 4.x's layout)."""
    folder = Folder(url, storage_options)
    keys = KeyMap.for_model(config, untied_head)
    state: dict[str, torch.Tensor] = {}
    unexpected = []
    for file, key, tensor in read_weights(folder, allow_pickle):
        try:
            pieces = keys.to_ours(key, tensor)
        except KeyError:
            unexpected.append(f"{key} ({file})")
            continue
        if pieces is None:
            continue
        if any(ours not in expected for ours, _ in pieces):
            unexpected.append(f"{key} ({file})")
            continue
        if any(piece.shape != expected[ours] for ours, piece in pieces):
            raise ValueError(
                f"{file}: {key} has shape {list(tensor.shape)} but config.json implies {keys.hf_shape(key, expected)}"
            )
        for ours, piece in pieces:
            state[ours] = piece.to(dtype) if dtype is not None and piece.is_floating_point() else piece
    for alias, source in (shared or {}).items():
        if alias in state and source in state and not torch.equal(state[alias], state[source]):
            raise ValueError(
                f"checkpoint at {folder.url}: config.json sets tie_encoder_decoder but {keys.hf_name(alias)} differs "
                f"from {keys.hf_name(source)}; set tie_encoder_decoder to false to load them apart")
        if source in state:
            state[alias] = state[source]
    missing = sorted(set(expected) - set(state))
    if unexpected or missing:
        lines = [f"checkpoint at {folder.url} does not match its config.json:"]
        if missing:
            lines.append("missing keys: " + ", ".join(
                dict.fromkeys(keys.hf_name(k) for k in missing if k not in keys.unsaved)))
        if unexpected:
            lines.append("unexpected keys: " + ", ".join(unexpected))
        raise ValueError("\n".join(lines))
    return state


def save_hf(url: str, state: dict[str, torch.Tensor], config: EncoderDecoderConfig, generation: GenerationConfig,
            untied_head: bool, storage_options: dict[str, Any] | None = None) -> None:
    """Weights first, then generation_config.json, then config.json: a reader that finds the new config
    finds the new weights. Tied LM-head weights are stored once, under HF's names; shared encoder weights are
    stored as copies (transformers 5 does not tie them)."""
    folder = Folder(url, storage_options)
    tensors, seen = {}, set()
    for key, tensor in KeyMap.for_model(config, untied_head).to_hf(state).items():
        tensor = tensor.contiguous().cpu()
        if tensor.untyped_storage().data_ptr() in seen:  # safetensors stores no two names for one memory
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        tensors[key] = tensor
    folder.write_atomic(WEIGHTS_NAME, save_safetensors_bytes(tensors, metadata={"format": "pt"}))
    folder.write_atomic(GENERATION_CONFIG_NAME, generation.to_json().encode())
    folder.write_atomic(CONFIG_NAME, config.to_json().encode())


def read_pretrained(url: str, storage_options: dict[str, Any] | None = None
                    ) -> tuple[dict, Family, dict[str, torch.Tensor]]:
    """config.json, family and weights of one pretrained checkpoint (BertModel, BertForMaskedLM, RobertaModel,
    RobertaForCausalLM, GPT2LMHeadModel...), with the base model's prefix of headed classes removed."""
    folder = Folder(url, storage_options)
    raw = folder.read_json(CONFIG_NAME)
    try:
        fam = family(raw.get("model_type", "bert"))
    except ValueError as e:
        raise ValueError(f"{folder.name(CONFIG_NAME)}: {e}") from e
    prefix = fam.base_prefix + "."
    tensors = {key.removeprefix(prefix): tensor for _, key, tensor in read_weights(folder)}
    return raw, fam, tensors


def warm_start_state(tensors: dict[str, torch.Tensor], fam: Family, part: str
                     ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Our keys for one pretrained checkpoint used as `part` ("encoder" or "decoder"); also the keys not used."""
    keys = KeyMap.for_part(fam, part)
    state, unused = {}, []
    for key, tensor in tensors.items():
        try:
            pieces = keys.to_ours(key, tensor)
        except KeyError:
            unused.append(key)
            continue
        state.update(pieces or ())
    return state, unused
