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


def _batch(n: int, start: int) -> list:
    return [make_usage_record("openai", "m", 1, 1, timestamp=T0, user_id=f"u{i % 7}",
                              tags={"team": f"t{i % 3}"}) for i in range(start, start + n)]


def test_a_child_forked_while_the_checkpoint_thread_runs_checkpoints_on_its_own(tmp_path):
    """The parent's checkpoint thread (started by its writes, holding a connection of its
    own) is not in the child: the child's writes start a thread of the child's, the file
    stays sound on both sides, and each side's rows are all there."""
    import sqlite3
    import threading

    s = SQLiteStorage(tmp_path / "c.db")
    s.save_many(_batch(1500, 0))  # past the threshold: the parent's thread is running
    assert any(t.name.startswith("usageledger-checkpoint") for t in threading.enumerate())

    def child() -> bool:
        new = s.save_many(_batch(1500, 10_000))
        mine = [t for t in threading.enumerate() if t.name.startswith("usageledger-checkpoint")]
        ok = s._conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        return len(new) == 1500 and len(mine) == 1 and ok and s.count() == 3000

    assert in_child(child) == 0
    s.save_many(_batch(1500, 20_000))
    assert s.count() == 4500
    s.close()
    with sqlite3.connect(tmp_path / "c.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT SUM(count) FROM usage_daily WHERE dim = ''").fetchone()[0] == 4500
