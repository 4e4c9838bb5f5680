"""What produced an output: the run's identity (input files, model and weights, every setting that can change
a summary, code version), recorded with the output so that a resumed run never mixes two kinds of summaries."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import posixpath
import subprocess
from typing import Any

from model import DECODER_TOKENIZER

from .storage import Location


def code_version() -> str:
    """The package version, plus the git commit when the code runs from a checkout."""
    try:
        version = importlib.metadata.version("bert2bert-batch")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=os.path.dirname(__file__),
                             capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        return f"{version}+g{sha}"
    except (OSError, subprocess.SubprocessError):  # no git, or not a checkout (e.g. a Ray working_dir)
        return version


# Besides the weights, every file that changes what the model computes or how text becomes ids. The generation
# config is not hashed: the settings resolved from it (and the job's flags) are recorded themselves.
MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
               "vocab.txt", "spiece.model", "vocab.json", "merges.txt")
WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json", ".bin")
# Bumped when the identity gains fields: a record of an older version has unknown settings (never equal).
# 4: the dtype the replicas resolve (not "auto"), the decoder tokenizer given apart (URL and files' digest).
# 5: the output gains the score column (a partition of version 4 has none: it is redone, no mix of files).
IDENTITY_VERSION = 5


def _model_files(folder: Location, label: str = "") -> list[tuple[str, Any, dict]]:
    """(label + name, filesystem, listing info) of a folder's weight, config and tokenizer files; none if the
    folder does not exist."""
    fs = folder.fresh_fs()
    try:
        listed = fs.ls(folder.path, detail=True)
    except FileNotFoundError:
        return []
    return [(label + posixpath.basename(i["name"]), fs, i) for i in listed
            if posixpath.basename(i["name"]) in MODEL_FILES or i["name"].endswith(WEIGHT_SUFFIXES)]


def _digest(files: list[tuple[str, Any, dict]]) -> str:
    """sha256 over the names, sizes and content hashes of `files` (S3: ETags, so nothing is downloaded)."""
    total = hashlib.sha256()
    for label, fs, info in sorted(files, key=lambda f: f[0]):
        tag = info.get("ETag")
        if not tag:
            content = hashlib.sha256()
            with fs.open(info["name"], "rb") as f:
                while chunk := f.read(1 << 24):
                    content.update(chunk)
            tag = content.hexdigest()
        total.update(f"{label}\0{info['size']}\0{str(tag).strip(chr(34))}\n".encode())
    return total.hexdigest()


def model_fingerprint(model: Location) -> str:
    """The digest of the model's weight, config and tokenizer files and of its `decoder_tokenizer/`, from one
    listing per folder."""
    files = _model_files(model)
    if not any(i["name"].endswith(WEIGHT_SUFFIXES) for _, _, i in files):
        raise FileNotFoundError(f"no weight files (*.safetensors, *.bin) in model {model}")
    return _digest(files + _model_files(model.child(DECODER_TOKENIZER), f"{DECODER_TOKENIZER}/"))


def tokenizer_fingerprint(folder: Location) -> str:
    """The digest of a tokenizer folder's files (a decoder tokenizer given apart), from one listing."""
    files = _model_files(folder)
    if not files:
        raise FileNotFoundError(f"no tokenizer files ({', '.join(MODEL_FILES[1:])}) in {folder}")
    return _digest(files)


def inputs_digest(shards: list[Any]) -> str:
    """sha256 of the input files' relative names, sizes and versions (what a listing tells)."""
    text = "".join(f"{s.name}\0{s.size}\0{s.version}\n" for s in shards)
    return hashlib.sha256(text.encode()).hexdigest()


def differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'key: recorded -> current' for every key whose value differs; a record of an older identity version
    has unknown settings, which differ from any."""
    if recorded.get("identity_version") != current.get("identity_version"):
        return [f"settings unknown: recorded with identity version {recorded.get('identity_version', 1)}, this "
                f"code writes {current.get('identity_version')} (it covers every generation setting, the tokenizer "
                "and config files, the dtype the replicas compute in, a decoder tokenizer given apart, the output's "
                "score column)"]
    return [f"{k}: {recorded.get(k)!r} -> {current.get(k)!r}" for k in sorted(recorded.keys() | current.keys())
            if recorded.get(k) != current.get(k)]
