"""Object storage under load, on a real moto S3 server behind a fault-injecting proxy on loopback
(tests/faults/s3_proxy.py): throttling (503 SlowDown) and writes carried out whose reply is lost."""

from __future__ import annotations

import json
import time

import pytest

from jobs import nightly, summarize
from pipeline.io import storage
from pipeline.io.lease import Lease
from pipeline.io.storage import Location
from tests.faults.s3_proxy import FaultyS3Proxy
from tests.helpers import DAY1, DAY2, numbered, put_shard, read_output


def test_exclusive_writes_recognise_their_own_after_a_lost_reply(s3_endpoint, bucket):
    # every write's reply dropped, up to max_faults: each step below arms one more lost reply
    with FaultyS3Proxy(s3_endpoint, seed=0, throttle=0.0, drop_writes=1.0, max_faults=1) as proxy:
        options = {"endpoint_url": proxy.url}
        at = Location.of(f"{bucket}/out/_RUN.json", options)
        assert storage.create_json(at, {"attempt": "a1", "n": 1}, "attempt") == (True, {"attempt": "a1", "n": 1})
        proxy.max_faults += 1  # a real race: the loser reads the winner's record back and stops
        assert storage.create_json(at, {"attempt": "b2", "n": 2}, "attempt") == (False, {"attempt": "a1", "n": 1})
        assert proxy.counts["dropped"] == 2

        lease = Lease(Location.of(f"{bucket}/out/_lease", options), "me", ttl_s=60)
        rival = Lease(lease.location, "rival", ttl_s=60)
        proxy.max_faults += 1
        assert lease.try_acquire() is None and lease.generation == 1
        proxy.max_faults += 1
        lease.renew()  # generation 2 written by us, its reply lost: ours, not "taken over"
        assert lease.generation == 2 and not lease.lost.is_set()
        assert rival.try_acquire()["owner"] == "me"
        proxy.max_faults += 1
        lease.release()
        proxy.max_faults += 1
        assert rival.try_acquire() is None and rival.generation == 4
        assert proxy.counts["dropped"] == 6
    assert storage.read_json(Location.of(f"{bucket}/out/_RUN.json")) == {"attempt": "a1", "n": 1}
    assert storage.read_json(Location.of(f"{bucket}/out/_lease/000000000004.json"))["owner"] == "rival"


def test_a_fault_that_outlasts_the_retries_fails_with_the_storages_message(s3_endpoint, bucket):
    retries = {"retries": {"mode": "standard", "total_max_attempts": 2}}
    with FaultyS3Proxy(s3_endpoint, seed=0, throttle=1.0, drop_writes=0.0) as proxy:  # throttled for good
        at = Location.of(f"{bucket}/x.json", {"endpoint_url": proxy.url, "config_kwargs": retries})
        start = time.monotonic()
        with pytest.raises(OSError, match="Please reduce your request rate"):
            storage.write_json_atomic(at, {"a": 1})
        took, tries = time.monotonic() - start, proxy.counts["requests"]
    # s3fs's 5 calls of botocore's 2 tries each, with backoff: bounded, and it gives up
    assert tries == 10 and took < 30
    assert storage.read_json(Location.of(f"{bucket}/x.json")) is None


FLAGS = ["--num-beams", "1", "--max-length", "8", "--batch-size", "2", "--replicas", "1"]
SECRET = "s3cr3t-never-in-a-log-9f1c"  # moto takes any credentials


def summaries(output: str) -> dict[int, str]:
    rows = read_output(output)
    assert len({r["id"] for r in rows}) == len(rows)  # every id once
    return {r["id"]: r["summary"] for r in rows}


def test_jobs_ride_out_throttling_and_lost_replies(local_ray, s3_endpoint, bucket, tiny_model, capfd):
    nights = [[(DAY1, "part-0", numbered(0, 4)), (DAY1, "part-1", numbered(4, 4))], [(DAY2, "part-0", numbered(8, 4))],
              [(DAY1, "part-late", numbered(12, 4))]]
    for n, shards in enumerate(nights):
        put_shard(f"{bucket}/articles/part-{n}.parquet", [r for _, _, rows in shards for r in rows])
    model = ["--model", str(tiny_model), *FLAGS]
    assert summarize.main(["--input", f"{bucket}/articles", "--output", f"{bucket}/clean", *model]) == 0
    clean = summaries(f"{bucket}/clean")
    assert sorted(clean) == list(range(16))

    start = time.monotonic()
    with FaultyS3Proxy(s3_endpoint, seed=35, throttle=0.1, drop_writes=0.2) as proxy:
        opts = ["--storage-options", json.dumps({"endpoint_url": proxy.url, "key": "testing", "secret": SECRET})]
        assert summarize.main(["--input", f"{bucket}/articles", "--output", f"{bucket}/faulted", *model, *opts]) == 0
        assert summaries(f"{bucket}/faulted") == clean
        for n, shards in enumerate(nights):  # three nights over a growing corpus, each through the proxy
            for day, name, rows in shards:
                put_shard(f"{bucket}/corpus/{day}/{name}.parquet", rows)
            assert nightly.main(["--corpus", f"{bucket}/corpus", "--output", f"{bucket}/nightly", *model, *opts]) == 0
            done = summaries(f"{bucket}/nightly")
            assert done == {i: clean[i] for i in range(4 * n + 8 if n else 8)}
        counts = dict(proxy.counts)
    took = time.monotonic() - start
    assert counts["throttled"] > 10 and counts["dropped"] > 10
    assert {r["id"]: r["date"] for r in read_output(f"{bucket}/nightly")} == {
        i: (DAY1 if i < 8 or i >= 12 else DAY2)[len("date="):] for i in range(16)}

    fs = Location.of(bucket).fresh_fs()
    written = [fs.cat_file(p) for p in fs.find(bucket)]
    assert not [p for p in written if SECRET.encode() in p]  # not in markers, run records, leases or reports
    out, err = capfd.readouterr()
    assert SECRET not in out + err
    with capfd.disabled():
        print(f"\nthrough the proxy: {counts}, summarize and three nights in {took:.1f} s")
