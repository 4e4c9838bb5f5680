"""Hive partitions of a growing corpus and the state of their output: discovery, input manifests, markers.

A partition is a folder of Parquet shards whose path under the corpus root is made of `key=value` parts, one
of them `date=YYYY-MM-DD` (`date=2026-11-24/` or `region=eu/date=2026-11-24/`). Its output lives at the same
relative path under the output root. The completion marker `_SUCCESS.json` there is written last and names the
data files of the current run; everything else about the partition is derived from listings and that marker.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import posixpath
from dataclasses import dataclass, field
from typing import Any

from ..io import storage
from ..io.fingerprints import differences
from ..io.storage import Location

STAGING = "_staging"  # in-progress runs: <output>/_staging/<partition>/run-<id>/ (hidden from Parquet readers)
LEASES = "_leases"  # <output>/_leases/<partition>/<generation>.json


@dataclass(frozen=True)
class Roots:
    """A nightly run's corpus and output, each resolved once; a partition's folders are at its path under them."""

    corpus: Location
    output: Location


@dataclass(frozen=True)
class InputFile:
    """One input shard as the storage reports it; `version` is the S3 ETag, else the modification time."""

    name: str  # relative to the partition folder
    size: int
    version: str

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "version": self.version}


@dataclass(frozen=True)
class Partition:
    """One leaf partition: `path` is relative to both roots, e.g. 'date=2026-11-24' or 'date=.../region=eu'."""

    path: str
    keys: tuple[tuple[str, str], ...]
    inputs: tuple[InputFile, ...]

    @property
    def date(self) -> str:
        return dict(self.keys)["date"]

    @property
    def sort_key(self) -> tuple[str, str]:
        return self.date, self.path

    def manifest(self) -> list[dict[str, Any]]:
        return [f.as_dict() for f in self.inputs]


@dataclass
class Discovery:
    partitions: list[Partition]  # oldest first
    ignored: list[str] = field(default_factory=list)  # Parquet files outside any dated partition
    listings: int = 1  # listing calls made (a recursive one counts once)


def partition_keys(folder: str) -> tuple[tuple[str, str], ...] | None:
    """('date', '2026-11-24'), ... for a relative folder made only of key=value parts with a valid date."""
    keys = []
    for part in folder.split("/"):
        key, sep, value = part.partition("=")
        if not sep or not key or not value:
            return None
        keys.append((key, value))
    date = dict(keys).get("date")
    try:
        dt.date.fromisoformat(date or "")
    except ValueError:
        return None
    return tuple(keys) if date and len(date) == 10 else None


def _find(fs, root: str, folder: str, by_folder: dict[str, list[InputFile]], ignored: list[str]) -> None:
    """Add every Parquet shard under `root/folder` (one recursive listing) to its partition."""
    base = f"{root}/{folder}".rstrip("/")
    for path, info in sorted(fs.find(base, detail=True).items()):
        rel = path[len(root) + 1:]
        if info.get("type") != "file" or not rel.endswith(".parquet") or storage.is_hidden(rel):
            continue
        parent, name = posixpath.split(rel)
        if not parent or partition_keys(parent) is None:
            ignored.append(rel)
            continue
        by_folder.setdefault(parent, []).append(InputFile(name, int(info["size"]), storage.version_of(info)))


def discover(corpus: Location, date: str | None = None, since: str | None = None) -> Discovery:
    """The dated leaf partitions under `corpus` with their shards (sizes and versions), oldest first; with
    `date` or `since`, only those. When every top-level folder is a `date=` one, only the selected dates are
    listed (one listing of the root, one per date); otherwise the whole corpus is listed once, recursively."""
    fs, root = corpus.fresh_fs(), corpus.path.rstrip("/")
    if not fs.isdir(root):
        raise FileNotFoundError(f"corpus {corpus} does not exist or is not a folder")
    by_folder: dict[str, list[InputFile]] = {}
    ignored: list[str] = []
    listings = 1
    top = fs.ls(root, detail=True) if date or since else []
    folders = [posixpath.basename(i["name"].rstrip("/")) for i in top if i.get("type") == "directory"]
    visible = [f for f in folders if not storage.is_hidden(f)]
    if visible and all(f.startswith("date=") for f in visible):
        ignored = sorted(posixpath.basename(i["name"]) for i in top
                         if i.get("type") == "file" and i["name"].endswith(".parquet"))
        chosen = [f for f in visible
                  if (date is None or f == f"date={date}") and (since is None or f >= f"date={since}")]
        for folder in chosen:
            _find(fs, root, folder, by_folder, ignored)
        listings += len(chosen)
    else:
        listings = 2 if top else 1
        _find(fs, root, "", by_folder, ignored)
    found = [Partition(folder, partition_keys(folder), tuple(files)) for folder, files in by_folder.items()]
    partitions = select(found, date, since)
    return Discovery(sorted(partitions, key=lambda p: p.sort_key), sorted(ignored), listings)


def rescan(corpus: Location, partition: Partition) -> Partition | None:
    """The partition's shards as they are now (None when it has none left): one listing of its folder."""
    folder = corpus.child(partition.path)
    try:
        infos = folder.fresh_fs().ls(folder.path, detail=True)
    except FileNotFoundError:
        return None
    files = sorted((InputFile(posixpath.basename(i["name"].rstrip("/")), int(i["size"]), storage.version_of(i))
                    for i in infos
                    if i.get("type") == "file" and i["name"].endswith(".parquet")
                    and not storage.is_hidden(posixpath.basename(i["name"]))), key=lambda f: f.name)
    return dataclasses.replace(partition, inputs=tuple(files)) if files else None


@dataclass(frozen=True)
class PartitionState:
    """What the output holds for one partition, and what a run must do about it."""

    partition: Partition
    reason: str  # "new", "changed", "incomplete" (a run died before its marker), "stale" (done with another model
    # or settings: redone only when asked) or "done"
    detail: str = ""
    marker: dict[str, Any] | None = None
    stray_files: tuple[str, ...] = ()  # data files not named by the marker (an interrupted switch)
    staging: bool = False  # leftovers of an earlier run under _staging/

    @property
    def todo(self) -> bool:
        return self.reason not in ("done", "stale")


def _diff(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> str:
    before = {f["name"]: f for f in old}
    after = {f["name"]: f for f in new}
    added = sorted(after.keys() - before.keys())
    removed = sorted(before.keys() - after.keys())
    modified = sorted(n for n in after.keys() & before.keys() if after[n] != before[n])
    parts = [f"{label}: {', '.join(names)}" for label, names in
             (("added", added), ("removed", removed), ("modified", modified)) if names]
    return "; ".join(parts)


def state_of(partition: Partition, output: Location, settings: dict[str, Any] | None = None) -> PartitionState:
    """Compare the partition's inputs, and `settings` (model and what else the summaries depend on) if given,
    with its marker; reads only (listings and the marker)."""
    out = output.child(partition.path)
    marker = storage.read_json(out.child(storage.MARKER_NAME))
    staging = storage.exists(output.child(STAGING, partition.path))
    if marker is None:
        if staging:
            return PartitionState(partition, "incomplete", "an earlier run stopped before its marker", staging=True)
        return PartitionState(partition, "new", f"{len(partition.inputs)} input file(s)")
    if marker.get("inputs") != partition.manifest():
        return PartitionState(partition, "changed", _diff(marker.get("inputs", []), partition.manifest()),
                              marker, staging=staging)
    stray = tuple(name for name in storage.data_names(out) if name not in marker["files"])
    recorded = marker.get("settings") or {}
    if settings is not None and recorded != settings:
        keys = sorted(k for k in {*recorded, *settings} if recorded.get(k) != settings.get(k))
        detail = f"done with other {', '.join(keys)}"
        if recorded.get("identity_version") != settings.get("identity_version"):
            detail = f"done with {differences(recorded, settings)[0]}"
        return PartitionState(partition, "stale", detail, marker, stray, staging)
    return PartitionState(partition, "done", marker.get("ended_at", ""), marker, stray, staging)


def select(partitions: list[Partition], date: str | None = None, since: str | None = None) -> list[Partition]:
    """Only `date`, or `since` and later (ISO dates compare as strings)."""
    return [p for p in partitions if (date is None or p.date == date) and (since is None or p.date >= since)]
