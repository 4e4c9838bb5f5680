"""Object storage: URL -> filesystem, listing Parquet shards, JSON markers, small atomic writes, moves.

Every URL goes through fsspec with the job's storage options (s3:// through s3fs, which reads AWS_ENDPOINT_URL,
credentials and region from the standard AWS environment), so reading, writing and checkpointing all see the
same bucket the same way. Ray Data gets the same filesystem wrapped for pyarrow.
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from typing import Any

import fsspec
import pyarrow.fs as pafs
from fsspec.implementations.local import LocalFileSystem

GLOB_CHARS = "*?["
MARKER_NAME = "_SUCCESS.json"


def absolute(url: str) -> str:
    """Local paths made absolute, so that Ray workers in other folders resolve them the same way."""
    return url if "://" in url else os.path.abspath(url)


def url_to_fs(url: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and protocol-less path of a URL; listings are never served from a stale cache."""
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    fs.invalidate_cache()
    return fs, path


def arrow_fs(url: str, storage_options: dict[str, Any] | None = None) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem for Ray Data (read, write, checkpoints) and the path it expects."""
    fs, path = url_to_fs(url, storage_options)
    if isinstance(fs, LocalFileSystem):
        return pafs.LocalFileSystem(), path
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def to_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A protocol-less path back as the user would write it: plain for local files, with scheme otherwise."""
    return path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)


def is_hidden(path: str) -> bool:
    """Files and folders starting with '_' or '.' (markers, checkpoints, temporary files) are not data."""
    return any(part.startswith(("_", ".")) for part in path.split("/") if part)


def list_parquet(url: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """The Parquet shards at a file, folder (recursively) or glob URL, sorted, as protocol-less paths."""
    fs, path = url_to_fs(url, storage_options)
    if any(c in path for c in GLOB_CHARS):
        found = [p for p in fs.glob(path) if fs.isfile(p)]
    elif fs.isfile(path):
        return [path]
    elif fs.isdir(path):
        root = path.rstrip("/")
        found = [p for p in fs.find(root) if not is_hidden(p[len(root):]) and p.endswith(".parquet")]
    else:
        found = []
    if not found:
        raise FileNotFoundError(f"no Parquet shards at {url}")
    return sorted(found)


def join(url: str, *names: str) -> str:
    return posixpath.join(url.rstrip("/"), *names)


def exists(url: str, storage_options: dict[str, Any] | None = None) -> bool:
    fs, path = url_to_fs(url, storage_options)
    return fs.exists(path)


def read_json(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The JSON object at `url`, or None when there is none."""
    fs, path = url_to_fs(url, storage_options)
    if not fs.exists(path):
        return None
    with fs.open(path, "r") as f:
        return json.load(f)


def write_bytes_atomic(url: str, data: bytes, storage_options: dict[str, Any] | None = None) -> None:
    """Readers see the old content or the new, never a partial file (local: rename; object stores: one PUT)."""
    fs, path = url_to_fs(url, storage_options)
    if isinstance(fs, LocalFileSystem):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)


def write_json_atomic(url: str, obj: dict[str, Any], storage_options: dict[str, Any] | None = None) -> None:
    write_bytes_atomic(url, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode(), storage_options)


def check_writable(url: str, storage_options: dict[str, Any] | None = None) -> None:
    """Write and delete a probe object under `url`; PermissionError naming the URL and the cause if that fails."""
    probe = join(url, f".write-probe-{uuid.uuid4().hex}")
    try:
        fs, path = url_to_fs(probe, storage_options)
        if isinstance(fs, LocalFileSystem):  # object stores have no folders; makedirs there would create buckets
            fs.makedirs(posixpath.dirname(path), exist_ok=True)
        fs.pipe_file(path, b"")
        fs.rm(path)
    except Exception as e:  # any failure here means the job could not write its output
        raise PermissionError(f"output {url} is not writable: {type(e).__name__}: {e}") from e


def data_files(url: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Visible Parquet files under a folder URL (empty when the folder does not exist)."""
    fs, path = url_to_fs(url, storage_options)
    if not fs.isdir(path):
        return []
    root = path.rstrip("/")
    return sorted(p for p in fs.find(root) if p.endswith(".parquet") and not is_hidden(p[len(root):]))


def remove_tree(url: str, storage_options: dict[str, Any] | None = None) -> None:
    fs, path = url_to_fs(url, storage_options)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def move_tree(src: str, dst: str, storage_options: dict[str, Any] | None = None) -> None:
    """Move every file under `src` to the same relative path under `dst` (copy + delete on object stores)."""
    fs, src_path = url_to_fs(src, storage_options)
    _, dst_path = url_to_fs(dst, storage_options)
    src_root = src_path.rstrip("/")
    for file in fs.find(src_root):
        target = posixpath.join(dst_path.rstrip("/"), file[len(src_root) + 1:])
        fs.makedirs(posixpath.dirname(target), exist_ok=True)
        fs.mv(file, target)
    fs.invalidate_cache()
    if fs.exists(src_root):
        fs.rm(src_root, recursive=True)
