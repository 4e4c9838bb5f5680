"""A lease with an expiry, kept as objects in the output, race-safe on S3 and on local disk.

The lease at `<location>/` is a chain of generations `000000000001.json`, `000000000002.json`, ... each saying who
holds it until when (or that it was released). The only write is "create generation n+1 if absent": S3's
conditional PutObject (`If-None-Match: *`), a hard link on local disk. Whoever creates n+1 read n first, so
the chain is a linear history and exactly one contender wins each step: taking a free or expired lease,
renewing a held one and releasing it are all the same compare-and-swap. Old generations are deleted; the
newest never is.

A write whose outcome is unclear is read back; owners are unique, so a generation with our owner is ours.
That covers an S3 PUT whose response was lost (s3fs retries it and gets 412: the object exists, and it is
ours) and a 409 or 503, which say nothing about whether the object was written. Storage errors are retried
with backoff (`RETRIES`). A holder whose renewals keep failing until its expiry sets `lost`, which the nightly
job watches to stop the partition's work.

Limits: expiry compares wall clocks, so hosts must agree on time to well within the TTL; a holder that stalls
past its expiry (a long GC pause, a frozen VM) loses the lease and learns it only at its next renewal or
`check()`, so work done after that point must be safe to repeat (the nightly job checks before it commits).
"""

from __future__ import annotations

import os
import posixpath
import socket
import threading
import time
import uuid
from typing import Any

import psutil

from . import storage
from .storage import Location

RETRIES = (0.2, 0.5, 1.0, 2.0)  # seconds between tries of one lease operation on a storage error


class LeaseLost(RuntimeError):
    """Another owner took the lease over (ours had expired) or it could not be renewed."""


def retried(op, *args):
    """op(*args), tried again after each pause of RETRIES on an OSError (S3's 409, 503, a dropped connection);
    the last error is raised."""
    for pause in RETRIES:
        try:
            return op(*args)
        except OSError:
            time.sleep(pause)
    return op(*args)


def new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _pid_namespace() -> str:
    """The process id namespace (Linux): containers that share a host name have their own pids."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def this_process() -> dict[str, Any]:
    """Where a lease holder runs, for `owner_gone`: host, pid namespace, pid and the process's start time."""
    return {"host": socket.gethostname(), "pid_namespace": _pid_namespace(), "pid": os.getpid(),
            "started": psutil.Process().create_time()}


def owner_gone(record: dict[str, Any]) -> bool:
    """True when the lease record's holder is a process of this host and pid namespace that no longer runs
    (its pid is free or now another process's): its lease is dead although not yet expired. A holder
    elsewhere is never known gone before its expiry."""
    where = record.get("process") or {}
    here = this_process()
    if not where or (where["host"], where["pid_namespace"]) != (here["host"], here["pid_namespace"]):
        return False
    try:
        return psutil.Process(where["pid"]).create_time() != where["started"]
    except psutil.NoSuchProcess:
        return True


class Lease:
    """One owner's handle on the lease at `location`."""

    def __init__(self, location: Location, owner: str, ttl_s: float):
        self.location, self.owner, self.ttl_s = location, owner, ttl_s
        self.process = this_process()
        self.generation = 0  # ours, once acquired
        self.expires_at = 0.0
        self._lock = threading.Lock()
        self.lost = threading.Event()  # set once the lease is known lost (taken over, or expired unrenewed)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost: str | None = None

    def _name(self, generation: int) -> Location:
        return self.location.child(f"{generation:012d}.json")

    def _generations(self) -> list[int]:
        try:
            names = [posixpath.basename(p) for p in self.location.fresh_fs().ls(self.location.path, detail=False)]
        except FileNotFoundError:
            return []
        return sorted(int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit())

    def current(self) -> tuple[int, dict[str, Any] | None]:
        """The newest generation and its record (0, None when the lease never existed)."""
        generations = self._generations()
        if not generations:
            return 0, None
        try:
            return generations[-1], storage.read_json(self._name(generations[-1]))
        except FileNotFoundError:  # superseded and deleted since the listing: the caller looks again
            return generations[-1], None

    def holder(self) -> dict[str, Any] | None:
        """The record of whoever holds the lease now, or None when it is free, released or expired."""
        record = self.current()[1]
        if record and record["state"] == "held" and record["expires_at"] > time.time():
            return record
        return None

    def _put(self, generation: int, state: str) -> bool:
        """Create `generation`; True if it is ours, also when the write's outcome was unclear (read back)."""
        expires_at = time.time() + self.ttl_s if state == "held" else 0.0
        record = {"owner": self.owner, "process": self.process, "state": state, "expires_at": expires_at,
                  "expires": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires_at))}
        ours, there = storage.create_json(self._name(generation), record, "owner")  # owners are unique
        if not ours:
            return False
        self.generation, self.expires_at = generation, there["expires_at"]  # storage's, not a retry's later one
        self._delete_older()
        return True

    def _delete_older(self) -> None:
        for generation in self._generations():
            if generation < self.generation:
                try:
                    self.location.fresh_fs().rm(self._name(generation).path)
                except FileNotFoundError:  # another owner cleaned it up first
                    pass

    def try_acquire(self) -> dict[str, Any] | None:
        """Take the lease if it is free, released or expired: None when taken, else the holder's record."""
        for _ in range(3):  # a lost race means someone else moved the chain; look again
            generation, record = self.current()
            if record and record["state"] == "held" and record["expires_at"] > time.time():
                return record
            with self._lock:
                if retried(self._put, generation + 1, "held"):
                    return None
        return self.current()[1]

    def take_over(self) -> dict[str, Any] | None:
        """Take the lease from a holder known to be gone (`owner_gone` of its record) before its expiry: None
        when taken, else the record of whoever moved the chain first."""
        with self._lock:
            if retried(self._put, self.current()[0] + 1, "held"):
                return None
        return self.current()[1]

    def _lose(self, why: str) -> LeaseLost:
        self._lost = self._lost or why
        self.lost.set()
        return LeaseLost(self._lost)

    def renew(self) -> None:
        """Extend the lease by a TTL; LeaseLost if another owner has it; OSError if storage keeps failing."""
        with self._lock:
            if self._lost:
                raise LeaseLost(self._lost)
            if not retried(self._put, self.generation + 1, "held"):
                holder = self.current()[1] or {}
                raise self._lose(f"lease {self.location} was taken over by {holder.get('owner')}")

    def ensure_held(self) -> None:
        """Raise LeaseLost if the lease is known lost or our expiry passed; no storage call (cheap enough to
        call once per committed unit)."""
        if self.lost.is_set():
            raise LeaseLost(self._lost)
        if time.time() >= self.expires_at:
            raise self._lose(f"lease {self.location} expired at {self.expires_at:.0f} before it was renewed")

    def check(self) -> None:
        """Raise LeaseLost if a renewal failed or our expiry passed; renews otherwise."""
        if time.time() >= self.expires_at:
            raise self._lose(f"lease {self.location} expired at {self.expires_at:.0f} before it was renewed")
        try:
            self.renew()
        except OSError as e:
            if time.time() >= self.expires_at:
                raise self._lose(f"lease {self.location} expired at {self.expires_at:.0f}: renewals failed ({e})"
                                 ) from e
            raise

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            if not self._lost and self.generation:
                retried(self._put, self.generation + 1, "released")

    def keep_alive(self) -> None:
        """Renew every third of the TTL in a background thread until `release()`."""

        def beat() -> None:
            pause = self.ttl_s / 3
            while not self._stop.wait(pause):
                try:
                    if time.time() >= self.expires_at:
                        raise self._lose(f"lease {self.location} expired at {self.expires_at:.0f}: renewals failed")
                    self.renew()
                    pause = self.ttl_s / 3
                except LeaseLost:
                    return
                except Exception:  # storage or credentials trouble: try again soon, before the expiry
                    pause = max(0.05, min(self.ttl_s / 10, self.expires_at - time.time()))

        self._thread = threading.Thread(target=beat, name=f"lease {self.location}", daemon=True)
        self._thread.start()
