"""The agent_runs table: insert, update, get, stats, integrity; seq never rolls back."""

from __future__ import annotations

from usageledger._sqlite import WalHandle
from usageledger.journal.base import JournalItem
from usageledger.records import KIND_RUN, encode
from usageledger.sinks.base import OK, Reject
from usageledger.telemetry import DatabaseWriter, RunRecord, SqliteRunSink
from usageledger.telemetry.models import RunWrite


def rec(run_id="r1", status="running", **kw) -> RunRecord:
    return RunRecord(run_id, "agent", "job", start_time="2026-01-01T00:00:00+00:00", status=status, **kw)


def test_insert_get_update(tmp_path):
    db = DatabaseWriter(tmp_path / "t.sqlite")
    assert db.get_run("r1") is None
    assert db.insert_run(rec(metrics_json={"a": [1, 2]}))
    assert db.get_run("r1") == rec(metrics_json={"a": [1, 2]})
    assert db.get_row("r1")["seq"] == 1
    assert db.update_run(rec(status="success", items_succeeded=3))  # seq None: one past stored
    assert db.get_run("r1").status == "success" and db.get_row("r1")["seq"] == 2
    assert not db.update_run(rec("unknown"))
    db.close()


def test_older_seq_never_rolls_a_run_back(tmp_path):
    db = DatabaseWriter(tmp_path / "t.sqlite")
    assert db.insert_run(rec(status="success"), seq=5)
    assert not db.insert_run(rec(), seq=1)  # a replayed create
    assert not db.update_run(rec(status="failed"), seq=5)  # same seq: a duplicate
    assert not db.update_run(rec(status="failed"), seq=4)
    assert db.get_run("r1").status == "success"
    # an update arriving before its create creates the run
    writes = [RunWrite("r2", "a", "j", status="success", id="w3", seq=3),
              RunWrite("r2", "a", "j", status="running", id="w1", seq=1)]
    assert db.write_runs(writes) == 1
    assert db.get_run("r2").status == "success"


def test_stats_and_integrity(tmp_path):
    db = DatabaseWriter(tmp_path / "t.sqlite")
    for i, status in enumerate(["success", "success", "failed", "running"]):
        db.insert_run(rec(f"r{i}", status))
    assert db.get_run_stats() == {"total": 4, "by_status": {"success": 2, "failed": 1, "running": 1}}
    assert db.check_integrity() == (True, "ok")
    db.close()
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)
    broken = DatabaseWriter.__new__(DatabaseWriter)
    broken.__dict__.update(db.__dict__, path=bad, _db=WalHandle(bad))  # the file never opened
    ok, message = broken.check_integrity()
    assert not ok and message


def test_schema_migrates_forward(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE agent_runs (run_id TEXT PRIMARY KEY, agent_name TEXT, status TEXT, seq INTEGER)")
    conn.execute("INSERT INTO agent_runs VALUES ('old', 'a', 'success', 1)")
    conn.commit()
    conn.close()
    db = DatabaseWriter(path)
    assert db.get_row("old")["status"] == "success"
    db.insert_run(rec(subdomain="docs"))
    assert db.get_run("r1").subdomain == "docs"


def test_sink_applies_a_batch_and_rejects_what_is_not_a_run(tmp_path):
    db = DatabaseWriter(tmp_path / "t.sqlite")
    w1 = RunWrite("r1", "a", "j", status="running", id="w1", seq=1)
    w2 = RunWrite("r1", "a", "j", status="success", id="w2", seq=2)
    batch = [JournalItem("w2", KIND_RUN, encode(w2), 1), JournalItem("w1", KIND_RUN, encode(w1), 1),
             JournalItem("e", "run_event", b"{}", 1), JournalItem("x", KIND_RUN, b"[", 1)]
    results = SqliteRunSink(db).send(batch)
    assert results["w1"] is OK and results["w2"] is OK
    assert isinstance(results["e"], Reject) and isinstance(results["x"], Reject)
    row = db.get_row("r1")
    assert row["status"] == "success" and row["seq"] == 2 and row["write_id"] == "w2"
