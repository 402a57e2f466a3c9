"""What only the SQLite journal promises (the contract every journal keeps is in
test_journal_contract.py)."""

from __future__ import annotations

import os
import sqlite3
import stat
import time

from usageledger.journal import SqliteJournal

from .test_journal_contract import items


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
