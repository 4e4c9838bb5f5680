"""What produced an output: the run's identity (input files, model and weights, every setting that can change
a summary, code version), recorded with the output so that a resumed run never mixes two kinds of summaries."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import posixpath
import subprocess
from typing import Any

from . import storage


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


def weights_fingerprint(model: str, storage_options: dict[str, Any] | None = None) -> str:
    """sha256 over the weight files' names, sizes and content hashes (S3: ETags, so nothing is downloaded)."""
    fs, root = storage.url_to_fs(model, storage_options)
    infos = sorted((i for i in fs.ls(root, detail=True)
                    if i["name"].endswith((".safetensors", ".safetensors.index.json", ".bin"))),
                   key=lambda i: i["name"])
    if not infos:
        raise FileNotFoundError(f"no weight files (*.safetensors, *.bin) in model {model}")
    total = hashlib.sha256()
    for info in infos:
        tag = info.get("ETag")
        if not tag:
            content = hashlib.sha256()
            with fs.open(info["name"], "rb") as f:
                while chunk := f.read(1 << 24):
                    content.update(chunk)
            tag = content.hexdigest()
        total.update(f"{posixpath.basename(info['name'])}\0{info['size']}\0{str(tag).strip(chr(34))}\n".encode())
    return total.hexdigest()



def inputs_digest(shards: list[Any]) -> str:
    """sha256 of the input files' relative names, sizes and versions (what a listing tells)."""
    text = "".join(f"{s.name}\0{s.size}\0{s.version}\n" for s in shards)
    return hashlib.sha256(text.encode()).hexdigest()


def differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'key: recorded -> current' for every key whose value differs."""
    return [f"{k}: {recorded.get(k)!r} -> {current.get(k)!r}" for k in sorted(recorded.keys() | current.keys())
            if recorded.get(k) != current.get(k)]
