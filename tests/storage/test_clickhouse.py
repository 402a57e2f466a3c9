"""What the ClickHouse backend adds to the shared contract (run on the embedded engine,
chdb): a record inserted twice is counted once everywhere, even when two writers race
past the id look-up; the embedded store belongs to one process; ``usageledger serve``
runs on it."""

from __future__ import annotations

import multiprocessing
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest

from tests.server.support import Collector, record
from usageledger.records import UsageRecord, new_id
from usageledger.storage import create_storage
from usageledger.storage.clickhouse import ClickHouseStorage

T0 = datetime(2025, 5, 1, tzinfo=UTC)


def records(n: int, start: int = 0) -> list[UsageRecord]:
    return [
        UsageRecord(new_id(), T0 + timedelta(minutes=i % 600), "openai", f"m{i % 3}", 2, 1,
                    cost=Decimal("0.000001"), user_id=f"u{i % 7}")
        for i in range(start, start + n)
    ]


def physical_rows(store: ClickHouseStorage) -> int:
    """Rows on disk, copies included (what a read without FINAL would count)."""
    return store._engine.rows(f"SELECT count() FROM {store._db}.usage")[0][0]


def assert_counted_once(store: ClickHouseStorage, recs: list[UsageRecord]) -> None:
    n = len(recs)
    assert store.count() == n
    (total,) = store.aggregate(())
    assert total["count"] == n and total["cost"] == Decimal("0.000001") * n
    assert total["input_tokens"] == 2 * n
    assert sum(g["count"] for g in store.aggregate(("day", "model", "user_id"))) == n
    got = [r.id for r in store.iter_records(batch_size=1000)]
    assert len(got) == n and set(got) == {r.id for r in recs}


@pytest.fixture
def store(tmp_path):
    s = create_storage(f"chdb:///{tmp_path}/usage.chdb")
    yield s
    s.close()


def test_raw_duplicates_from_two_threads_are_counted_once(store):
    """Two writers racing past the look-up (two collectors on one server) insert the
    same ids: the table holds copies, every read counts each id once."""
    recs = records(6000)
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        mine = recs[seed::1] if seed == 0 else list(reversed(recs))
        barrier.wait()
        try:
            for i in range(0, len(mine), 1500):
                store._insert(mine[i:i + 1500])  # no look-up: both copies go in
        except BaseException as exc:
            errors.append(exc)

    # no background merge may remove copies before we look: every copy stays on disk
    store._engine.command(f"SYSTEM STOP MERGES {store._db}.usage")
    threads = [threading.Thread(target=writer, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert physical_rows(store) == 2 * len(recs)
    assert_counted_once(store, recs)
    # and after ClickHouse merges the copies away
    store._engine.command(f"SYSTEM START MERGES {store._db}.usage")
    store._engine.command(f"OPTIMIZE TABLE {store._db}.usage FINAL")
    assert physical_rows(store) == len(recs)
    assert_counted_once(store, recs)


def test_save_many_from_two_threads_reports_each_id_new_once(store):
    recs = records(4000)
    reported: list[set[str]] = []

    def writer(order: list[UsageRecord]) -> None:
        for i in range(0, len(order), 700):
            reported.append(store.save_many(order[i:i + 700]))

    threads = [threading.Thread(target=writer, args=(o,)) for o in (recs, recs[::-1])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(len(r) for r in reported) == len(recs)
    assert physical_rows(store) == len(recs)  # the look-up kept the copies out
    assert_counted_once(store, recs)


def _process_writer(path: str, ids_and_times: list[tuple[str, int]], raw: bool, start_at: float) -> None:
    """Insert every record, a chunk per opening of the store: an embedded store belongs to
    one process at a time, so the two processes take turns on the directory."""
    time.sleep(max(start_at - time.time(), 0))
    recs = [UsageRecord(i, T0 + timedelta(minutes=m), "openai", f"m{m % 3}", 2, 1,
                        cost=Decimal("0.000001"), user_id=f"u{m % 7}") for i, m in ids_and_times]
    for k in range(0, len(recs), 500):
        deadline = time.monotonic() + 60
        while True:
            try:
                s = create_storage(f"chdb:///{path}")
                break
            except RuntimeError as exc:
                if "another process" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        try:
            chunk = recs[k:k + 500]
            s._insert(chunk) if raw else s.save_many(chunk)
        finally:
            s.close()


def test_the_same_ids_from_two_processes_are_counted_once(tmp_path):
    path = str(tmp_path / "shared.chdb")
    recs = records(3000)
    pairs = [(r.id, int((r.timestamp - T0).total_seconds() // 60)) for r in recs]
    ctx = multiprocessing.get_context("spawn")
    start_at = time.time() + 2.0
    procs = [ctx.Process(target=_process_writer, args=(path, order, raw, start_at))
             for order, raw in ((pairs, True), (pairs[::-1], False))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(240)
    assert [p.exitcode for p in procs] == [0, 0]
    store = create_storage(f"chdb:///{path}")
    try:
        assert_counted_once(store, recs)
    finally:
        store.close()


def test_an_embedded_store_belongs_to_one_directory_per_process(tmp_path):
    a = create_storage(f"chdb:///{tmp_path}/a")
    try:
        again = create_storage(f"chdb:///{tmp_path}/a")  # the same directory: shared
        again.close()
        assert a.count() == 0  # closing the second handle left the first working
        with pytest.raises(RuntimeError, match="one directory per process"):
            create_storage(f"chdb:///{tmp_path}/b")
    finally:
        a.close()
    create_storage(f"chdb:///{tmp_path}/b").close()  # free again once the first is closed


def test_costs_beyond_decimal_38_18_stay_exact(store):
    costs = [Decimal("1E-30"), Decimal("123456789012345678901234.5"), Decimal("0.1")]
    recs = [UsageRecord(new_id(), T0, "p", "m", cost=c) for c in costs]
    store.save_many(recs)
    (total,) = store.aggregate(())
    assert total["cost"] == sum(costs)
    assert sorted(r.cost for r in store.query()) == sorted(costs)


def test_serve_on_chdb(tmp_path):
    url = f"chdb:///{tmp_path}/served.chdb"
    batch = [record(i) for i in range(300)]
    with Collector(url, log_path=tmp_path / "serve.log") as c:
        for _ in range(2):  # the same batch twice: the second is all duplicates
            r = httpx.post(c.url + "/api/v1/track", json={"tracked": batch}, timeout=60)
            assert r.status_code == 200, r.text
        answer = r.json()
        assert (answer["accepted"], answer["duplicate"]) == (0, 300)
        assert set(answer["duplicate_ids"]) == {x["id"] for x in batch}
        s = httpx.get(c.url + "/api/v1/summary", params={"group_by": "user_id"}, timeout=30).json()
        assert s["totals"]["count"] == 300
        assert Decimal(s["totals"]["cost"]) == Decimal("0.000300")
    store = create_storage(url)  # the served process is gone: the directory is free
    try:
        assert store.count() == 300
    finally:
        store.close()
