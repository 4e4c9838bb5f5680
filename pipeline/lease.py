"""A lease with an expiry, kept as objects in the output, race-safe on S3 and on local disk.

The lease at `<url>/` is a chain of generations `000000000001.json`, `000000000002.json`, ... each saying who
holds it until when (or that it was released). The only write is "create generation n+1 if absent": S3's
conditional PutObject (`If-None-Match: *`), a hard link on local disk. Whoever creates n+1 read n first, so
the chain is a linear history and exactly one contender wins each step: taking a free or expired lease,
renewing a held one and releasing it are all the same compare-and-swap. Old generations are deleted; the
newest never is.

Limits: expiry compares wall clocks, so hosts must agree on time to well within the TTL; a holder that stalls
past its expiry (a long GC pause, a frozen VM) loses the lease and learns it only at its next renewal or
`check()`, so work done after that point must be safe to repeat (the nightly job checks before it commits).
"""

from __future__ import annotations

import json
import os
import posixpath
import socket
import threading
import time
import uuid
from typing import Any

from . import storage


class LeaseLost(RuntimeError):
    """Another owner took the lease over (ours had expired) or it could not be renewed."""


def new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Lease:
    """One owner's handle on the lease at `url`."""

    def __init__(self, url: str, owner: str, ttl_s: float, storage_options: dict[str, Any] | None = None):
        self.url, self.owner, self.ttl_s = url, owner, ttl_s
        self.storage_options = storage_options or {}
        self.generation = 0  # ours, once acquired
        self.expires_at = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost: str | None = None

    def _name(self, generation: int) -> str:
        return storage.join(self.url, f"{generation:012d}.json")

    def _generations(self) -> list[int]:
        fs, path = storage.url_to_fs(self.url, self.storage_options)
        try:
            names = [posixpath.basename(p) for p in fs.ls(path, detail=False)]
        except FileNotFoundError:
            return []
        return sorted(int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit())

    def current(self) -> tuple[int, dict[str, Any] | None]:
        """The newest generation and its record (0, None when the lease never existed)."""
        generations = self._generations()
        if not generations:
            return 0, None
        try:
            return generations[-1], storage.read_json(self._name(generations[-1]), self.storage_options)
        except FileNotFoundError:  # superseded and deleted since the listing: the caller looks again
            return generations[-1], None

    def holder(self) -> dict[str, Any] | None:
        """The record of whoever holds the lease now, or None when it is free, released or expired."""
        record = self.current()[1]
        if record and record["state"] == "held" and record["expires_at"] > time.time():
            return record
        return None

    def _put(self, generation: int, state: str) -> bool:
        expires_at = time.time() + self.ttl_s if state == "held" else 0.0
        record = {"owner": self.owner, "state": state, "expires_at": expires_at,
                  "expires": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires_at))}
        if not storage.write_bytes_atomic(self._name(generation), json.dumps(record).encode(), self.storage_options,
                                          exclusive=True):
            return False
        self.generation, self.expires_at = generation, expires_at
        self._delete_older()
        return True

    def _delete_older(self) -> None:
        fs, _ = storage.url_to_fs(self.url, self.storage_options)
        for generation in self._generations():
            if generation < self.generation:
                try:
                    fs.rm(storage.url_to_fs(self._name(generation), self.storage_options)[1])
                except FileNotFoundError:  # another owner cleaned it up first
                    pass

    def try_acquire(self) -> dict[str, Any] | None:
        """Take the lease if it is free, released or expired: None when taken, else the holder's record."""
        for _ in range(3):  # a lost race means someone else moved the chain; look again
            generation, record = self.current()
            if record and record["state"] == "held" and record["expires_at"] > time.time():
                return record
            with self._lock:
                if self._put(generation + 1, "held"):
                    return None
        return self.current()[1]

    def renew(self) -> None:
        with self._lock:
            if self._lost:
                raise LeaseLost(self._lost)
            if not self._put(self.generation + 1, "held"):
                holder = self.current()[1] or {}
                self._lost = f"lease {self.url} was taken over by {holder.get('owner')}"
                raise LeaseLost(self._lost)

    def check(self) -> None:
        """Raise LeaseLost if a renewal failed or our expiry passed; renews otherwise."""
        if time.time() >= self.expires_at:
            self._lost = self._lost or f"lease {self.url} expired at {self.expires_at:.0f} before it was renewed"
        self.renew()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            if not self._lost:
                self._put(self.generation + 1, "released")

    def keep_alive(self) -> None:
        """Renew every third of the TTL in a background thread until `release()`."""

        def beat() -> None:
            while not self._stop.wait(self.ttl_s / 3):
                try:
                    self.renew()
                except LeaseLost:
                    return
                except OSError:  # a storage hiccup: try again at the next beat, check() catches an expiry
                    continue

        self._thread = threading.Thread(target=beat, name=f"lease {self.url}", daemon=True)
        self._thread.start()
