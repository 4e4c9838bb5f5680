"""Object storage: URL -> filesystem, listing Parquet shards, JSON markers, atomic writes, batch moves and deletes.

Every URL goes through fsspec with the job's storage options (s3:// through s3fs, which reads AWS_ENDPOINT_URL,
credentials and region from the standard AWS environment), so reading, writing and checkpointing all see the
same bucket the same way. Ray Data gets the same filesystem wrapped for pyarrow.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import posixpath
import uuid
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow.fs as pafs
from fsspec.implementations.local import LocalFileSystem

from model import write_atomic

GLOB_CHARS = "*?["
EXCLUSIVE_CREATE_SINCE = "2024.12.0"  # the fsspec/s3fs release that added mode="create" (S3's If-None-Match)
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


@dataclass(frozen=True, order=True)
class FileInfo:
    """One file as a listing reports it; `version` is the S3 ETag, else the modification time."""

    path: str  # protocol-less
    size: int
    version: str


def version_of(info: dict[str, Any]) -> str:
    etag = info.get("ETag") or info.get("etag")
    if etag:
        return str(etag).strip('"')
    mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified")
    return mtime.isoformat() if isinstance(mtime, dt.datetime) else str(mtime)


def list_shards(url: str, storage_options: dict[str, Any] | None = None) -> tuple[str, list[FileInfo]]:
    """The Parquet shards at a file, folder (recursively) or glob URL, sorted, from one listing, with the root
    their relative names start from (the folder, the glob's fixed prefix, or the file's folder)."""
    fs, path = url_to_fs(url, storage_options)
    if any(c in path for c in GLOB_CHARS):
        root = posixpath.dirname(path[:min(path.index(c) for c in GLOB_CHARS if c in path)] + "x")
        infos = fs.glob(path, detail=True)
    else:
        root = path.rstrip("/")
        infos = fs.find(root, detail=True)
        if root in infos:  # the URL names one file (find returns it, with or without details)
            root, infos = posixpath.dirname(root), {root: infos[root] or fs.info(root)}
        infos = {p: i for p, i in infos.items() if not is_hidden(p[len(root):]) and p.endswith(".parquet")}
    found = sorted(FileInfo(p, int(i.get("size") or 0), version_of(i)) for p, i in infos.items()
                   if i.get("type") == "file")
    if not found:
        raise FileNotFoundError(f"no Parquet shards at {url}")
    return root.rstrip("/"), found


def list_parquet(url: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """The Parquet shards at a file, folder (recursively) or glob URL, sorted, as protocol-less paths."""
    return [f.path for f in list_shards(url, storage_options)[1]]


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


def write_bytes_atomic(url: str, data: bytes, storage_options: dict[str, Any] | None = None,
                       exclusive: bool = False) -> bool:
    """Readers see the old content or the new, never a partial file; with `exclusive`, write only if nothing
    is at `url` (False when something is)."""
    fs, path = url_to_fs(url, storage_options)
    return write_atomic(fs, path, data, exclusive)


def write_json_atomic(url: str, obj: dict[str, Any], storage_options: dict[str, Any] | None = None,
                      exclusive: bool = False) -> bool:
    """As write_bytes_atomic, for a JSON object."""
    data = (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()
    return write_bytes_atomic(url, data, storage_options, exclusive)


def check_writable(url: str, storage_options: dict[str, Any] | None = None) -> None:
    """Write a probe object under `url`, create it again exclusively (which must be refused) and delete it:
    PermissionError naming the URL and the cause if writing fails; ValueError if the filesystem does not honour
    exclusive creates, which run records and leases rely on."""
    probe = join(url, f".write-probe-{uuid.uuid4().hex}")
    try:
        fs, path = url_to_fs(probe, storage_options)
        if isinstance(fs, LocalFileSystem):  # object stores have no folders; makedirs there would create buckets
            fs.makedirs(posixpath.dirname(path), exist_ok=True)
        fs.pipe_file(path, b"")
    except Exception as e:  # any failure here means the job could not write its output
        raise PermissionError(f"output {url} is not writable: {type(e).__name__}: {e}") from e
    package = type(fs).__module__.split(".")[0]
    needed = (f"run records and leases need exclusive creates; supported: local disk, S3 through s3fs >= "
              f"{EXCLUSIVE_CREATE_SINCE}")
    try:
        overwritten = write_atomic(fs, path, b"again", exclusive=True)
    except Exception as e:  # an s3fs before mode="create" passes it on to botocore, which refuses it
        raise ValueError(f"output {url}: an exclusive create on {type(fs).__name__} ({package} {_version(package)}) "
                         f"failed ({type(e).__name__}: {e}); {needed}") from e
    finally:
        try:
            fs.rm(path)
        except Exception as e:  # the job deletes what it replaces: it needs the right to
            raise PermissionError(f"output {url}: a file written there cannot be deleted: {type(e).__name__}: {e}"
                                  ) from e
    if overwritten:
        raise ValueError(f"output {url}: {type(fs).__name__} ({package} {_version(package)}) does not honour "
                         f"exclusive creates (it wrote over an existing file); {needed}")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "version unknown"


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


def data_names(folder: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Visible Parquet files under a folder URL, relative to it, from one listing."""
    root = url_to_fs(folder, storage_options)[1].rstrip("/")
    return [p[len(root) + 1:] for p in data_files(folder, storage_options)]


def move_files(src: str, dst: str, names: list[str], storage_options: dict[str, Any] | None = None) -> None:
    """Move files by relative name from folder `src` to folder `dst`, each atomically: renames on local disk;
    on object stores one batch of server-side copies, then one batch of deletes."""
    if not names:
        return
    fs, src_root = url_to_fs(src, storage_options)
    _, dst_root = url_to_fs(dst, storage_options)
    pairs = [(posixpath.join(src_root, n), posixpath.join(dst_root, n)) for n in names]
    if isinstance(fs, LocalFileSystem):
        for a, b in pairs:
            os.makedirs(os.path.dirname(b), exist_ok=True)
            os.replace(a, b)
        return
    fs.copy([a for a, _ in pairs], [b for _, b in pairs])
    fs.rm([a for a, _ in pairs])


def remove_files(folder: str, names: list[str], storage_options: dict[str, Any] | None = None) -> None:
    """Delete files by relative name in one batch (S3: DeleteObjects, up to 1,000 keys a request)."""
    if names:
        fs, root = url_to_fs(folder, storage_options)
        fs.rm([posixpath.join(root, n) for n in names])
