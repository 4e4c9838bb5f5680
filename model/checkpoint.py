"""Hugging Face checkpoints: key names, safetensors (single and sharded), configs, fsspec URLs.

The HF <-> ours mapping is one declarative table per BERT stack, with `{}` for the layer index.
Unknown keys raise, naming the key and the file; shapes are checked against the config.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable
from typing import Any

import fsspec
import torch
from fsspec.implementations.local import LocalFileSystem
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from .config import EncoderDecoderConfig, GenerationConfig

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
GENERATION_CONFIG_NAME = "generation_config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
PICKLE_NAME = "pytorch_model.bin"

# One BERT stack: HF module path -> our module path; `.weight` / `.bias` follow both.
STACK = {
    "embeddings.word_embeddings": "embed.tok",
    "embeddings.position_embeddings": "embed.pos",
    "embeddings.token_type_embeddings": "embed.tok_type",
    "embeddings.LayerNorm": "embed.norm",
    "encoder.layer.{}.attention.self.query": "layers.{}.attn.q",
    "encoder.layer.{}.attention.self.key": "layers.{}.attn.k",
    "encoder.layer.{}.attention.self.value": "layers.{}.attn.v",
    "encoder.layer.{}.attention.output.dense": "layers.{}.attn.o",
    "encoder.layer.{}.attention.output.LayerNorm": "layers.{}.attn.norm",
    "encoder.layer.{}.crossattention.self.query": "layers.{}.cross.q",
    "encoder.layer.{}.crossattention.self.key": "layers.{}.cross.k",
    "encoder.layer.{}.crossattention.self.value": "layers.{}.cross.v",
    "encoder.layer.{}.crossattention.output.dense": "layers.{}.cross.o",
    "encoder.layer.{}.crossattention.output.LayerNorm": "layers.{}.cross.norm",
    "encoder.layer.{}.intermediate.dense": "layers.{}.ffn_up",
    "encoder.layer.{}.output.dense": "layers.{}.ffn_down",
    "encoder.layer.{}.output.LayerNorm": "layers.{}.ffn_norm",
    "pooler.dense": "pooler",
}
BERT_HEAD = {
    "cls.predictions.transform.dense": "dense",
    "cls.predictions.transform.LayerNorm": "norm",
}
# Parameters of the LM head (not module paths). The projection is tied to the decoder's word embeddings and the
# projection's bias to `bias`, so their copies in a file are ignored unless the head is untied.
HEAD_PARAMS = {"cls.predictions.bias": "bias", "lm_head.bias": "bias"}
TIED_COPIES = {"cls.predictions.decoder.weight", "lm_head.decoder.weight"}
TIED_BIAS_COPIES = {"cls.predictions.decoder.bias", "lm_head.decoder.bias"}
IGNORED = re.compile(r"(.*\.)?embeddings\.(position_ids|token_type_ids)$|(.*\.)?cls\.seq_relationship\.(weight|bias)$")


def _compile(table: dict[str, str]) -> list[tuple[re.Pattern, str]]:
    """`{}` matches a layer index only, anchored on both ends, so no pattern can misfire on another key."""
    out = []
    for hf, ours in table.items():
        pattern = re.escape(hf).replace(r"\{\}", r"(?P<layer>\d+)")
        repl = ours.replace("{}", r"\g<layer>") + r".\g<param>"
        out.append((re.compile(rf"^{pattern}\.(?P<param>weight|bias)$"), repl))
    return out


STACK_RULES = _compile(STACK)
HEAD_RULES = _compile(BERT_HEAD)


def map_stack_key(key: str) -> str | None:
    for pattern, repl in STACK_RULES:
        if pattern.match(key):
            return pattern.sub(repl, key)
    return None


def hf_to_ours(key: str, untied_head: bool = False) -> str | None:
    """Our name for an HF EncoderDecoderModel key; None for a known benign key; KeyError if unknown."""
    if IGNORED.match(key) or key.removeprefix("decoder.") in TIED_BIAS_COPIES:
        return None
    if key.removeprefix("decoder.") in TIED_COPIES:
        return "lm_head.weight" if untied_head else None
    for prefix, ours in (("encoder.", "encoder."), ("decoder.bert.", "decoder.")):
        if key.startswith(prefix) and (mapped := map_stack_key(key[len(prefix):])):
            return ours + mapped
    if key.startswith("decoder."):
        rest = key[len("decoder."):]
        if rest in HEAD_PARAMS:
            return "lm_head." + HEAD_PARAMS[rest]
        for pattern, repl in HEAD_RULES:
            if pattern.match(rest):
                return "lm_head." + pattern.sub(repl, rest)
    if key in ("enc_to_dec_proj.weight", "enc_to_dec_proj.bias"):
        return key
    raise KeyError(key)


def ours_to_hf(key: str, decoder_type: str) -> str:
    """The HF name of one of our keys (the inverse of hf_to_ours)."""
    if key.startswith("lm_head."):
        name = key[len("lm_head."):]
        if decoder_type == "bert-generation":
            return {"bias": "decoder.lm_head.bias", "weight": "decoder.lm_head.decoder.weight"}[name]
        inverse = {v: k for k, v in BERT_HEAD.items()}
        module, _, param = name.rpartition(".")
        if module:
            return f"decoder.{inverse[module]}.{param}"
        return {"bias": "decoder.cls.predictions.bias", "weight": "decoder.cls.predictions.decoder.weight"}[name]
    if key.startswith("enc_to_dec_proj."):
        return key
    part, _, rest = key.partition(".")
    module, _, param = rest.rpartition(".")
    for hf, ours in STACK.items():
        pattern = re.compile("^" + re.escape(ours).replace(r"\{\}", r"(\d+)") + "$")
        if m := pattern.match(module):
            hf_module = hf.replace("{}", m.group(1)) if m.groups() else hf
            return ("encoder." if part == "encoder" else "decoder.bert.") + f"{hf_module}.{param}"
    raise KeyError(key)


# ---- files and URLs -------------------------------------------------------------------------------------------

def write_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes, exclusive: bool = False) -> bool:
    """Write `data` at `path` so that readers see the old content or the new, never a partial file: a rename
    on local disk, one PUT on object stores. With `exclusive`, only if nothing is there (a hard link, S3's
    If-None-Match): False when something is."""
    if isinstance(fs, LocalFileSystem):
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            if not exclusive:
                os.replace(tmp, path)
                return True
            try:
                os.link(tmp, path)  # fails if the name exists
                return True
            except FileExistsError:
                return False
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    try:
        fs.pipe_file(path, data, mode="create") if exclusive else fs.pipe_file(path, data)
        return True
    except FileExistsError:
        return False


class Folder:
    """A checkpoint folder on any fsspec filesystem; messages name files by their URL."""

    def __init__(self, url: str | os.PathLike, storage_options: dict[str, Any] | None = None):
        self.url = str(url).rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        self.root = self.root.rstrip("/")

    def name(self, file: str) -> str:
        return f"{self.url}/{file}"

    def exists(self, file: str) -> bool:
        return self.fs.exists(f"{self.root}/{file}")

    def read_bytes(self, file: str) -> bytes:
        try:
            return self.fs.cat_file(f"{self.root}/{file}")
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{self.name(file)}: file not found") from e

    def read_json(self, file: str) -> dict:
        try:
            return json.loads(self.read_bytes(file))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{self.name(file)}: not valid JSON ({e})") from e

    def write_atomic(self, file: str, data: bytes) -> None:
        """Readers see the old content or the new, never a partial file."""
        write_atomic(self.fs, f"{self.root}/{file}", data)

    def read_safetensors(self, file: str) -> dict[str, torch.Tensor]:
        try:
            if isinstance(self.fs, LocalFileSystem):
                with safe_open(f"{self.root}/{file}", framework="pt") as f:  # memory-mapped
                    return {k: f.get_tensor(k) for k in f.keys()}
            return load_safetensors_bytes(self.read_bytes(file))
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{self.name(file)}: file not found") from e
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"{self.name(file)}: not a readable safetensors file ({e})") from e


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
                  dtype: torch.dtype | None, allow_pickle: bool = False,
                  storage_options: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """Our state dict from an HF encoder-decoder checkpoint, checked key by key and shape by shape."""
    folder = Folder(url, storage_options)
    state: dict[str, torch.Tensor] = {}
    unexpected = []
    for file, key, tensor in read_weights(folder, allow_pickle):
        try:
            ours = hf_to_ours(key, untied_head)
        except KeyError:
            unexpected.append(f"{key} ({file})")
            continue
        if ours is None:
            continue
        if ours not in expected:
            unexpected.append(f"{key} ({file})")
            continue
        if tensor.shape != expected[ours]:
            raise ValueError(
                f"{file}: {key} has shape {list(tensor.shape)} but config.json implies {list(expected[ours])}"
            )
        state[ours] = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
    missing = sorted(set(expected) - set(state))
    if unexpected or missing:
        lines = [f"checkpoint at {folder.url} does not match its config.json:"]
        if missing:
            lines.append("missing keys: " + ", ".join(ours_to_hf(k, config.decoder.model_type) for k in missing))
        if unexpected:
            lines.append("unexpected keys: " + ", ".join(unexpected))
        raise ValueError("\n".join(lines))
    return state


def save_hf(url: str, state: dict[str, torch.Tensor], config: EncoderDecoderConfig,
            generation: GenerationConfig, storage_options: dict[str, Any] | None = None) -> None:
    """Weights first, then generation_config.json, then config.json: a reader that finds the new config
    finds the new weights. Tied weights are stored once, under HF's names."""
    folder = Folder(url, storage_options)
    decoder_type = config.decoder.model_type
    tensors = {ours_to_hf(k, decoder_type): v.detach().contiguous().cpu() for k, v in state.items()}
    folder.write_atomic(WEIGHTS_NAME, save_safetensors_bytes(tensors, metadata={"format": "pt"}))
    folder.write_atomic(GENERATION_CONFIG_NAME, generation.to_json().encode())
    folder.write_atomic(CONFIG_NAME, config.to_json().encode())


def read_bert(url: str, storage_options: dict[str, Any] | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """config.json and weights of a single BERT checkpoint (BertModel, BertForMaskedLM, BertLMHeadModel,
    BertGeneration...), with the `bert.` prefix of headed models removed."""
    folder = Folder(url, storage_options)
    tensors = {key.removeprefix("bert."): tensor for _, key, tensor in read_weights(folder)}
    return folder.read_json(CONFIG_NAME), tensors


def warm_start_state(tensors: dict[str, torch.Tensor], part: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Our keys for one BERT checkpoint used as `part` ("encoder" or "decoder"); also the keys not used."""
    state, unused = {}, []
    for key, tensor in tensors.items():
        if IGNORED.match(key) or key in TIED_COPIES or key in TIED_BIAS_COPIES:
            continue
        mapped = map_stack_key(key)
        if mapped is not None and not (part == "decoder" and mapped.startswith("pooler")):
            state[f"{part}.{mapped}"] = tensor
            continue
        if part == "decoder":
            if key in HEAD_PARAMS:
                state["lm_head." + HEAD_PARAMS[key]] = tensor
                continue
            rule = next(((p, r) for p, r in HEAD_RULES if p.match(key)), None)
            if rule is not None:
                state["lm_head." + rule[0].sub(rule[1], key)] = tensor
                continue
        unused.append(key)
    return state, unused
