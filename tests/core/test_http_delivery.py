"""PersistentDelivery against a real fault-injecting HTTP server on 127.0.0.1."""

from __future__ import annotations

import gzip
import json
import time

import pytest

from tests.support.fault_server import FaultServer
from usageledger.delivery import PersistentDelivery, PersistentQueueManager


@pytest.fixture
def server():
    with FaultServer() as srv:
        yield srv


def delivery(tmp_path, server, **kw) -> PersistentDelivery:
    opts = dict(db_path=tmp_path / "q.db", api_base=server.url, batch_interval=0.02,
                immediate_pause_seconds=0.05, max_backoff=0.3, timeout=1.0, api_key="k-123")
    opts.update(kw)
    return PersistentDelivery(**opts)


def payloads(n, start=0):
    return [{"api_id": "openai", "service_key": "gpt-4o", "payload": {"n": i}} for i in range(start, start + n)]


def test_delivers_with_auth_gzip_and_keeps_own_ids(tmp_path, server):
    d = delivery(tmp_path, server)
    own = d.enqueue({"id": "my-own-id", "api_id": "a", "service_key": "b"})
    ids = [d.enqueue(p) for p in payloads(200)]
    assert own == "my-own-id"
    assert d.flush(20)
    assert server.stored_ids() == {own, *ids}
    req = server.requests[-1]
    assert req.headers.get("Authorization") == "Bearer k-123"
    assert any(r.headers.get("Content-Encoding") == "gzip" for r in server.requests)
    s = d.stats()
    assert s["delivered"] == 201 and s["queued"] == 0 and s["dead"] == 0
    d.stop(5)


def test_outage_then_recovery_delivers_everything(tmp_path, server):
    server.script(server.status(500), server.status(503), server.reset(), server.hang(3),
                  server.slow_body(3), server.status(502))
    d = delivery(tmp_path, server, max_attempts=100)
    ids = [d.enqueue(p) for p in payloads(50)]
    assert d.flush(60)
    assert server.stored_ids() == set(ids)
    assert d.stats()["retried"] > 0
    d.stop(5)


def test_retry_after_is_respected(tmp_path, server):
    server.script(server.retry_after(1.0))
    d = delivery(tmp_path, server)
    d.enqueue(payloads(1)[0])
    assert d.flush(20)
    first, second = server.requests[0], server.requests[1]
    assert first.status == 429
    gap = second.time - first.time
    assert gap >= 0.95, f"re-sent {gap:.3f}s after a Retry-After of 1s"
    d.stop(5)


def test_per_record_reject_dead_letters_only_the_poison(tmp_path, server):
    d = delivery(tmp_path, server)
    server.default = server.reject_ids(lambda rec: rec.get("payload", {}).get("n") == 7, error="bad model")
    ids = [d.enqueue(p) for p in payloads(20)]
    assert d.flush(20)
    assert server.stored_ids() == set(ids) - {ids[7]}
    mgr = PersistentQueueManager(tmp_path / "q.db")
    failed = mgr.failed()
    assert [f["id"] for f in failed] == [ids[7]]
    assert "bad model" in failed[0]["last_error"]
    assert failed[0]["payload"]["payload"]["n"] == 7
    server.default = server.ok()
    assert mgr.requeue() == 1
    assert d.flush(20)
    assert ids[7] in server.stored_ids()
    d.stop(5)


def test_whole_batch_400_is_halved_until_the_poison_is_alone(tmp_path, server):
    server.default = server.poison(lambda rec: rec.get("payload", {}).get("n") == 13)
    d = delivery(tmp_path, server, max_batch_size=32)
    ids = [d.enqueue(p) for p in payloads(32)]
    assert d.flush(30)
    assert server.stored_ids() == set(ids) - {ids[13]}
    assert d.stats()["dead"] == 1
    d.stop(5)


def test_unauthorized_dead_letters_without_splitting(tmp_path, server):
    server.default = server.status(401, body=b'{"detail": "bad key"}')
    d = delivery(tmp_path, server, max_batch_size=50)
    for p in payloads(50):
        d.enqueue(p)
    assert d.flush(20)
    assert d.stats()["dead"] == 50
    assert len(server.requests) == 1  # one request, not 99 halvings
    d.stop(5)


def test_plain_200_without_results_means_all_accepted(tmp_path, server):
    server.default = server.plain_ok()
    d = delivery(tmp_path, server)
    for p in payloads(5):
        d.enqueue(p)
    assert d.flush(20)
    assert d.stats()["delivered"] == 5
    d.stop(5)


def test_stop_returns_by_deadline_when_server_hangs(tmp_path, server):
    server.default = server.hang(20)
    d = delivery(tmp_path, server, timeout=10)
    d.enqueue(payloads(1)[0])
    t0 = time.monotonic()
    assert d.stop(1.0) is False
    assert time.monotonic() - t0 < 3
    # still in the journal for the next run
    assert PersistentQueueManager(tmp_path / "q.db").stats()["delivered"] == 0


def test_bad_payloads_raise_and_write_nothing(tmp_path, server):
    d = delivery(tmp_path, server)
    with pytest.raises(TypeError, match="payload"):
        d.enqueue(["not", "a", "dict"])
    with pytest.raises(TypeError, match="payload is not JSON-serialisable"):
        d.enqueue({"x": object()})
    with pytest.raises(ValueError, match=r"payload\.v"):
        d.enqueue({"v": float("nan")})
    with pytest.raises(TypeError, match="id"):
        d.enqueue({"id": 5})
    assert d.flush(5)
    assert d.stats()["delivered"] == 0 and not server.requests
    d.stop(5)


def test_dead_records_warn_at_start(tmp_path, server, caplog):
    server.default = server.status(400)
    d = delivery(tmp_path, server)
    d.enqueue(payloads(1)[0])
    assert d.flush(10)
    d.stop(5)
    caplog.clear()
    d2 = delivery(tmp_path, server)
    assert "usageledger failed" in caplog.text and "requeue" in caplog.text
    d2.stop(1)


def test_wire_body_is_a_track_batch(tmp_path, server):
    d = delivery(tmp_path, server, compress=None)
    d.enqueue({"api_id": "x", "service_key": "y", "payload": {"k": 1}})
    assert d.flush(10)
    body = server.requests[-1].body
    if server.requests[-1].headers.get("Content-Encoding") == "gzip":
        body = gzip.decompress(body)
    doc = json.loads(body)
    assert list(doc) == ["tracked"] and doc["tracked"][0]["payload"] == {"k": 1}
    d.stop(5)


def test_queue_manager_stats_failed_requeue_by_id_and_purge(tmp_path, server):
    server.default = server.reject_ids(lambda rec: rec.get("payload", {}).get("n", 0) < 3, error="quota")
    d = delivery(tmp_path, server)
    ids = [d.enqueue(p) for p in payloads(10)]
    assert d.flush(20)
    d.stop(5)
    mgr = PersistentQueueManager(tmp_path / "q.db")
    s = mgr.stats()
    assert (s["queued"], s["failed"], s["delivered"]) == (0, 3, 7)
    assert len(mgr.failed(limit=2)) == 2
    assert mgr.requeue([ids[0]]) == 1
    assert mgr.stats()["queued"] == 1 and mgr.stats()["failed"] == 2
    assert mgr.purge("dead", older_than=3600) == 0  # too young
    assert mgr.purge("dead") == 2 and mgr.stats()["failed"] == 0
    mgr.close()
    with pytest.raises(FileNotFoundError, match="no journal"):
        PersistentQueueManager(tmp_path / "missing.db")


def test_queue_manager_refuses_files_that_are_not_journals_and_leaves_them_alone(tmp_path):
    import sqlite3

    from usageledger.journal import JournalError

    text = tmp_path / "notes.txt"
    text.write_bytes(b"not a database at all\n" * 10)
    other = tmp_path / "app.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE users (id INTEGER)")
    con.commit()
    con.close()
    before = (text.read_bytes(), other.read_bytes())
    for path in (text, other):
        with pytest.raises(JournalError, match="not a usageledger journal"):
            PersistentQueueManager(path)
    assert (text.read_bytes(), other.read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db", "notes.txt"]


def test_two_requests_in_flight_overlap_and_settle_every_record_once(tmp_path, server):
    server.default = server.hang(0.4)  # each answer takes 0.4 s
    d = delivery(tmp_path, server, max_batch_size=10, max_attempts=1, timeout=5.0)
    ids = [d.enqueue(p) for p in payloads(40)]
    assert d.flush(30)
    assert server.stored_ids() == set(ids) and len(server.received_ids()) == 40
    arrivals = sorted(r.time for r in server.requests)
    # with one request at a time every arrival is >= 0.4 s after the previous one
    assert min(b - a for a, b in zip(arrivals, arrivals[1:], strict=False)) < 0.2, arrivals
    s = d.stats()
    assert (s["delivered"], s["dead"], s["queued"], s["inflight"]) == (40, 0, 0, 0)
    d.stop(5)


def test_compact_answers_settle_new_records_and_duplicates(tmp_path, server):
    """The collector answers counts when nothing was refused: a resend of stored records
    (answered as duplicates) is settled, not retried; the older per-record form still
    works."""
    from usageledger.journal.base import JournalItem
    from usageledger.records import KIND_RAW
    from usageledger.sinks.base import OK
    from usageledger.sinks.http import HttpSink

    sink = HttpSink(server.url, compress=None)
    items = [JournalItem(f"r{i}", KIND_RAW, json.dumps({"id": f"r{i}"}).encode(), 0) for i in range(6)]
    assert sink.send(items[:4]) == {f"r{i}": OK for i in range(4)}
    assert sink.send(items) == {f"r{i}": OK for i in range(6)}  # r0-r3 answered as duplicates
    server.script(server.per_record())
    assert sink.send(items[:2]) == {"r0": OK, "r1": OK}
    sink.close()
    assert server.received_ids().count("r0") == 3 and server.stored_ids() == {f"r{i}" for i in range(6)}


def test_compact_counts_that_do_not_match_the_batch_are_retried(tmp_path, server):
    server.script(server.miscount())
    d = delivery(tmp_path, server)
    ids = [d.enqueue(p) for p in payloads(20)]
    assert d.flush(20)
    s = d.stats()
    assert s["delivered"] == 20 and s["dead"] == 0 and s["retried"] >= 1
    assert server.stored_ids() == set(ids)
    assert len(server.requests) >= 2  # the resend found every record stored: duplicates
    d.stop(5)
