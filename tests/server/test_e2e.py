"""End to end with REAL processes: PersistentDelivery -> HTTP -> a collector in a uvicorn
process (started through `usageledger serve`) -> sqlite / PostgreSQL. The collector is
SIGKILLed mid-stream and restarted on the same port: every id is stored exactly once."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest

from tests.server.support import Collector
from tests.support.servers import free_port
from usageledger.delivery import PersistentDelivery
from usageledger.records import new_id
from usageledger.storage import create_storage

N = 6000


def _calls(n: int) -> list[dict]:
    base = datetime(2025, 5, 1, tzinfo=UTC)
    return [{
        "id": new_id(),
        "timestamp": (base + timedelta(minutes=i)).isoformat(),
        "provider": ("openai", "anthropic")[i % 2],
        "model": ("gpt-4o-mini", "claude-3-5-haiku-20241022")[i % 2],
        "input_tokens": 100 + i % 50,
        "output_tokens": 20,
        "cost": "0.000001",
        "user_id": f"user-{i % 7}",
    } for i in range(n)]


def _accepted(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith("usageledger_records_accepted_total "):
            return float(line.split()[1])
    return 0.0


def _kill_mid_stream(storage_url: str, tmp_path, check_storage) -> None:
    collector = Collector(storage_url, log_path=tmp_path / "collector.log").start()
    calls = _calls(N)
    enqueued: list[str] = []
    delivery = PersistentDelivery(
        db_path=tmp_path / "queue.db", api_base=collector.url, batch_interval=0.02,
        max_batch_size=100, immediate_pause_seconds=0.05, max_backoff=0.3, max_attempts=10_000,
        timeout=5,
    )

    killed = threading.Event()

    def produce() -> None:
        """A steady stream; its second half waits for the kill, so the kill lands in the
        middle of it however slow the machine is (a loaded one once let the whole stream
        finish before the collector had accepted its first 500)."""
        for i in range(0, N, 200):
            if i == N // 2:
                killed.wait(60)
            for call in calls[i:i + 200]:
                enqueued.append(delivery.enqueue(call))
            time.sleep(0.02)

    producer = threading.Thread(target=produce)
    try:
        producer.start()
        deadline = time.monotonic() + 30
        while _accepted(collector.url) < 500:
            assert time.monotonic() < deadline, "the collector accepted nothing"
            time.sleep(0.01)
        collector.kill()
        killed_at = len(enqueued)
        killed.set()
        time.sleep(0.3)  # requests fail meanwhile; the journal keeps them
        collector.start()  # same port: the producer's URL stays valid
        producer.join(60)
        assert killed_at < N, "the kill did not land mid-stream"
        assert delivery.flush(90), delivery.stats()
        stats = delivery.stats()
        assert stats["dead"] == 0 and stats["queued"] == 0, stats
    finally:
        delivery.stop(5)
        collector.stop()
    assert len(enqueued) == N and len(set(enqueued)) == N
    check_storage(set(enqueued))


def _check(url: str):
    def check(expected: set[str]) -> None:
        store = create_storage(url)
        try:
            ids = [r.id for r in store.iter_records()]
            assert store.count() == len(ids) == len(set(ids)) == len(expected)
            assert set(ids) == expected
            totals = store.aggregate(group_by=("provider",))
            assert sum(t["count"] for t in totals) == N
            assert sum(t["cost"] for t in totals) == N * __import__("decimal").Decimal("0.000001")
        finally:
            store.close()
    return check


def test_delivery_to_sqlite_collector_killed_mid_stream(tmp_path):
    url = f"sqlite:///{tmp_path}/collector.db"
    _kill_mid_stream(url, tmp_path, _check(url))


def test_delivery_to_postgres_collector_killed_mid_stream(tmp_path, postgres_server, pg_clean):
    _kill_mid_stream(postgres_server.url, tmp_path, _check(postgres_server.url))


def test_two_collectors_on_one_postgres_store_each_id_once(postgres_server, pg_clean):
    """Scale-out: replicas share nothing but the database; the same batch sent to both at
    once is stored once, and between them they report each id accepted exactly once."""
    batch = {"tracked": _calls(2000)}
    with Collector(postgres_server.url) as a, Collector(postgres_server.url) as b:
        answers: list[dict] = []

        def post(url: str) -> None:
            answers.append(httpx.post(url + "/api/v1/track", json=batch, timeout=60).json())

        threads = [threading.Thread(target=post, args=(c.url,)) for c in (a, b, a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # an exception in a thread is only printed: every post must have answered in full
        assert len(answers) == 4
        assert all(ans["accepted"] + ans["duplicate"] == 2000 for ans in answers)
        ids = [item["id"] for item in batch["tracked"]]
        accepted = [i for ans in answers for i in sorted(set(ids) - set(ans["duplicate_ids"]))]
        assert sorted(accepted) == sorted(ids)
        assert sum(ans["accepted"] for ans in answers) == 2000
        summary = httpx.get(b.url + "/api/v1/summary", params={"group_by": "provider"}).json()
        assert summary["totals"]["count"] == 2000


@pytest.fixture
def pg_clean(postgres_server):
    store = create_storage(postgres_server.url)
    store.clear()
    store.close()
    yield


def test_telemetry_client_runs_reach_the_collector(tmp_path):
    """TelemetryClient -> journal -> HttpSink -> /api/v1/runs/batch -> storage."""
    from usageledger.telemetry import TelemetryClient, TelemetryConfig

    with Collector(f"sqlite:///{tmp_path}/runs.db") as collector:
        client = TelemetryClient(TelemetryConfig(
            base_dir=str(tmp_path / "telemetry"), api_base=collector.url, batch_interval=0.05))
        try:
            with client.track_run("crawler", "daily") as run:
                run.set_metrics(items_discovered=5, items_succeeded=4, metrics_json={"pages": 2})
            failed_id = client.start_run("crawler", "hourly")
            client.end_run(failed_id, status="failed", error_summary="boom")
            assert client.flush(30)
        finally:
            client.close(10)
        runs = {r["run_id"]: r for r in httpx.get(collector.url + "/api/v1/runs",
                                                  params={"agent_name": "crawler"}).json()["runs"]}
        assert len(runs) == 2
        ok = runs[run.run_id]
        assert (ok["status"], ok["items_succeeded"], ok["metrics_json"]) == ("success", 4, {"pages": 2})
        assert runs[failed_id]["status"] == "failed" and runs[failed_id]["error_summary"] == "boom"


def test_serve_warns_loudly_without_a_key_and_enforces_a_key_when_given(tmp_path):
    log = tmp_path / "open.log"
    with Collector(f"sqlite:///{tmp_path}/a.db", log_path=log):
        pass
    text = log.read_text()
    assert "WARNING" in text and "NO API KEY CONFIGURED" in text and "loopback" in text
    log2 = tmp_path / "keyed.log"
    with Collector(f"sqlite:///{tmp_path}/b.db", api_keys=["s3cret"], log_path=log2) as col:
        body = {"tracked": _calls(3)}
        assert httpx.post(col.url + "/api/v1/track", json=body).status_code == 401
        wrong = {"Authorization": "Bearer s3cre"}
        assert httpx.post(col.url + "/api/v1/track", json=body, headers=wrong).status_code == 401
        ok = httpx.post(col.url + "/api/v1/track", json=body, headers={"Authorization": "Bearer s3cret"})
        assert ok.json() == {"accepted": 3, "duplicate": 0, "duplicate_ids": []}
    assert "NO API KEY" not in log2.read_text()


def test_serve_with_two_workers_on_sqlite_stores_each_id_once(tmp_path):
    """`serve --workers 2`: two processes on one port and one SQLite file (one writer at a
    time). Overlapping batches posted on several connections at once: between them the
    workers accept each id exactly once, and the totals are exact."""
    calls = _calls(3000)
    col = Collector(f"sqlite:///{tmp_path}/w.db", workers=2, log_path=tmp_path / "w.log")
    col.start(timeout=120)  # two fresh interpreters on a loaded machine
    try:
            assert len(col.worker_pids()) == 2
            answers: list[tuple[list[str], dict]] = []
            errors: list[BaseException] = []

            def post(start: int) -> None:
                try:
                    with httpx.Client(timeout=120) as http:
                        for i in range(start, start + 2000, 250):
                            chunk = calls[i % 3000:i % 3000 + 250]
                            resp = http.post(col.url + "/api/v1/track", json={"tracked": chunk})
                            answers.append(([c["id"] for c in chunk], resp.json()))
                except BaseException as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)

            threads = [threading.Thread(target=post, args=(s,)) for s in (0, 1000, 2000, 500)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert not errors, errors
            accepted = [i for ids, ans in answers for i in ids if i not in set(ans["duplicate_ids"])]
            assert sorted(accepted) == sorted(c["id"] for c in calls)
            summary = httpx.get(col.url + "/api/v1/summary", params={"group_by": "user_id"}).json()
            assert summary["totals"]["count"] == 3000
            assert Decimal(summary["totals"]["cost"]) == Decimal("0.003")
            assert sum(g["count"] for g in summary["groups"]) == 3000
    finally:
        col.stop()


def test_records_enqueued_while_the_collector_is_down_keep_their_enqueue_time(tmp_path):
    """Payloads without a timestamp wait in the journal while no collector runs; the
    collector (a real process, started 2 s later) stores them with the time they were
    enqueued, not the time it received them. One payload has its own id that is not a
    UUIDv7 (so only enqueue's stamp can date it); one uses the seed-000 /track shape."""
    collector = Collector(f"sqlite:///{tmp_path}/late.db", port=free_port())
    delivery = PersistentDelivery(
        db_path=tmp_path / "queue.db", api_base=collector.url, batch_interval=0.02,
        immediate_pause_seconds=0.05, max_backoff=0.3, max_attempts=10_000, timeout=5,
    )
    try:
        enqueued_at = datetime.now(UTC)
        ids = [
            delivery.enqueue({"provider": "openai", "model": "gpt-4o", "input_tokens": 3}),
            delivery.enqueue({"id": "order-17", "provider": "openai", "model": "gpt-4o"}),
            delivery.enqueue({"api_id": "openai", "service_key": "gpt-4o",
                              "payload": {"input_tokens": 5}}),
        ]
        time.sleep(2.0)  # deliveries fail meanwhile: connection refused
        assert delivery.stats()["queued"] == 3
        started_at = datetime.now(UTC)
        collector.start()
        assert delivery.flush(60), delivery.stats()
    finally:
        delivery.stop(5)
        collector.stop()
    store = create_storage(f"sqlite:///{tmp_path}/late.db")
    try:
        stored = {r.id: r.timestamp for r in store.query()}
    finally:
        store.close()
    assert set(stored) == set(ids)
    for id_, ts in stored.items():
        # dated at enqueue (ms precision), at least 2 s before the collector could receive it
        assert abs(ts - enqueued_at) < timedelta(seconds=1), (id_, ts, enqueued_at)
        assert ts < started_at - timedelta(seconds=1), (id_, ts, started_at)
