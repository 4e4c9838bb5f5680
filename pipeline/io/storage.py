"""Object storage: locations, listing Parquet shards, JSON markers, atomic writes, batch moves and deletes.

A URL is resolved once into a `Location` (its fsspec filesystem and the path on it, s3:// through s3fs, which
reads AWS_ENDPOINT_URL, credentials and region from the standard AWS environment), which is then passed on, so
reading, writing and checkpointing all see the same bucket the same way. Ray Data gets the same filesystem
wrapped for pyarrow.
"""

from __future__ import annotations

import dataclasses
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

from .secrets import redact_url

GLOB_CHARS = "*?["
EXCLUSIVE_CREATE_SINCE = "2024.12.0"  # the fsspec/s3fs release that added mode="create" (S3's If-None-Match)
MARKER_NAME = "_SUCCESS.json"
# botocore's retries of each S3 request (throttling, 5xx, dropped connections, timeouts): its standard mode,
# backoff rand(0, 1) * min(2 ** try, 20) s between tries, so 6 tries wait at most 1 + 2 + 4 + 8 + 16 = 31 s.
# docs/cluster.md ("Storage under load") has the whole bound and how to tune it.
S3_RETRIES = {"mode": "standard", "total_max_attempts": 6}


def absolute(url: str) -> str:
    """Local paths made absolute, so that Ray workers in other folders resolve them the same way."""
    return url if "://" in url else os.path.abspath(url)


@dataclass(frozen=True, repr=False)
class Location:
    """A URL resolved once: its filesystem (opened with the storage options, which it keeps and pickles with,
    so a Ray worker gets the same access) and the protocol-less path on it. `str` and `repr` show the URL
    with passwords masked, never the options."""

    fs: fsspec.AbstractFileSystem
    path: str

    @classmethod
    def of(cls, url: str, storage_options: dict[str, Any] | None = None) -> Location:
        """The URL resolved with fsspec (local paths come out absolute)."""
        fs, path = fsspec.core.url_to_fs(url, **client_options(url, storage_options))
        return cls(fs, path)

    @property
    def url(self) -> str:
        """The path as the user would write it: plain for local files, with scheme otherwise."""
        return self.path if isinstance(self.fs, LocalFileSystem) else self.fs.unstrip_protocol(self.path)

    def child(self, *names: str) -> Location:
        return self.at(posixpath.join(self.path.rstrip("/"), *names))

    def at(self, path: str) -> Location:
        """Another protocol-less path on the same filesystem."""
        return dataclasses.replace(self, path=path)

    def fresh_fs(self) -> fsspec.AbstractFileSystem:
        """The filesystem with its listing cache dropped: listings never come from a stale cache (other
        processes write here too)."""
        self.fs.invalidate_cache()
        return self.fs

    def __str__(self) -> str:
        return redact_url(self.url)

    def __repr__(self) -> str:
        return f"Location({str(self)!r})"


def client_options(url: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """The storage options for `url` with its client's retry settings filled in where they set none: for s3://,
    botocore's `S3_RETRIES` (`config_kwargs.retries`; s3fs passes `config_kwargs` to botocore's Config)."""
    options = dict(storage_options or {})
    if fsspec.core.split_protocol(url)[0] not in ("s3", "s3a"):
        return options
    config = options.get("config_kwargs") or {}
    return {**options, "config_kwargs": {"retries": S3_RETRIES, **config}}


def arrow_fs(loc: Location) -> pafs.FileSystem:
    """A pyarrow filesystem for Ray Data (read, write, checkpoints), for paths like `loc.path`."""
    if isinstance(loc.fs, LocalFileSystem):
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(loc.fs))


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


def list_shards(loc: Location) -> tuple[str, list[FileInfo]]:
    """The Parquet shards at a file, folder (recursively) or glob location, sorted, from one listing, with the
    root their relative names start from (the folder, the glob's fixed prefix, or the file's folder)."""
    fs, path = loc.fresh_fs(), loc.path
    if any(c in path for c in GLOB_CHARS):
        root = posixpath.dirname(path[:min(path.index(c) for c in GLOB_CHARS if c in path)] + "x")
        infos = fs.glob(path, detail=True)
    else:
        root = path.rstrip("/")
        infos = fs.find(root, detail=True)
        if root in infos:  # the location names one file (find returns it, with or without details)
            root, infos = posixpath.dirname(root), {root: infos[root] or fs.info(root)}
        infos = {p: i for p, i in infos.items() if not is_hidden(p[len(root):]) and p.endswith(".parquet")}
    found = sorted(FileInfo(p, int(i.get("size") or 0), version_of(i)) for p, i in infos.items()
                   if i.get("type") == "file")
    if not found:
        raise FileNotFoundError(f"no Parquet shards at {loc}")
    return root.rstrip("/"), found


def list_parquet(loc: Location) -> list[str]:
    """The Parquet shards at a file, folder (recursively) or glob location, sorted, as protocol-less paths."""
    return [f.path for f in list_shards(loc)[1]]


def exists(loc: Location) -> bool:
    return loc.fresh_fs().exists(loc.path)


def read_json(loc: Location) -> dict[str, Any] | None:
    """The JSON object at `loc`, or None when there is none."""
    fs = loc.fresh_fs()
    if not fs.exists(loc.path):
        return None
    with fs.open(loc.path, "r") as f:
        return json.load(f)


def write_bytes_atomic(loc: Location, data: bytes, exclusive: bool = False) -> bool:
    """Readers see the old content or the new, never a partial file; with `exclusive`, write only if nothing
    is at `loc` (False when something is)."""
    return write_atomic(loc.fresh_fs(), loc.path, data, exclusive)


def write_json_atomic(loc: Location, obj: dict[str, Any], exclusive: bool = False) -> bool:
    """As write_bytes_atomic, for a JSON object."""
    data = (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()
    return write_bytes_atomic(loc, data, exclusive)


def create_json(loc: Location, obj: dict[str, Any], token: str) -> tuple[bool, dict[str, Any] | None]:
    """Create the JSON object `obj` at `loc` unless something is there, recognising its own write: (True, what
    storage holds) when the object at `loc` is this writer's, created now or found carrying this writer's
    `obj[token]` after a create whose outcome was unclear (its reply lost, then the client's retry refused
    because the object existed; an error after the write); (False, what is there, None if it is gone since)
    when another writer's is. A create that failed with nothing written raises its error."""
    failed: OSError | None = None
    try:
        if write_json_atomic(loc, obj, exclusive=True):
            return True, obj
    except OSError as e:
        failed = e
    try:
        there = read_json(loc)
    except FileNotFoundError:  # deleted between the listing and the read
        there = None
    if there is None and failed is not None:
        raise failed
    return there is not None and there.get(token) == obj[token], there


def check_writable(loc: Location) -> None:
    """Write a probe object under `loc`, create it again exclusively (which must be refused) and delete it:
    PermissionError naming the location and the cause if writing fails; ValueError if the filesystem does not
    honour exclusive creates, which run records and leases rely on."""
    fs, path = loc.fresh_fs(), loc.child(f".write-probe-{uuid.uuid4().hex}").path
    try:
        if isinstance(fs, LocalFileSystem):  # object stores have no folders; makedirs there would create buckets
            fs.makedirs(posixpath.dirname(path), exist_ok=True)
        fs.pipe_file(path, b"")
    except Exception as e:  # any failure here means the job could not write its output
        raise PermissionError(f"output {loc} is not writable: {type(e).__name__}: {e}") from e
    package = type(fs).__module__.split(".")[0]
    needed = (f"run records and leases need exclusive creates; supported: local disk, S3 through s3fs >= "
              f"{EXCLUSIVE_CREATE_SINCE}")
    try:
        overwritten = write_atomic(fs, path, b"again", exclusive=True)
    except Exception as e:  # an s3fs before mode="create" passes it on to botocore, which refuses it
        raise ValueError(f"output {loc}: an exclusive create on {type(fs).__name__} ({package} {_version(package)}) "
                         f"failed ({type(e).__name__}: {e}); {needed}") from e
    finally:
        try:
            fs.rm(path)
        except Exception as e:  # the job deletes what it replaces: it needs the right to
            raise PermissionError(f"output {loc}: a file written there cannot be deleted: {type(e).__name__}: {e}"
                                  ) from e
    if overwritten:
        raise ValueError(f"output {loc}: {type(fs).__name__} ({package} {_version(package)}) does not honour "
                         f"exclusive creates (it wrote over an existing file); {needed}")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "version unknown"


def data_files(folder: Location) -> list[str]:
    """Visible Parquet files under a folder, as protocol-less paths (empty when the folder does not exist)."""
    fs = folder.fresh_fs()
    if not fs.isdir(folder.path):
        return []
    root = folder.path.rstrip("/")
    return sorted(p for p in fs.find(root) if p.endswith(".parquet") and not is_hidden(p[len(root):]))


def remove_tree(loc: Location) -> None:
    fs = loc.fresh_fs()
    if fs.exists(loc.path):
        fs.rm(loc.path, recursive=True)


def data_names(folder: Location) -> list[str]:
    """Visible Parquet files under a folder, relative to it, from one listing."""
    root = folder.path.rstrip("/")
    return [p[len(root) + 1:] for p in data_files(folder)]


def move_files(src: Location, dst: Location, names: list[str]) -> None:
    """Move files by relative name from folder `src` to folder `dst` (same filesystem), each atomically: renames
    on local disk; on object stores one batch of server-side copies, then one batch of deletes."""
    if not names:
        return
    fs = src.fresh_fs()
    pairs = [(src.child(n).path, dst.child(n).path) for n in names]
    if isinstance(fs, LocalFileSystem):
        for a, b in pairs:
            os.makedirs(os.path.dirname(b), exist_ok=True)
            os.replace(a, b)
        return
    fs.copy([a for a, _ in pairs], [b for _, b in pairs])
    fs.rm([a for a, _ in pairs])


def remove_files(folder: Location, names: list[str]) -> None:
    """Delete files by relative name in one batch (S3: DeleteObjects, up to 1,000 keys a request)."""
    if names:
        folder.fresh_fs().rm([folder.child(n).path for n in names])
