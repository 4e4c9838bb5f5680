"""The reader contract of the nightly output: the data files that the partitions' markers name."""

from __future__ import annotations

import posixpath
from typing import Any

from ..io import storage


def committed_files(output: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """The data files that the partitions' markers name: what a reader that follows the markers reads."""
    fs, root = storage.url_to_fs(output, storage_options)
    files = []
    for path in sorted(fs.find(root.rstrip("/"))):
        rel = path[len(root.rstrip("/")) + 1:]
        if rel.endswith(f"/{storage.MARKER_NAME}") and not storage.is_hidden(posixpath.dirname(rel)):
            folder = posixpath.dirname(path)
            marker = storage.read_json(fs.unstrip_protocol(path), storage_options) or {}
            files.extend(fs.unstrip_protocol(f"{folder}/{name}") for name in marker.get("files", []))
    return files
