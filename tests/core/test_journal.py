"""The Journal contract, run against every journal."""

from __future__ import annotations

import os
import sqlite3
import stat
import time

import pytest

from usageledger.journal import MemoryJournal, SqliteJournal


@pytest.fixture(params=["sqlite", "memory"])
def journal(request, tmp_path):
    j = SqliteJournal(tmp_path / "j.db") if request.param == "sqlite" else MemoryJournal()
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


def test_sqlite_file_is_private_and_shared_between_handles(tmp_path):
    path = tmp_path / "q.db"
    a = SqliteJournal(path)
    b = SqliteJournal(path)
    a.append(items(3))
    assert b.stats()["ready"] == 3
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_not_a_database_is_moved_aside(tmp_path, caplog):
    path = tmp_path / "q.db"
    path.write_bytes(b"this is not sqlite at all" * 100)
    j = SqliteJournal(path)
    j.append(items(1))
    assert j.stats()["ready"] == 1
    aside = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not sqlite")
    assert str(path) in caplog.text and str(aside[0]) in caplog.text


def test_journal_schema_is_readable_by_plain_sqlite(tmp_path):
    j = SqliteJournal(tmp_path / "q.db")
    j.append(items(2))
    con = sqlite3.connect(tmp_path / "q.db")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("SELECT count(*) FROM items").fetchone()[0] == 2


def _open_and_append(path: str, start_at: float, i: int) -> None:
    time.sleep(max(start_at - time.time(), 0))
    j = SqliteJournal(path)
    j.append([(f"id{i}", "raw", b"{}")])
    j.close()


def test_many_processes_creating_one_new_journal_at_once(tmp_path):
    # switching a new file to WAL can answer "database is locked" without waiting for the
    # busy timeout: every opener must retry rather than fail
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    for round_ in range(3):
        path = str(tmp_path / f"new{round_}.db")
        start_at = time.time() + 1.0
        procs = [ctx.Process(target=_open_and_append, args=(path, start_at, i)) for i in range(6)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        assert [p.exitcode for p in procs] == [0] * 6
        assert SqliteJournal(path).stats()["ready"] == 6
