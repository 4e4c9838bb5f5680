"""The reader contract of the nightly output: the data files that the partitions' markers name."""

from __future__ import annotations

import posixpath
from typing import Any

from ..io import storage
from ..io.storage import Location


def committed_files(output: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """The data files that the partitions' markers name: what a reader that follows the markers reads."""
    top = Location.of(output, storage_options)
    root = top.path.rstrip("/")
    files = []
    for path in sorted(top.fresh_fs().find(root)):
        rel = path[len(root) + 1:]
        if rel.endswith(f"/{storage.MARKER_NAME}") and not storage.is_hidden(posixpath.dirname(rel)):
            folder = posixpath.dirname(path)
            marker = storage.read_json(top.at(path)) or {}
            files.extend(top.fs.unstrip_protocol(f"{folder}/{name}") for name in marker.get("files", []))
    return files
