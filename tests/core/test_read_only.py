"""Read-only journals drain (a real immutable file: chattr +i; CI runs as root).

Claiming needs a write, so the records in a journal that became read-only were never
delivered. Now they are copied into the writable fallback journal and delivered from
there; stats() says the fallback is in use.
"""

from __future__ import annotations

import contextlib
import subprocess

from usageledger.journal import SqliteJournal
from usageledger.pipeline import Pipeline
from usageledger.records import KIND_USAGE, make_usage_record

from .sinks import CollectSink


@contextlib.contextmanager
def immutable(*paths):
    subprocess.run(["chattr", "+i", *map(str, paths)], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *map(str, paths)], check=False)


def _records(n: int, start: int = 0):
    return [make_usage_record("openai", "gpt-4o", start + i, 1) for i in range(n)]


def test_immutable_journal_with_a_backlog_is_delivered_from_the_fallback(tmp_path, caplog):
    path = tmp_path / "j.db"
    j = SqliteJournal(path)
    backlog = _records(500)
    from usageledger.records import encode

    j.append([(r.id, KIND_USAGE, encode(r)) for r in backlog])
    j.checkpoint()
    j.close()
    with immutable(path):
        sink = CollectSink()
        p = Pipeline(sink, journal_path=path, fallback_dir=tmp_path / "fb", batch_interval=0.02)
        assert p.stats()["recorder"]["fallback_active"] is True
        new = _records(50, 1000)
        for r in new:
            p.submit(r.id, KIND_USAGE, r)
        assert p.flush(30), p.stats()
        assert sink.ids == {r.id for r in backlog + new}
        assert len(sink.received) == len(sink.ids)  # once each
        s = p.stats()
        assert s["recorder"]["fallback_active"] is True and s["queued"] == 0
        assert str(path) in caplog.text and "read-only" in caplog.text
        p.stop(5)
    # nothing could be deleted from the immutable file: a later process that can write it
    # delivers those records again, and the collector drops the copies by id
    again = SqliteJournal(path)
    assert again.stats()["ready"] == 500
    again.close()


def test_journal_made_immutable_while_running_drains(tmp_path):
    path = tmp_path / "j.db"
    sink = CollectSink()
    p = Pipeline(sink, journal_path=path, fallback_dir=tmp_path / "fb", batch_interval=0.02,
                 flush_interval=0.01, dispatch=False)
    before = _records(300)
    for r in before:
        p.submit(r.id, KIND_USAGE, r)
    assert p.recorder.write_pending(10)
    p.journal.checkpoint()
    with immutable(path, f"{path}-wal"):
        after = _records(200, 1000)
        for r in after:
            p.submit(r.id, KIND_USAGE, r)
        assert p.recorder.write_pending(10)
        assert p.stats()["recorder"]["fallback_active"] is True
        p.start_dispatch()
        assert p.flush(30), p.stats()
        assert sink.ids == {r.id for r in before + after}
        assert len(sink.received) == len(sink.ids)
        p.stop(5)
