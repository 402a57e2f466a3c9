"""SQLiteStorage across fork(): a child opens its own connection and lock, on a real fork.

Before, the child used the connection it inherited (SQLite forbids carrying one across
fork) and waited forever on the storage lock whenever a parent thread held it at fork."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.support.forking import held_by_a_thread, in_child
from usageledger.records import make_usage_record
from usageledger.storage.sqlite import SQLiteStorage

T0 = datetime(2025, 5, 1, tzinfo=UTC)


def test_a_forked_child_stores_through_its_own_connection(tmp_path):
    s = SQLiteStorage(tmp_path / "u.db")
    first = make_usage_record("openai", "m", 1, 1, timestamp=T0)
    s.save_many([first])
    parent_conn = s._conn
    child_record = make_usage_record("openai", "m", 2, 2, timestamp=T0)

    def child() -> bool:
        stored = s.save_many([child_record]) == {child_record.id}
        return stored and s._conn is not parent_conn and s.count() == 2

    # e.g. the dispatcher thread in the middle of a batch when the application forks
    with held_by_a_thread(s._db.lock):
        assert in_child(child) == 0
    assert s._conn is parent_conn  # the parent's connection is untouched and sees the row
    assert {r.id for r in s.query()} == {first.id, child_record.id}
    s.close()
