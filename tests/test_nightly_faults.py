"""The nightly job under faults injected in the storage layer (moto S3 and a real local Ray): a lease that
cannot be renewed, S3 409s at acquire and release, a renewal whose response is lost, a crash between a
switch's copy and its delete; and a changed model."""

from __future__ import annotations

import json
import threading
import time

import pyarrow.parquet as pq

from pipeline.io import storage
from pipeline.io.lease import Lease
from pipeline.io.storage import Location
from pipeline.nightly.run import run_nightly
from tests.helpers import DAY1, DAY2, actions, nightly_config, numbered, put_shard, read_output

DAY3 = "date=2026-11-03"




class Faults:
    """Wraps storage.write_bytes_atomic / remove_files: `rule(url, data)` (url: the location's) returns an
    exception to raise instead of the call ("fail") or after it ("lost": the write happened, its response did not
    arrive), or None."""

    def __init__(self, monkeypatch):
        self.rules: list = []
        self.hits: list[str] = []
        write, remove = storage.write_bytes_atomic, storage.remove_files

        def faulty_write(loc, data, exclusive=False):
            kind = self._match(loc.url, data)
            if kind == "fail":
                raise OSError(f"injected: An error occurred (ConditionalRequestConflict) writing {loc}")
            done = write(loc, data, exclusive=exclusive)
            if kind == "lost":
                raise OSError(f"injected: connection reset after writing {loc}")
            return done

        def faulty_remove(folder, names):
            if names and self._match(folder.url, b"") == "fail":
                raise OSError(f"injected: crash before deleting {len(names)} file(s) in {folder}")
            return remove(folder, names)

        monkeypatch.setattr(storage, "write_bytes_atomic", faulty_write)
        monkeypatch.setattr(storage, "remove_files", faulty_remove)

    def _match(self, url: str, data: bytes) -> str | None:
        for rule in self.rules:
            kind = rule(url, data)
            if kind:
                self.hits.append(f"{kind} {url}")
                return kind
        return None


def lease_record(data: bytes) -> dict:
    try:
        return json.loads(data)
    except ValueError:
        return {}


def test_lost_lease_stops_the_run_and_the_next_run_takes_over(local_ray, bucket, tiny_models, monkeypatch):
    corpus, output = f"{bucket}/corpus", f"{bucket}/summaries"
    for s in range(4):
        put_shard(f"{corpus}/{DAY1}/part-{s}.parquet", numbered(60 + s * 3, 3))
    faults = Faults(monkeypatch)
    victim: dict[str, str] = {}

    def renewals_fail(url, data):  # every lease write of the first owner after its acquire fails
        record = lease_record(data) if "/_leases/" in url else {}
        if record.get("owner") and victim.setdefault("owner", record["owner"]) == record["owner"]:
            victim["writes"] = victim.get("writes", 0) + 1
            return "fail" if victim["writes"] > 1 else None
        return None

    faults.rules.append(renewals_fail)
    reports: dict[str, dict] = {}
    first = threading.Thread(target=lambda: reports.setdefault("first", run_nightly(
        nightly_config(corpus, output, tiny_models[0], lease_ttl_s=2)).to_dict()))
    first.start()
    lease = Lease(Location.of(f"{output}/_leases/{DAY1}"), "observer", ttl_s=1)
    deadline = time.monotonic() + 120
    while (lease.current()[1] or {}).get("expires_at", time.time() + 1) > time.time():
        assert time.monotonic() < deadline
        time.sleep(0.2)
    second = run_nightly(nightly_config(corpus, output, tiny_models[0], lease_ttl_s=60)).to_dict()
    first.join(timeout=300)
    assert actions(reports["first"]) == {DAY1: ("failed", "new")}
    assert "LeaseLost" in reports["first"]["partitions"][0]["detail"]
    assert actions(second) == {DAY1: ("processed", "incomplete")}  # it resumed the first run's staging
    marker = storage.read_json(Location.of(f"{output}/{DAY1}/_SUCCESS.json"))
    assert marker["owner"] == second["run"] and marker["rows_out"] == 12
    assert [r["id"] for r in read_output(output)] == list(range(60, 72))
    third = run_nightly(nightly_config(corpus, output, tiny_models[0])).to_dict()
    assert actions(third)[DAY1][0] == "skipped" and third["totals"]["rows_written"] == 0
    assert [r["id"] for r in read_output(output)] == list(range(60, 72))


def test_storage_errors_fail_one_partition_and_a_lost_renewal_response_keeps_the_lease(local_ray, bucket,
                                                                                        tiny_models, monkeypatch):
    corpus, output = f"{bucket}/corpus", f"{bucket}/summaries"
    for k, day in enumerate((DAY1, DAY2, DAY3)):
        put_shard(f"{corpus}/{day}/part-0.parquet", numbered(80 + 2 * k, 2))
    faults = Faults(monkeypatch)
    renewed: dict[str, int] = {}

    def rule(url, data):
        record = lease_record(data) if "/_leases/" in url else {}
        if f"/_leases/{DAY1}/" in url:
            return "fail"  # 409 at every acquire try
        if f"/_leases/{DAY2}/" in url and record.get("state") == "released":
            return "fail"  # 409 at every release try
        if f"/_leases/{DAY3}/" in url and record.get("state") == "held" and not url.endswith("000000000001.json"):
            renewed[url] = renewed.get(url, 0) + 1
            return "lost" if renewed[url] == 1 else None  # written, but the response is lost
        return None

    faults.rules.append(rule)
    report = run_nightly(nightly_config(corpus, output, tiny_models[0])).to_dict()
    got = actions(report)
    assert got == {DAY1: ("failed", "new"), DAY2: ("processed", "new"), DAY3: ("processed", "new")}, report
    assert "could not take the lease" in report["partitions"][0]["detail"]
    assert "lease was not released" in report["partitions"][1]["detail"]
    assert any(h.startswith("lost") for h in faults.hits)
    assert storage.exists(Location.of(report["report_url"]))
    assert sorted(r["id"] for r in read_output(output)) == [82, 83, 84, 85]


def test_interrupted_switch_is_repaired_by_the_next_run_whatever_it_selects(local_ray, bucket, tiny_models,
                                                                            monkeypatch):
    corpus, output = f"{bucket}/corpus", f"{bucket}/summaries"
    put_shard(f"{corpus}/{DAY1}/part-0.parquet", numbered(90, 3))
    put_shard(f"{corpus}/{DAY2}/part-0.parquet", numbered(93, 2))
    assert run_nightly(nightly_config(corpus, output, tiny_models[0])).ok
    put_shard(f"{corpus}/{DAY1}/part-0.parquet", numbered(95, 3))  # rewritten: new ids, new summaries
    faults = Faults(monkeypatch)
    faults.rules.append(lambda url, data: "fail" if url.rstrip("/").endswith(f"summaries/{DAY1}") else None)
    crashed = run_nightly(nightly_config(corpus, output, tiny_models[0], date="2026-11-01")).to_dict()
    assert actions(crashed) == {DAY1: ("failed", "changed")} and "crash before deleting" in str(crashed)
    marker = storage.read_json(Location.of(f"{output}/{DAY1}/_SUCCESS.json"))
    assert len(storage.data_files(Location.of(f"{output}/{DAY1}"))) == 2 and len(marker["files"]) == 1  # both sets
    faults.rules.clear()
    repaired = run_nightly(nightly_config(corpus, output, tiny_models[0], date="2026-11-02")).to_dict()
    assert actions(repaired) == {DAY1: ("repaired", "interrupted switch"), DAY2: ("skipped", "done")}
    ids = [r["id"] for r in read_output(output)]
    assert ids == [93, 94, 95, 96, 97]


def test_changed_model_lists_stale_partitions_and_redoes_them_only_when_asked(local_ray, bucket, tiny_models):
    corpus, output = f"{bucket}/corpus", f"{bucket}/summaries"
    put_shard(f"{corpus}/{DAY1}/part-0.parquet", numbered(100, 2))
    put_shard(f"{corpus}/{DAY2}/part-0.parquet", numbered(102, 2))
    old, new = tiny_models
    assert run_nightly(nightly_config(corpus, output, old)).ok
    before = storage.read_json(Location.of(f"{output}/{DAY1}/_SUCCESS.json"))
    dry = run_nightly(nightly_config(corpus, output, new), dry_run=True).to_dict()
    assert actions(dry) == {DAY1: ("skipped", "stale"), DAY2: ("skipped", "stale")}
    assert "model, model_sha256" in dry["partitions"][0]["detail"]
    left = run_nightly(nightly_config(corpus, output, new)).to_dict()
    assert actions(left) == {DAY1: ("skipped", "stale"), DAY2: ("skipped", "stale")}
    assert storage.read_json(Location.of(f"{output}/{DAY1}/_SUCCESS.json")) == before
    dry = run_nightly(nightly_config(corpus, output, new, reprocess="stale"), dry_run=True).to_dict()
    assert actions(dry) == {DAY1: ("would-process", "stale"), DAY2: ("would-process", "stale")}
    redone = run_nightly(nightly_config(corpus, output, new, reprocess="stale", date="2026-11-01")).to_dict()
    assert actions(redone) == {DAY1: ("processed", "stale")} and redone["listings"] == 2
    after = storage.read_json(Location.of(f"{output}/{DAY1}/_SUCCESS.json"))
    assert after["model"]["model_sha256"] != before["model"]["model_sha256"]
    assert after["model"]["path"].endswith("/b") and after["settings"]["model_sha256"] == after["model"][
        "model_sha256"]
    assert storage.read_json(Location.of(f"{output}/{DAY2}/_SUCCESS.json"))["model"] == before["model"]
    assert sorted(r["id"] for r in read_output(output)) == [100, 101, 102, 103]


def test_backfill_runs_all_partitions_on_one_actor_pool(local_ray, bucket, tiny_models):
    corpus, output = f"{bucket}/corpus", f"{bucket}/summaries"
    days = [f"date=2026-10-0{d}" for d in range(1, 6)]
    for k, day in enumerate(days):
        put_shard(f"{corpus}/{day}/part-0.parquet", numbered(110 + 2 * k, 2))
    report = run_nightly(nightly_config(corpus, output, tiny_models[0])).to_dict()
    assert actions(report) == {day: ("processed", "new") for day in days}
    folder = Location.of(output)
    fs, path = folder.fs, folder.path
    table = pq.read_table(path, filesystem=fs, partitioning="hive")
    assert table.num_rows == 10 and len(set(table.column("replica").to_pylist())) == 1  # one model load
    ended = [storage.read_json(Location.of(f"{output}/{day}/_SUCCESS.json"))["ended_at"] for day in days]
    assert ended == sorted(ended)  # each partition switched on its own, oldest first


def test_a_partition_whose_units_cannot_be_read_fails_alone(local_ray, bucket, tiny_models):
    corpus, output = f"{bucket}/corpus", f"{bucket}/summaries"
    put_shard(f"{corpus}/{DAY1}/part-0.parquet", numbered(130, 2))
    put_shard(f"{corpus}/{DAY2}/part-0.parquet", numbered(132, 2))
    shard = Location.of(f"{corpus}/{DAY1}/part-0.parquet")
    fs, path = shard.fs, shard.path
    data = bytearray(fs.cat_file(path))
    with fs.open(path) as f:  # the article column's first page header: footer and id column stay readable
        offset = pq.ParquetFile(f).metadata.row_group(0).column(1).data_page_offset
    data[offset:offset + 16] = b"\xff" * 16
    fs.pipe_file(path, bytes(data))
    report = run_nightly(nightly_config(corpus, output, tiny_models[0])).to_dict()
    assert actions(report) == {DAY1: ("failed", "new"), DAY2: ("processed", "new")}, report
    assert [r["id"] for r in read_output(output)] == [132, 133]
