"""The one SQLite helper (usageledger._sqlite): transactions, the add-missing-columns
migration and the fork-guarded handle, on real files and a real fork()."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from tests.support.forking import held_by_a_thread, in_child
from usageledger._sqlite import WalHandle, add_missing_columns, connect_wal, transaction


def test_transaction_commits_or_rolls_back(tmp_path):
    conn = connect_wal(tmp_path / "t.db", schema="CREATE TABLE t (x INTEGER);")
    with transaction(conn):
        conn.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(RuntimeError), transaction(conn):
        conn.execute("INSERT INTO t VALUES (2)")
        raise RuntimeError("boom")
    assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]
    assert not conn.in_transaction


def test_a_failed_commit_leaves_no_transaction_open(tmp_path):
    # a deferred foreign key makes COMMIT itself fail: a real refusal by SQLite
    conn = connect_wal(tmp_path / "t.db", schema="""
        CREATE TABLE p (id INTEGER PRIMARY KEY);
        CREATE TABLE c (p INTEGER REFERENCES p (id) DEFERRABLE INITIALLY DEFERRED);""",
        pragmas=("foreign_keys=ON",))
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"), transaction(conn):
        conn.execute("INSERT INTO c VALUES (42)")
    assert not conn.in_transaction  # else the next BEGIN fails: "within a transaction"
    with transaction(conn):
        conn.execute("INSERT INTO p VALUES (42)")
        conn.execute("INSERT INTO c VALUES (42)")
    assert conn.execute("SELECT count(*) FROM c").fetchone() == (1,)


def test_add_missing_columns_creates_then_adds_each_new_column(tmp_path):
    conn = connect_wal(tmp_path / "t.db")
    v1 = {"id": "TEXT PRIMARY KEY", "n": "INTEGER NOT NULL DEFAULT 0"}
    with transaction(conn):
        assert add_missing_columns(conn, "things", v1) == []  # created
    conn.execute("INSERT INTO things (id) VALUES ('a')")
    v2 = {**v1, "project": "TEXT", "tokens": "INTEGER NOT NULL DEFAULT 0"}  # one line each
    with transaction(conn):
        assert add_missing_columns(conn, "things", v2) == ["project", "tokens"]
    assert conn.execute("SELECT id, n, project, tokens FROM things").fetchall() == [("a", 0, None, 0)]
    with transaction(conn):
        assert add_missing_columns(conn, "things", v2) == []  # nothing left to do


def test_add_missing_columns_names_what_it_cannot_do(tmp_path):
    conn = connect_wal(tmp_path / "t.db", schema="CREATE TABLE usage (x TEXT);")
    with pytest.raises(ValueError, match=r"table 'usage' has no column\(s\) \['id'\]"):
        add_missing_columns(conn, "usage", {"id": "TEXT PRIMARY KEY", "x": "TEXT"}, required=("id",))
    assert [r[1] for r in conn.execute("PRAGMA table_info(usage)")] == ["x"]  # unchanged
    conn.execute("INSERT INTO usage VALUES ('a')")  # SQLite refuses NOT NULL without a default then
    with pytest.raises(sqlite3.OperationalError, match="cannot add column n .* to table 'usage'"):
        add_missing_columns(conn, "usage", {"x": "TEXT", "n": "INTEGER NOT NULL"})


def test_a_forked_child_opens_its_own_connection_and_lock(tmp_path):
    db = WalHandle(tmp_path / "t.db")
    with db.transaction() as c:
        c.execute("CREATE TABLE t (x INTEGER)")
    parent_conn = db.get()

    def child() -> bool:
        # the parent's lock is held by a thread that does not exist here: without the
        # guard this would wait forever (the test's timeout would end it)
        with db.transaction() as c:
            c.execute("INSERT INTO t VALUES (1)")
        return db.get() is not parent_conn

    with held_by_a_thread(db.lock):
        assert in_child(child) == 0
    # the parent's connection still works, and sees the child's row
    with db as c:
        assert c is parent_conn
        assert c.execute("SELECT x FROM t").fetchall() == [(1,)]
    db.close()


def test_per_thread_handles_and_reset(tmp_path):
    db = WalHandle(tmp_path / "t.db", per_thread=True)
    mine = db.get()
    other: list = []
    t = threading.Thread(target=lambda: other.append(db.get()))
    t.start()
    t.join()
    assert other[0] is not mine and db.get() is mine
    gen = db.conn_gen()
    db.reset()  # the file is being replaced
    assert db.get() is not mine and db.conn_gen() == gen + 1
    db.close()
