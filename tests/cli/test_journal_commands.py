"""stats, failed, requeue, purge and monitor --once on a real journal file."""

from __future__ import annotations

import io
import json
import sqlite3

from usageledger.cli import queue_monitor_main
from usageledger.delivery import PersistentQueueManager


def test_stats_table(cli, journal_db):
    r = cli("stats", journal_db)
    assert r.code == 0, r.err
    lines = {line.split()[0]: line.split()[1:] for line in r.out.splitlines() if line.strip()}
    assert lines["ready"] == ["6"]
    assert lines["inflight"] == ["1"]
    assert lines["dead"] == ["2"]
    assert lines["delivered"] == ["1"]
    assert lines["retried"] == ["2"]
    assert "worker-1" in r.out


def test_stats_json(cli, journal_db):
    r = cli("stats", journal_db, "--json")
    assert r.code == 0, r.err
    s = json.loads(r.out)
    assert (s["ready"], s["inflight"], s["dead"], s["delivered"]) == (6, 1, 2, 1)
    assert s["lease_holder"] == "worker-1"
    # the fixture enqueued moments ago: an age in seconds, not a timestamp or None
    assert isinstance(s["oldest_queued_age_s"], float) and 0 <= s["oldest_queued_age_s"] < 600


def test_failed_table_and_json(cli, journal_db):
    r = cli("failed", journal_db)
    assert r.code == 0, r.err
    assert "item-2" in r.out and "item-3" in r.out
    assert "HTTP 400: model is required" in r.out
    assert "failed items: 2 of 2" in r.out

    r = cli("failed", journal_db, "--json", "--limit", "1")
    assert r.code == 0, r.err
    items = json.loads(r.out)
    assert [i["id"] for i in items] == ["item-2"]
    assert items[0]["payload"] == {"n": 2}
    assert items[0]["last_error"] == "HTTP 400: model is required"


def test_failed_when_none(cli, tmp_path):
    from usageledger.journal import SqliteJournal

    SqliteJournal(tmp_path / "empty.db").close()
    r = cli("failed", tmp_path / "empty.db")
    assert r.code == 0 and "no failed items" in r.out


def test_requeue_by_id_then_all(cli, journal_db):
    r = cli("requeue", journal_db, "item-3")
    assert r.code == 0, r.err
    assert "requeued 1 item" in r.out
    s = json.loads(cli("stats", journal_db, "--json").out)
    assert (s["ready"], s["dead"]) == (7, 1)

    r = cli("requeue", journal_db, "--all")
    assert r.code == 0 and "requeued 1 item" in r.out
    s = json.loads(cli("stats", journal_db, "--json").out)
    assert (s["ready"], s["dead"]) == (8, 0)


def test_requeue_unknown_id_fails(cli, journal_db):
    r = cli("requeue", journal_db, "item-2", "no-such-id")
    assert r.code == 1
    assert "requeued 1 item" in r.out
    assert r.err.strip() == f"error: 1 of 2 ids are not failed items in {journal_db}"


def test_requeue_needs_all_or_ids(cli, journal_db):
    for args in ((), ("--all", "item-2")):
        r = cli("requeue", journal_db, *args)
        assert r.code == 2
        assert r.err.count("\n") == 1 and "either --all or one or more ids" in r.err
    assert json.loads(cli("stats", journal_db, "--json").out)["dead"] == 2


def test_purge_with_yes(cli, journal_db):
    r = cli("purge", journal_db, "--state", "dead", "--yes")
    assert r.code == 0, r.err
    assert r.out.strip() == "purged 2 dead items; 0 dead left"
    assert json.loads(cli("stats", journal_db, "--json").out)["dead"] == 0


def test_purge_asks_and_respects_no(cli, journal_db):
    r = cli("purge", journal_db, "--state", "failed", stdin="n\n")
    assert r.code == 1
    assert "Delete dead items" in r.err and "2 dead in total" in r.err
    assert "nothing purged" in r.err
    assert json.loads(cli("stats", journal_db, "--json").out)["dead"] == 2

    r = cli("purge", journal_db, "--state", "failed", stdin="y\n")
    assert r.code == 0 and "purged 2 dead items" in r.out


def test_purge_without_answer_purges_nothing(cli, journal_db):
    r = cli("purge", journal_db, "--state", "dead", stdin="")
    assert r.code == 1 and "pass --yes" in r.err
    assert json.loads(cli("stats", journal_db, "--json").out)["dead"] == 2


def test_purge_older_than(cli, journal_db):
    # age one dead item by ten days, as if it had been enqueued then
    with sqlite3.connect(journal_db) as conn:
        conn.execute("UPDATE dead SET created = created - 10 * 86400 WHERE id = 'item-2'")
    r = cli("purge", journal_db, "--state", "dead", "--older-than", "7d", "--yes")
    assert r.code == 0, r.err
    assert r.out.strip() == "purged 1 dead item; 1 dead left"
    mgr = PersistentQueueManager(journal_db)
    assert [i["id"] for i in mgr.failed()] == ["item-3"]
    mgr.close()


def test_purge_ready_items(cli, journal_db):
    r = cli("purge", journal_db, "--state", "queued", "--yes")
    assert r.code == 0 and "purged 6 ready items" in r.out
    s = json.loads(cli("stats", journal_db, "--json").out)
    assert (s["ready"], s["inflight"], s["dead"]) == (0, 1, 2)


def test_monitor_once(cli, journal_db):
    r = cli("monitor", journal_db, "--once")
    assert r.code == 0, r.err
    out = r.out
    for label, value in (("ready", "6"), ("inflight", "1"), ("dead", "2"), ("delivered", "1")):
        assert any(line.split()[1:3] == [label, value] for line in out.splitlines()
                   if len(line.split()) > 2), (label, out)
    assert "retry backlog: 2" in out
    assert "HTTP 503: collector unavailable" in out and "(in " in out
    assert "recent failures (dead: 2)" in out
    # newest failure first
    assert out.index("item-3") < out.index("item-2")
    assert "HTTP 422: input_tokens must be >= 0" in out
    assert "worker-1 (expires in" in out


def test_queue_monitor_alias(capsys, monkeypatch, journal_db):
    monkeypatch.setenv("COLUMNS", "200")
    assert queue_monitor_main([str(journal_db), "--once"]) == 0
    out = capsys.readouterr().out
    assert "usageledger monitor" in out and "retry backlog: 2" in out


def test_monitor_rows_limit(cli, journal_db):
    r = cli("monitor", journal_db, "--once", "--rows", "1")
    assert r.code == 0
    assert "item-3" in r.out and "item-2" not in r.out


def test_frame_shows_a_failed_refresh(journal_db):
    from rich.console import Console

    from usageledger.monitor import render, take_snapshot

    mgr = PersistentQueueManager(journal_db)
    snap = take_snapshot(mgr)
    mgr.close()
    console = Console(width=160, record=True, file=io.StringIO())
    console.print(render(snap, None, str(journal_db), 1.0, "journal x: database is locked"))
    text = console.export_text()
    assert "refresh failed, showing" in text and "database is locked" in text
    assert "retry backlog: 2" in text  # the last good read is still on screen


def test_queue_monitor_is_its_own_program(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert queue_monitor_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "queue-monitor [OPTIONS] DB" in out.replace("{db}", "DB") and "queue-monitor monitor" not in out
    assert queue_monitor_main(["/nonexistent/q.db", "--debug", "--once"]) == 1
    assert "no journal at /nonexistent/q.db" in capsys.readouterr().err
