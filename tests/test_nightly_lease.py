"""Leases and partition discovery on a real S3 endpoint (moto) and on local disk; no Ray."""

from __future__ import annotations

import pickle
import posixpath
import threading
import time
import uuid

import fsspec
import pytest
import s3fs
from ray import cloudpickle

from pipeline.io.lease import Lease, LeaseLost
from pipeline.io.storage import Location, write_bytes_atomic
from pipeline.nightly.partitions import discover, select


@pytest.fixture(params=["s3", "local"])
def root(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path)
    request.getfixturevalue("s3_endpoint")
    bucket = f"lease-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem().mkdir(bucket)
    return f"s3://{bucket}"


def test_a_location_travels_pickled_and_never_shows_its_options(root):
    options = {"key": "test-key", "secret": "hunter2-value"} if root.startswith("s3://") else {}
    loc = Location.of(f"{root}/x", options)
    write_bytes_atomic(loc.child("a.json"), b"{}")
    for module in (pickle, cloudpickle):  # Ray ships task arguments with cloudpickle
        back = module.loads(module.dumps(loc))
        assert back == loc and type(back.fs) is type(loc.fs) and back.fs.storage_options == loc.fs.storage_options
        assert back.fs.cat_file(back.child("a.json").path) == b"{}"
    assert "hunter2" not in repr(loc) + str(loc) and str(loc) == loc.url == f"{root}/x"
    with_password = Location.of("https://user:hunter2@example.com/x")
    assert str(with_password.child("y")) == "https://user:***@example.com/x/y"
    assert "hunter2" not in repr(with_password)


def test_exclusive_write_has_one_winner(root):
    url = Location.of(f"{root}/x/one.json")
    results: list[bool] = []
    threads = [threading.Thread(target=lambda i=i: results.append(write_bytes_atomic(url, str(i).encode(),
                                                                                     exclusive=True)))
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]


def test_only_one_contender_gets_the_lease(root):
    leases = [Lease(Location.of(f"{root}/_leases/date=2026-01-01"), f"owner-{i}", ttl_s=60) for i in range(6)]
    won: list[str] = []
    threads = [threading.Thread(target=lambda lease=lease: lease.try_acquire() is None and won.append(lease.owner))
               for lease in leases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1
    holder = next(lease for lease in leases if lease.owner == won[0])
    other = next(lease for lease in leases if lease.owner != won[0])
    assert other.try_acquire()["owner"] == won[0]
    holder.renew()
    holder.release()
    assert other.try_acquire() is None
    assert other.current()[1]["owner"] == other.owner
    other.release()


def test_expired_lease_is_taken_over_and_the_old_holder_learns_it(root):
    url = Location.of(f"{root}/_leases/date=2026-01-02")
    slow, fast = Lease(url, "slow", ttl_s=0.5), Lease(url, "fast", ttl_s=60)
    assert slow.try_acquire() is None
    assert fast.try_acquire()["owner"] == "slow"
    time.sleep(0.6)
    assert fast.try_acquire() is None
    with pytest.raises(LeaseLost, match="fast"):
        slow.renew()
    with pytest.raises(LeaseLost):
        slow.check()
    slow.release()  # a lost lease is not released over the new holder
    assert fast.current()[1]["owner"] == "fast" and fast.current()[1]["state"] == "held"
    fast.release()
    assert fast.current()[1]["state"] == "released"
    assert len(fast._generations()) == 1  # older generations are cleaned up


def test_discovery_orders_by_date_carries_keys_and_ignores_undated(root):
    fs, base = fsspec.core.url_to_fs(root)
    paths = ["c/region=eu/date=2026-01-03/a.parquet", "c/date=2026-01-01/b.parquet", "c/date=2026-01-01/a.parquet",
             "c/date=2026-01-02/_tmp.parquet", "c/loose.parquet", "c/date=nope/a.parquet", "c/date=2026-01-02/x.txt",
             "c/date=2026-01-02/region=us/a.parquet"]
    for p in paths:
        fs.makedirs(posixpath.dirname(f"{base}/{p}"), exist_ok=True)
        fs.pipe_file(f"{base}/{p}", b"12345")
    found = discover(Location.of(f"{root}/c"))
    assert [p.path for p in found.partitions] == ["date=2026-01-01", "date=2026-01-02/region=us",
                                                  "region=eu/date=2026-01-03"]
    assert [f.name for f in found.partitions[0].inputs] == ["a.parquet", "b.parquet"]
    assert all(f.size == 5 and f.version for p in found.partitions for f in p.inputs)
    assert dict(found.partitions[2].keys) == {"region": "eu", "date": "2026-01-03"}
    assert found.ignored == ["date=nope/a.parquet", "loose.parquet"]
    assert [p.path for p in select(found.partitions, since="2026-01-02")] == ["date=2026-01-02/region=us",
                                                                               "region=eu/date=2026-01-03"]
    assert [p.path for p in select(found.partitions, date="2026-01-01")] == ["date=2026-01-01"]


def test_discovery_lists_only_the_selected_dates_when_the_layout_allows(root):
    fs, base = fsspec.core.url_to_fs(root)
    for day in range(1, 8):
        fs.makedirs(f"{base}/d/date=2026-02-0{day}", exist_ok=True)
        fs.pipe_file(f"{base}/d/date=2026-02-0{day}/a.parquet", b"12345")
    fs.pipe_file(f"{base}/d/loose.parquet", b"1")
    one = discover(Location.of(f"{root}/d"), date="2026-02-03")
    assert [p.path for p in one.partitions] == ["date=2026-02-03"] and one.listings == 2
    recent = discover(Location.of(f"{root}/d"), since="2026-02-06")
    assert [p.path for p in recent.partitions] == ["date=2026-02-06", "date=2026-02-07"] and recent.listings == 3
    assert recent.ignored == ["loose.parquet"]
    everything = discover(Location.of(f"{root}/d"))
    assert len(everything.partitions) == 7 and everything.listings == 1


def test_renewal_whose_response_is_lost_keeps_the_lease_and_storage_errors_are_retried(root, monkeypatch):
    from pipeline.io import lease as lease_module
    from pipeline.io import storage

    write = storage.write_bytes_atomic
    calls: list[str] = []

    def lost_once(loc, data, exclusive=False):
        done = write(loc, data, exclusive=exclusive)
        calls.append(loc.url)
        if len(calls) == 1:  # written, response lost, s3fs's retry answered 412: "something is there"
            return False
        if len(calls) == 2:  # written, response lost, no retry: an error
            raise OSError("injected: response lost")
        return done

    monkeypatch.setattr(lease_module, "RETRIES", (0.01, 0.01))
    lease = Lease(Location.of(f"{root}/_leases/date=2026-01-05"), "me", ttl_s=60)
    assert lease.try_acquire() is None
    monkeypatch.setattr(storage, "write_bytes_atomic", lost_once)
    lease.renew()  # generation 2 was written by us: read back, not "taken over"
    assert lease.generation == 2 and not lease.lost.is_set()
    lease.check()
    assert lease.current()[1]["owner"] == "me" and lease.generation == 3 and len(calls) == 2

    monkeypatch.setattr(storage, "write_bytes_atomic", lambda *a, **k: (_ for _ in ()).throw(OSError("409")))
    other = Lease(Location.of(f"{root}/_leases/date=2026-01-06"), "other", ttl_s=60)
    with pytest.raises(OSError, match="409"):
        other.try_acquire()  # tried 1 + len(RETRIES) times, then the error is the caller's
    monkeypatch.setattr(storage, "write_bytes_atomic", write)
    lease.release()
    assert lease.current()[1]["state"] == "released"
