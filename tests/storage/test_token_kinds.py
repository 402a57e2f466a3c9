"""The finer token kinds (1-hour cache writes, audio and image tokens) and the service tier:
stored and read back by every backend, and an older database without their columns keeps
working and gains them."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime

import pytest

from usageledger.records import DETAIL_TOKEN_FIELDS, make_usage_record
from usageledger.storage import create_storage

T0 = datetime(2026, 11, 2, 10, tzinfo=UTC)


def _detailed(**over):
    fields = dict(cache_read_tokens=40, cache_write_tokens=300, cache_write_1h_tokens=200,
                  input_audio_tokens=60, input_image_tokens=30, output_audio_tokens=15,
                  output_image_tokens=5, service_tier="batch", timestamp=T0, cost="0.125")
    fields.update(over)
    return make_usage_record("openai", "gpt-realtime", 100, 50, **fields)


def test_every_backend_stores_and_reads_back_the_finer_kinds(opener):
    store = opener()
    rich = _detailed()
    plain = make_usage_record("anthropic", "claude-sonnet-4-5", 7, 3, timestamp=T0)
    assert store.save_many([rich, plain]) == {rich.id, plain.id}
    got = {r.id: r for r in store.query()}
    assert got[rich.id] == rich
    assert got[plain.id] == plain and got[plain.id].service_tier is None
    assert all(getattr(got[plain.id], f) == 0 for f in DETAIL_TOKEN_FIELDS)
    assert [r.id for r in store.iter_records(batch_size=1)] == [r.id for r in store.query()]
    reopened = opener()  # what is on disk (or on the server), not a cached object
    assert {r.id: r for r in reopened.query()}[rich.id] == rich


def _drop_new_columns(kind: str, store) -> None:
    """Make the store's table look like one written before the finer kinds existed."""
    columns = [*DETAIL_TOKEN_FIELDS, "service_tier"]
    drops = [f"ALTER TABLE usage DROP COLUMN {c}" for c in columns] + [
        f"ALTER TABLE {t} DROP COLUMN {c}" for t in ("usage_hourly", "usage_daily") for c in DETAIL_TOKEN_FIELDS]
    if kind == "sqlite":
        store._conn.executescript(";".join(drops))
    elif kind == "postgres":
        with store._pool.connection() as conn:
            for sql in drops:
                conn.execute(sql)
    else:
        for c in columns:
            store._engine.command(f"ALTER TABLE {store._db}.usage DROP COLUMN {c}")


def _open(kind: str, request, tmp_path):
    if kind == "sqlite":
        return create_storage(f"sqlite:///{tmp_path}/usage.db")
    if kind == "chdb":
        return create_storage(f"chdb:///{tmp_path}/usage.chdb")
    return create_storage(request.getfixturevalue("storage_pg_url"))


@pytest.mark.parametrize("kind", ["sqlite", "postgres", "chdb"])
def test_a_table_without_the_new_columns_keeps_working_and_gains_them(kind, request, tmp_path):
    store = _open(kind, request, tmp_path)
    store.clear()  # postgres shares one database between tests
    old = make_usage_record("openai", "gpt-4o", 10, 5, cache_write_tokens=4, timestamp=T0, cost="0.5")
    store.save_many([old])
    _drop_new_columns(kind, store)
    store.close()

    store = _open(kind, request, tmp_path)  # opening migrates forward
    try:
        (got,) = store.query()
        assert got == old and got.cache_write_1h_tokens == 0 and got.service_tier is None
        rich = _detailed()
        assert store.save_many([rich]) == {rich.id}
        assert {r.id: r for r in store.query()}[rich.id] == rich
        for group_by in ((), ("day", "model"), ("user_id",)):  # the rollups and a scan
            rows = store.aggregate(group_by)
            assert sum(r["count"] for r in rows) == 2
            assert {k: sum(r[k] for r in rows) for k in DETAIL_TOKEN_FIELDS} == {
                k: getattr(rich, k) for k in DETAIL_TOKEN_FIELDS}
    finally:
        store.clear()
        store.close()


def test_redis_rollups_written_before_the_parts_read_them_as_zero(redis_server):
    import uuid

    store = create_storage(redis_server.url, prefix=f"ul-parts-{uuid.uuid4().hex[:8]}:")
    try:
        store.save_many([make_usage_record("openai", "gpt-4o", 10, 5, timestamp=T0, cost="0.5")])
        for k in DETAIL_TOKEN_FIELDS:  # as a store written before these sums existed
            store._r.delete(f"{store.prefix}roll:{k}", f"{store.prefix}roll_day:{k}")
        rich = _detailed()
        store.save_many([rich])
        (row,) = store.aggregate(())
        assert row["count"] == 2
        assert {k: row[k] for k in DETAIL_TOKEN_FIELDS} == {k: getattr(rich, k) for k in DETAIL_TOKEN_FIELDS}
    finally:
        store.clear()
        store.close()


def test_jsonl_lines_written_before_the_new_fields_read_with_their_defaults(tmp_path):
    path = tmp_path / "old.jsonl"
    line = {"id": "old-1", "timestamp": "2026-11-02T10:00:00Z", "provider": "openai",
            "model": "gpt-4o", "input_tokens": 3, "output_tokens": 2, "cost": "0.1"}
    path.write_text(json.dumps(line) + "\n")
    store = create_storage("jsonl", path=path)
    (got,) = store.query()
    assert got.input_tokens == 3 and got.input_audio_tokens == 0 and got.service_tier is None
    rich = _detailed()
    store.save_many([rich])
    store.close()
    again = create_storage("jsonl", path=path)
    assert {r.id: r for r in again.query()}[rich.id] == rich
    again.close()


def test_sqlite_migrates_a_file_made_by_an_older_release(tmp_path):
    # a file whose table was created without the columns (not dropped from a newer one)
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE usage (id TEXT PRIMARY KEY, ts INTEGER NOT NULL, provider TEXT NOT NULL, "
                 "model TEXT NOT NULL, input_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER "
                 "NOT NULL DEFAULT 0, cost TEXT, currency TEXT NOT NULL DEFAULT 'USD', tags TEXT NOT "
                 "NULL DEFAULT '{}')")
    conn.execute("INSERT INTO usage (id, ts, provider, model, input_tokens, output_tokens, cost) "
                 "VALUES ('old-1', 1762077600000000, 'openai', 'gpt-4o', 3, 2, '0.1')")
    conn.commit()
    conn.close()
    store = create_storage(f"sqlite:///{path}")
    columns = {row[1] for row in store._conn.execute("PRAGMA table_info(usage)")}
    assert {*DETAIL_TOKEN_FIELDS, "service_tier"} <= columns
    (got,) = store.query()
    assert got.id == "old-1" and got.output_image_tokens == 0 and got.service_tier is None
    store.close()
