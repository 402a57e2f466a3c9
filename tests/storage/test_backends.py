"""Backend-specific behaviour: create_storage names and URLs, SQLite migration and
threads, JSONL corrupt lines, exact money beyond nano-units."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from usageledger.records import make_usage_record
from usageledger.storage import create_storage
from usageledger.storage.base import RunWrite
from usageledger.storage.jsonl import JsonlStorage
from usageledger.storage.memory import MemoryStorage
from usageledger.storage.sqlite import SQLiteStorage


def test_create_storage_names_and_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert isinstance(create_storage("memory"), MemoryStorage)
    assert isinstance(create_storage("memory://"), MemoryStorage)
    s = create_storage(f"sqlite:///{tmp_path}/abs.db")
    assert isinstance(s, SQLiteStorage) and s.db_path == tmp_path / "abs.db"
    rel = create_storage("sqlite:///rel.db")
    assert rel.db_path.resolve() == tmp_path / "rel.db"
    assert create_storage("sqlite", db_path=tmp_path / "k.db").db_path == tmp_path / "k.db"
    j = create_storage(f"jsonl:///{tmp_path}/u.jsonl")
    assert isinstance(j, JsonlStorage) and j.path == tmp_path / "u.jsonl"
    assert create_storage("jsonl", path=tmp_path / "v.jsonl").path == tmp_path / "v.jsonl"
    for store in (s, rel, j):
        store.close()


def test_create_storage_server_urls(postgres_server, redis_server):
    from usageledger.storage.postgres import PostgresStorage
    from usageledger.storage.redis import RedisStorage

    pg = create_storage(postgres_server.url)
    assert isinstance(pg, PostgresStorage)
    pg.close()
    pg = create_storage("postgres", url=postgres_server.url)
    assert isinstance(pg, PostgresStorage)
    pg.close()
    r = create_storage(redis_server.url, prefix="ul-url-test:")
    assert isinstance(r, RedisStorage) and r.count() == 0
    r.close()


@pytest.mark.parametrize("bad", ["mongodb://x", "nosuch", "ftp://a/b", ""])
def test_unknown_storage_lists_the_valid_ones(bad):
    with pytest.raises(ValueError) as err:
        create_storage(bad)
    for name in ("memory", "sqlite", "jsonl", "postgres", "redis", "sqlite:///path"):
        assert name in str(err.value)


def test_a_file_url_without_a_path_is_refused():
    with pytest.raises(ValueError, match="sqlite:///path"):
        create_storage("sqlite://")
    with pytest.raises(ValueError, match="names no file"):
        create_storage("jsonl:///")


def test_memory_rejects_options():
    with pytest.raises(TypeError, match="no options"):
        create_storage("memory", db_path="x")


# -- sqlite -----------------------------------------------------------------------------------

OLD_SCHEMA = """
CREATE TABLE usage (
    id TEXT PRIMARY KEY, ts INTEGER NOT NULL, provider TEXT NOT NULL, model TEXT NOT NULL,
    input_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER NOT NULL DEFAULT 0,
    cost TEXT, currency TEXT NOT NULL DEFAULT 'USD', user_id TEXT, session_id TEXT,
    tags TEXT NOT NULL DEFAULT '{}'
);
"""


def test_sqlite_opens_an_older_file_and_adds_missing_columns(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(OLD_SCHEMA)
    day = int(datetime(2025, 2, 3, 4, tzinfo=UTC).timestamp()) * 1_000_000
    conn.executemany(
        "INSERT INTO usage (id, ts, provider, model, input_tokens, output_tokens, cost, user_id, tags)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [("old-1", day, "openai", "gpt-4o", 10, 5, "0.5", "u1", json.dumps({"env": "prod"})),
         ("old-2", day + 1, "openai", "gpt-4o", 1, 1, "0.0000000000001", None, "{}"),
         ("old-3", day + 2, "anthropic", "claude", 2, 2, None, None, "{}")],
    )
    conn.commit()
    conn.close()

    store = SQLiteStorage(path)
    columns = {row[1] for row in store._conn.execute("PRAGMA table_info(usage)")}
    assert {"cache_read_tokens", "cache_write_tokens", "reasoning_tokens", "cost_nano",
            "customer_key", "run_id", "response_id", "payload"} <= columns
    old = {r.id: r for r in store.query()}
    assert old["old-1"].tags == {"env": "prod"} and old["old-1"].cost == Decimal("0.5")
    assert old["old-1"].cache_read_tokens == 0 and old["old-1"].customer_key is None
    # the rollup is rebuilt from the old rows, the old costs counted exactly
    (row,) = store.aggregate(())
    assert row["count"] == 3 and row["unknown_cost"] == 1
    assert row["cost"] == Decimal("0.5000000000001")
    assert store.aggregate(("day", "model"))[1]["cost"] == Decimal("0.5000000000001")
    # and new records go in beside them
    new = make_usage_record("openai", "gpt-4o", 1, 1, cache_read_tokens=3, customer_key="c",
                            cost="0.25")
    assert store.save_many([new]) == {new.id}
    assert store.query(customer_key="c")[0].cache_read_tokens == 3
    assert store.save_many([new]) == set()
    store.close()
    reopened = SQLiteStorage(path)  # a second open migrates nothing and loses nothing
    assert reopened.count() == 4
    reopened.close()


def test_sqlite_is_safe_across_threads(tmp_path):
    store = SQLiteStorage(tmp_path / "threads.db")
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer(n: int) -> None:
        try:
            for i in range(50):
                store.save_many([make_usage_record("p", f"m{n}", i, 1, cost="0.001")
                                 for _ in range(20)])
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        try:
            while not stop.is_set():
                store.query(limit=10)
                store.aggregate(("model",))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    readers = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads + readers:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert errors == []
    assert store.count() == 3 * 50 * 20
    assert store.aggregate(())[0]["cost"] == Decimal("3.000")
    store.close()


def test_sqlite_uses_wal_and_indexes(tmp_path):
    store = SQLiteStorage(tmp_path / "w.db")
    assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    indexed = {r[0] for r in store._conn.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'usage'") if r[0]}
    for column in ("(ts", "(user_id", "(session_id", "(customer_key"):
        assert any(column in sql for sql in indexed), column
    store.close()


def test_sqlite_drops_the_provider_and_model_indexes_of_an_older_file(tmp_path):
    """Few values each: the hourly rollup answers their totals, and keeping the indexes cost
    every insert; an older file loses them at open."""
    SQLiteStorage(tmp_path / "o.db").close()
    with sqlite3.connect(tmp_path / "o.db") as conn:
        conn.execute("CREATE INDEX usage_provider ON usage (provider, ts)")
        conn.execute("CREATE INDEX usage_model ON usage (model, ts)")
    store = SQLiteStorage(tmp_path / "o.db")
    names = {r[0] for r in store._conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    store.close()
    assert "usage_ts" in names and not names & {"usage_provider", "usage_model"}, names


def test_sqlite_checkpoints_on_its_own_thread(tmp_path):
    """The writer's commits leave the WAL to a thread of the store's: the main file grows
    while the writer's own limit (4,000 frames) is far away, and close ends the thread."""
    path = tmp_path / "c.db"
    store = SQLiteStorage(path)
    empty = path.stat().st_size
    for i in range(3):
        store.save_many([make_usage_record("openai", "m", 10, 1, user_id=f"u{k}", tags={"t": str(k)})
                         for k in range(1000 * i, 1000 * (i + 1))])
    deadline = time.monotonic() + 10
    while path.stat().st_size == empty and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.stat().st_size > empty + 500_000, (empty, path.stat().st_size)
    assert any(t.name.startswith("usageledger-checkpoint") for t in threading.enumerate())
    store.close()
    assert not any(t.name.startswith("usageledger-checkpoint") for t in threading.enumerate())


# -- jsonl ------------------------------------------------------------------------------------

def test_jsonl_skips_counts_and_logs_corrupt_lines(tmp_path, caplog):
    path = tmp_path / "u.jsonl"
    store = JsonlStorage(path)
    good = [make_usage_record("openai", "gpt-4o", i, 1, cost="0.1") for i in range(3)]
    store.save_many(good)
    store.write_runs([RunWrite("r", {"status": "running"}, 1),
                      RunWrite("r", {"status": "done"}, 2, create=False)])
    store.close()
    with open(path, "ab") as fh:
        fh.write(b"this is not json\n")
        fh.write(b'{"id": "x", "timestamp": "not a time"}\n')
        fh.write(b'{"id": "torn", "timestamp": "2025-01-01T00:00:00Z", "provi')  # torn last line
    with caplog.at_level(logging.WARNING, logger="usageledger.storage.jsonl"):
        store = JsonlStorage(path)
    assert store.corrupt_lines == 3
    assert "corrupt" in caplog.text
    assert {r.id for r in store.query()} == {r.id for r in good}
    assert store.get_run("r") == {"status": "done", "run_id": "r", "seq": 2}
    # appends after a torn line start on a line of their own, and dedup holds
    more = make_usage_record("openai", "gpt-4o", 9, 9, cost="0.2")
    assert store.save_many([*good, more]) == {more.id}
    store.close()
    store = JsonlStorage(path)
    assert store.corrupt_lines == 3
    assert store.count() == 4
    assert store.aggregate(())[0]["cost"] == Decimal("0.5")
    store.close()


def test_jsonl_run_snapshots_last_by_seq_wins(tmp_path):
    path = tmp_path / "runs.jsonl"
    store = JsonlStorage(path)
    store.write_runs([RunWrite("r", {"a": 1}, 5)])
    store.close()
    # a snapshot with an older seq appended later (another writer's replay) loses on reload
    with open(path, "ab") as fh:
        fh.write(b'{"kind":"run","run":{"run_id":"r","seq":3,"a":0}}\n')
    store = JsonlStorage(path)
    assert store.get_run("r") == {"a": 1, "run_id": "r", "seq": 5}
    store.close()


def test_sqlite_refuses_a_foreign_usage_table(tmp_path):
    path = tmp_path / "foreign.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE usage (id TEXT PRIMARY KEY, timestamp TEXT, provider TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(ValueError, match=r"no column\(s\) \['ts', 'model'\]"):
        SQLiteStorage(path)


_OLD_SQLITE_ROLLUP = """CREATE TABLE usage_hourly (
    hour INTEGER NOT NULL, provider TEXT NOT NULL, model TEXT NOT NULL,
    count INTEGER NOT NULL, input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL,
    cache_read_tokens INTEGER NOT NULL, cache_write_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL, cost_nano INTEGER NOT NULL, inexact INTEGER NOT NULL,
    unknown_cost INTEGER NOT NULL, PRIMARY KEY (hour, provider, model)) WITHOUT ROWID"""


def _two_currencies():
    at = datetime(2025, 4, 1, 10, tzinfo=UTC)
    return [make_usage_record("openai", "gpt-4o", 10, 5, cost="1", currency="USD", timestamp=at),
            make_usage_record("openai", "gpt-4o", 10, 5, cost="2", currency="EUR", timestamp=at)]


def test_sqlite_rebuilds_a_rollup_keyed_without_currency(tmp_path):
    """A file whose hourly rollup predates the currency key (it summed 1 USD + 2 EUR into
    3) is rebuilt from the records at open: aggregates answer per currency again."""
    path = tmp_path / "old.db"
    SQLiteStorage(path).close()
    con = sqlite3.connect(path)
    con.execute("DROP TABLE usage_hourly")
    con.execute(_OLD_SQLITE_ROLLUP)
    con.commit()
    con.close()
    store = SQLiteStorage(path)  # the old shape: dropped and rebuilt (empty)
    store.save_many(_two_currencies())
    store.close()
    con = sqlite3.connect(path)
    con.execute("DROP TABLE usage_hourly")
    con.execute(_OLD_SQLITE_ROLLUP)
    con.execute("INSERT INTO usage_hourly VALUES (483058, 'openai', 'gpt-4o', 2, 20, 10, 0, 0, 0, "
                "3000000000, 0, 0)")
    con.commit()
    con.close()
    store = SQLiteStorage(path)
    try:
        got = [(r["currency"], r["cost"], r["count"]) for r in store.aggregate(("day", "model"))]
        assert got == [("EUR", Decimal(2), 1), ("USD", Decimal(1), 1)]
    finally:
        store.close()


def test_postgres_rebuilds_a_rollup_keyed_without_currency(postgres_server):
    import uuid

    import psycopg

    name = f"ul_rollup_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = postgres_server.url.rsplit("/", 1)[0] + "/" + name
    store = create_storage(url)
    store.save_many(_two_currencies())
    store.close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE usage_hourly")
        conn.execute("""CREATE TABLE usage_hourly (
            hour BIGINT NOT NULL, provider TEXT NOT NULL, model TEXT NOT NULL,
            count BIGINT NOT NULL, input_tokens NUMERIC NOT NULL, output_tokens NUMERIC NOT NULL,
            cache_read_tokens NUMERIC NOT NULL, cache_write_tokens NUMERIC NOT NULL,
            reasoning_tokens NUMERIC NOT NULL, cost NUMERIC NOT NULL, unknown_cost BIGINT NOT NULL,
            PRIMARY KEY (hour, provider, model))""")
        conn.execute("INSERT INTO usage_hourly VALUES (483058, 'openai', 'gpt-4o', 2, 20, 10, 0, 0, 0, 3, 0)")
    store = create_storage(url)
    try:
        got = [(r["currency"], r["cost"], r["count"]) for r in store.aggregate(("day", "model"))]
        assert got == [("EUR", Decimal(2), 1), ("USD", Decimal(1), 1)]
    finally:
        store.close()
