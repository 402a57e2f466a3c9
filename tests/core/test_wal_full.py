"""A journal cannot wedge itself on a full disk (real tmpfs; CI runs as root).

With the destination failing, every retry rewrites rows; the WAL grew until the disk was
full, and from then on every write failed, including the deletes that would free space:
nothing was ever delivered, by the same process or a new one.
"""

from __future__ import annotations

import os
import subprocess
import time

from usageledger.pipeline import Pipeline
from usageledger.records import KIND_USAGE, make_usage_record
from usageledger.sinks.base import Retry

from .sinks import CollectSink
from .test_disk_faults import tmpfs


def _record(i: int):
    return make_usage_record("openai", "gpt-4o", i, 1, payload={"blob": f"{i:06d}" + "x" * 1500})


def _wal_size(path) -> int:
    try:
        return os.path.getsize(f"{path}-wal")
    except FileNotFoundError:
        return 0


def test_wal_full_with_failing_destination_recovers_when_space_returns(tmp_path, caplog):
    with tmpfs(tmp_path / "small", size="1m") as small:
        journal = small / "j.db"
        sink = CollectSink()
        sink.fail_with = Retry(None, "destination down")
        p = Pipeline(sink, journal_path=journal, fallback_dir=tmp_path / "fallback",
                     flush_interval=0.01, batch_interval=0.02, base_delay=0.01, max_backoff=0.05,
                     max_attempts=10**9, max_batch_size=50)
        ids = []
        # fill the disk: the writer moves to the fallback once the primary refuses
        deadline = time.monotonic() + 60
        i = 0
        while not p.stats()["recorder"]["fallback_active"] and time.monotonic() < deadline:
            for _ in range(20):
                r = _record(i)
                p.submit(r.id, KIND_USAGE, r)
                ids.append(r.id)
                i += 1
            time.sleep(0.01)
        assert p.stats()["recorder"]["fallback_active"], "the disk never filled"
        for _ in range(100):  # a few more after the primary refused: they go to the fallback
            r = _record(i)
            p.submit(r.id, KIND_USAGE, r)
            ids.append(r.id)
            i += 1
        # keep failing for a while: retries of the rows in the full primary hit ENOSPC
        time.sleep(3)
        free = os.statvfs(small)
        print(f"full: {len(ids)} records, wal {_wal_size(journal)} bytes,"
              f" free {free.f_bavail * free.f_frsize} bytes, journal stats {p.recorder.journals[0].stats()}")
        # space returns and the destination answers again: everything arrives, once each
        subprocess.run(["mount", "-o", "remount,size=16m", str(small)], check=True)
        sink.fail_with = None
        assert p.flush(60), p.stats()
        assert sorted(sink.received) == sorted(ids)  # every record, no copy twice
        p.stop(5)


def test_retries_rewrite_small_rows_not_payloads(tmp_path):
    """An outage is a retry of every waiting record, again and again: each retry must
    write WAL for the small bookkeeping rows, not for the payload pages around them."""
    from usageledger.journal import SqliteJournal

    j = SqliteJournal(tmp_path / "j.db")
    n, size = 200, 2000
    j.append([(f"id{i}", "usage", bytes([65 + i % 26]) * size) for i in range(n)])
    got = j.claim(n, "me")
    assert len(got) == n
    j.checkpoint()
    assert _wal_size(tmp_path / "j.db") == 0
    j.retry([g.id for g in got], "destination down", 0)
    written = _wal_size(tmp_path / "j.db")
    # the payloads are 400 kB; rewriting the rows that hold them wrote about that much
    assert written < n * size / 8, f"one retry of {n} records wrote {written} bytes of WAL"
    again = j.claim(n, "me")
    assert [g.data for g in again] == [g.data for g in got]  # payloads untouched


def test_journal_of_the_previous_layout_is_migrated_and_keeps_its_payloads(tmp_path):
    """Journals written before payloads had their own table: rows keep theirs inline."""
    import sqlite3

    from usageledger.journal import SqliteJournal

    path = tmp_path / "old.db"
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.executescript("""
        CREATE TABLE items (id TEXT NOT NULL, kind TEXT NOT NULL, data BLOB NOT NULL,
            state INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,
            not_before REAL NOT NULL DEFAULT 0, created REAL NOT NULL, last_error TEXT, owner TEXT);
        CREATE TABLE dead (id TEXT NOT NULL, kind TEXT NOT NULL, data BLOB NOT NULL,
            attempts INTEGER NOT NULL, created REAL NOT NULL, last_error TEXT, died REAL NOT NULL);
        CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
        CREATE TABLE lease (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires REAL NOT NULL);
        INSERT INTO counters VALUES ('delivered', 0), ('retried', 0);
    """)
    con.executemany("INSERT INTO items(id, kind, data, created) VALUES (?, 'usage', ?, 1.0)",
                    [(f"old{i}", b"old-%d" % i) for i in range(3)])
    con.close()
    j = SqliteJournal(path)
    j.append([("new0", "usage", b"new-0")])
    got = j.claim(10, "me")
    assert [(g.id, g.data) for g in got] == [("old0", b"old-0"), ("old1", b"old-1"), ("old2", b"old-2"),
                                             ("new0", b"new-0")]
    j.dead(["old1", "new0"], "poison")
    assert {d["id"]: d["data"] for d in j.items("dead")} == {"old1": b"old-1", "new0": b"new-0"}
    j.ack(["old0", "old2"])
    assert j.stats()["delivered"] == 2 and not j.has_pending()
