"""Files of a model folder on any fsspec filesystem (local paths and URLs such as s3://bucket/model), and the one
atomic write helper (also pipeline.io's, through `from model import write_atomic`)."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import fsspec
import torch
from fsspec.implementations.local import LocalFileSystem
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors_bytes


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
