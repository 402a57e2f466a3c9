"""The Journal contract, run against every journal: SQLite, memory and Redis (a real
redis-server from tests/conftest.py, one stream per test)."""

from __future__ import annotations

import time
import uuid

import pytest

from usageledger.journal import Journal, MemoryJournal, SqliteJournal, open_journal

KINDS = ("sqlite", "memory", "redis")


def redis_url(request, stream: str | None = None) -> str:
    server = request.getfixturevalue("redis_server")
    return f"{server.url}?stream={stream or 'ul-test-' + uuid.uuid4().hex[:10]}"


def open_kind(request, tmp_path) -> Journal:
    if request.param == "sqlite":
        return SqliteJournal(tmp_path / "j.db")
    if request.param == "memory":
        return MemoryJournal()
    return open_journal(redis_url(request))


@pytest.fixture(params=KINDS)
def journal(request, tmp_path):
    j = open_kind(request, tmp_path)
    yield j
    j.close()


def items(n, start=0, kind="usage"):
    return [(f"id{i}", kind, f'{{"n":{i}}}'.encode()) for i in range(start, start + n)]


def test_append_claim_ack_counts(journal):
    journal.append(items(5))
    assert journal.acquire("me", 10)
    got = journal.claim(3, "me")
    assert [i.id for i in got] == ["id0", "id1", "id2"]
    assert all(i.attempts == 1 and i.kind == "usage" for i in got)
    assert got[0].data == b'{"n":0}'
    s = journal.stats()
    assert (s["ready"], s["inflight"], s["dead"]) == (2, 3, 0)
    journal.ack(["id0", "id1"])
    s = journal.stats()
    assert (s["ready"], s["inflight"], s["delivered"]) == (2, 1, 2)


def test_retry_respects_not_before_and_counts_attempts(journal):
    journal.append(items(2))
    journal.claim(2, "me")
    journal.retry(["id0"], "boom", time.time() + 60)
    journal.retry(["id1"], "boom", 0)
    again = journal.claim(10, "me")
    assert [i.id for i in again] == ["id1"]
    assert again[0].attempts == 2
    s = journal.stats()
    assert s["retried"] == 2 and s["ready"] == 1 and s["next_not_before"] > time.time()


def test_dead_requeue_purge(journal):
    journal.append(items(4))
    journal.claim(4, "me")
    journal.dead(["id0", "id1", "id2"], "HTTP 400: bad")
    journal.ack(["id3"])
    dead = journal.items("dead")
    assert [d["id"] for d in dead] == ["id0", "id1", "id2"]
    assert dead[0]["last_error"] == "HTTP 400: bad"
    assert journal.requeue(["id1"]) == 1
    again = journal.claim(10, "me")
    assert [i.id for i in again] == ["id1"] and again[0].attempts == 1
    assert journal.purge("dead") == 2
    assert journal.stats()["dead"] == 0
    with pytest.raises(ValueError, match="state must be one of"):
        journal.purge("bogus")


def test_purge_older_than(journal):
    journal.append(items(2))
    journal.claim(2, "me")
    journal.dead(["id0", "id1"], "x")
    assert journal.purge("dead", older_than=time.time() - 3600) == 0
    assert journal.purge("dead", older_than=time.time() + 1) == 2


def test_lease_is_exclusive_and_expired_claims_return(journal):
    journal.append(items(3))
    assert journal.acquire("a", 0.2)
    assert not journal.acquire("b", 0.2)
    claimed = journal.claim(2, "a")
    assert len(claimed) == 2
    # a live holder's claims are never reset: b cannot take over yet
    assert journal.stats()["inflight"] == 2
    deadline = time.monotonic() + 5
    while not journal.acquire("b", 5):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    s = journal.stats()
    assert s["inflight"] == 0 and s["ready"] == 3 and s["lease_holder"] == "b"
    assert len(journal.claim(10, "b")) == 3


def test_release_returns_own_claims(journal):
    journal.append(items(2))
    journal.acquire("a", 30)
    journal.claim(2, "a")
    journal.release("a")
    assert journal.stats()["ready"] == 2
    assert journal.acquire("b", 30)


