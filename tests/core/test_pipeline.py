"""Recorder + dispatcher behaviour with an in-process sink."""

from __future__ import annotations

import os
import time

import pytest

from usageledger.pipeline import Pipeline
from usageledger.records import KIND_USAGE, make_usage_record
from usageledger.sinks.base import Retry

from .sinks import CollectSink


def submit_n(p: Pipeline, n: int) -> list[str]:
    ids = []
    for i in range(n):
        r = make_usage_record("openai", "gpt-4o", i, 1)
        p.submit(r.id, KIND_USAGE, r)
        ids.append(r.id)
    return ids


@pytest.mark.parametrize("durability", ["buffered", "committed", "fsync", "memory"])
def test_every_durability_delivers_all(tmp_path, durability):
    sink = CollectSink()
    p = Pipeline(sink, journal_path=tmp_path / "j.db", durability=durability, batch_interval=0.02)
    ids = submit_n(p, 300)
    assert p.flush(20)
    assert sink.ids == set(ids) and len(sink.received) == 300
    s = p.stats()
    assert s["delivered"] == 300 and s["queued"] == 0 and s["dropped"] == 0
    assert p.stop(5)


def test_committed_returns_after_commit(tmp_path):
    sink = CollectSink()
    sink.fail_with = Retry(None, "down")  # nothing leaves the journal
    p = Pipeline(sink, journal_path=tmp_path / "j.db", durability="committed", dispatch=False)
    ids = submit_n(p, 5)
    # no flush: committed means the rows are in the file when submit returns
    import sqlite3

    con = sqlite3.connect(tmp_path / "j.db")
    stored = {r[0] for r in con.execute("SELECT id FROM items")}
    assert stored == set(ids)
    p.stop(1)


def test_committed_group_commit_returns_each_caller_after_its_own_commit(tmp_path):
    import sqlite3
    import threading

    p = Pipeline(CollectSink(), journal_path=tmp_path / "j.db", durability="committed", dispatch=False)
    missing: list[str] = []
    done: list[str] = []

    def work() -> None:
        con = sqlite3.connect(tmp_path / "j.db")  # a reader of its own, like another process
        for i in range(150):
            r = make_usage_record("openai", "gpt-4o", i, 1)
            p.submit(r.id, KIND_USAGE, r)
            if con.execute("SELECT 1 FROM items WHERE id = ?", (r.id,)).fetchone() is None:
                missing.append(r.id)
            done.append(r.id)
        con.close()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(done) == 8 * 150 and not missing, f"{len(missing)} ids not committed when submit returned"
    assert p.stats()["queued"] == 8 * 150
    p.stop(1)


def test_batches_respect_max_batch_size(tmp_path):
    sink = CollectSink()
    p = Pipeline(sink, durability="memory", max_batch_size=7, batch_interval=0.02)
    submit_n(p, 50)
    assert p.flush(10)
    assert max(sink.batches) <= 7 and sum(sink.batches) == 50
    p.stop(1)


def test_caller_runs_keeps_memory_bounded_and_loses_nothing(tmp_path):
    sink = CollectSink()
    p = Pipeline(sink, journal_path=tmp_path / "j.db", max_buffer=50, flush_interval=60, dispatch=False)
    ids = submit_n(p, 1000)
    rs = p.stats()["recorder"]
    assert rs["buffered"] < 50  # never grew past the bound
    assert rs["caller_runs"] >= 1000 // 50 - 1
    p.stop(5)
    import sqlite3

    con = sqlite3.connect(tmp_path / "j.db")
    assert con.execute("SELECT count(*) FROM items").fetchone()[0] == len(ids)


def test_retry_then_recovery(tmp_path):
    sink = CollectSink()
    sink.fail_with = Retry(None, "503")
    p = Pipeline(sink, durability="memory", batch_interval=0.02, base_delay=0.02, max_backoff=0.1,
                 max_attempts=10_000)
    ids = submit_n(p, 20)
    assert not p.flush(0.3)
    assert p.stats()["retried"] > 0
    sink.fail_with = None
    assert p.flush(10)
    assert sink.ids == set(ids)
    p.stop(1)


def test_max_attempts_dead_letters(tmp_path):
    sink = CollectSink()
    sink.fail_with = Retry(None, "still down")
    p = Pipeline(sink, durability="memory", batch_interval=0.01, base_delay=0.001,
                 max_backoff=0.01, max_attempts=3)
    submit_n(p, 4)
    assert p.flush(10)  # dead items count as settled
    s = p.stats()
    assert s["dead"] == 4 and s["delivered"] == 0
    dead = p.journal.items("dead")
    assert "gave up after 3 attempts: still down" == dead[0]["last_error"]
    p.stop(1)


def test_poison_is_dead_lettered_while_others_flow(tmp_path):
    sink = CollectSink()
    p = Pipeline(sink, durability="memory", batch_interval=0.01)
    records = [make_usage_record("openai", "gpt-4o", i, 1) for i in range(10)]
    ids = [r.id for r in records]
    sink.reject = {ids[3]}  # before submitting: the dispatcher may send within 10 ms
    for r in records:
        p.submit(r.id, KIND_USAGE, r)
    assert p.flush(10)
    assert sink.ids == set(ids) - {ids[3]}
    assert [d["id"] for d in p.journal.items("dead")] == [ids[3]]
    sink.reject = set()
    assert p.journal.requeue() == 1
    assert p.flush(10)
    assert sink.ids == set(ids)
    p.stop(1)


def test_flush_and_stop_return_by_deadline_when_sink_hangs(tmp_path):
    import threading

    gate = threading.Event()

    class Hang(CollectSink):
        def send(self, batch):
            gate.wait(30)
            return super().send(batch)

    sink = Hang()
    p = Pipeline(sink, journal_path=tmp_path / "j.db", batch_interval=0.01)
    submit_n(p, 5)
    t0 = time.monotonic()
    assert p.flush(0.3) is False
    assert p.stop(0.3) is False
    assert time.monotonic() - t0 < 3
    gate.set()
    # what was not sent stays in the journal for the next run
    from usageledger.journal import SqliteJournal

    s = SqliteJournal(tmp_path / "j.db").stats()
    assert s["ready"] + s["inflight"] + s["delivered"] == 5


def test_fork_child_sends_only_its_own(tmp_path):
    sink_path = tmp_path / "child_ids"
    sink = CollectSink()
    p = Pipeline(sink, journal_path=tmp_path / "j.db", flush_interval=60, batch_interval=60)
    parent_ids = submit_n(p, 10)  # still in the parent's buffer
    pid = os.fork()
    if pid == 0:  # child
        try:
            assert p.stats()["recorder"]["buffered"] == 0
            child_ids = submit_n(p, 3)
            p.recorder.write_pending()
            sink_path.write_text("\n".join(child_ids))
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    child_ids = sink_path.read_text().split("\n")
    assert p.flush(10)
    assert sorted(sink.received) == sorted(parent_ids + child_ids)  # each exactly once
    p.stop(1)
