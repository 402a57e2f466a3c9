"""Durability levels tell the truth (real read-only and full tmpfs mounts): committed and
fsync raise instead of acknowledging a record no journal on disk took; buffered keeps it
in memory and says so; the real location is tried again and used once it works."""

from __future__ import annotations

import logging
import subprocess
import time

import pytest

import usageledger
from tests.core.test_disk_faults import big_record, tmpfs
from tests.support.fault_server import FaultServer
from usageledger.delivery import PersistentDelivery
from usageledger.journal import JournalError, JournalUnavailableError, SqliteJournal
from usageledger.pipeline import Pipeline
from usageledger.records import KIND_USAGE

from .sinks import CollectSink


def payload(i: int) -> dict:
    return {"api_id": "openai", "service_key": "gpt-4o", "n": i}


@pytest.mark.parametrize("durability", ["committed", "fsync"])
def test_committed_raises_when_no_journal_on_disk_can_be_opened(tmp_path, durability):
    assert usageledger.JournalUnavailableError is JournalUnavailableError
    assert issubclass(JournalUnavailableError, JournalError)
    with tmpfs(tmp_path / "ro", ro=True) as ro, tmpfs(tmp_path / "ro2", ro=True) as ro2, FaultServer() as srv:
        d = PersistentDelivery(db_path=ro / "q.db", api_base=srv.url, durability=durability, fallback_dir=ro2)
        try:
            with pytest.raises(JournalUnavailableError) as err:
                d.enqueue(payload(1))
            assert "nothing was acknowledged" in str(err.value) and str(ro / "q.db") in str(err.value)
            s = d.stats()
            assert s["recorder"]["refused"] == 1 and s["recorder"]["written"] == 0
            assert d.flush(5) and srv.stored_ids() == set()  # nothing was kept to send
        finally:
            d.stop(2)


def test_committed_acknowledges_until_the_disk_is_full_then_raises(tmp_path):
    with tmpfs(tmp_path / "a", size="256k") as a, tmpfs(tmp_path / "b", size="256k") as b:
        p = Pipeline(CollectSink(), journal_path=a / "j.db", fallback_dir=b, durability="committed",
                     dispatch=False)
        acked: list[str] = []
        with pytest.raises(JournalUnavailableError):
            for i in range(2000):  # ~4 MB of payload against two 256 KiB mounts
                r = big_record(i)
                p.submit(r.id, KIND_USAGE, r)
                acked.append(r.id)
        stored = set()
        for journal in p.recorder.journals:
            stored |= {row["id"] for row in journal.items("ready", 5000)}
        # every acknowledged record is in a journal on disk, and nothing else is
        assert len(acked) > 10 and stored == set(acked)
        p.stop(1)


def test_buffered_keeps_records_in_memory_says_so_and_returns_to_disk(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    with tmpfs(tmp_path / "ro", ro=True) as ro, tmpfs(tmp_path / "ro2", ro=True) as ro2:
        sink = CollectSink()
        p = Pipeline(sink, journal_path=ro / "q.db", fallback_dir=ro2, dispatch=False, flush_interval=0.02)
        try:
            r = big_record(0)
            ids = [r.id]
            p.submit(r.id, KIND_USAGE, r)  # accepted: buffered keeps its tiers
            assert p.recorder.write_pending(5)
            s = p.stats()
            assert s["tier"] == "memory" and s["recorder"]["tier"] == "memory"
            assert "IN MEMORY" in caplog.text
            # the disk comes back: the real location is tried again and used
            subprocess.run(["mount", "-o", "remount,rw", str(ro)], check=True)
            deadline = time.monotonic() + 20
            while p.stats()["tier"] != "journal":
                assert time.monotonic() < deadline, p.stats()["recorder"]
                r = big_record(1)
                ids.append(r.id)
                p.submit(r.id, KIND_USAGE, r)
                time.sleep(0.2)
            assert SqliteJournal(ro / "q.db").stats()["ready"] >= 1
            p.start_dispatch()
            assert p.flush(10)  # the records held in memory meanwhile are delivered too
            assert sink.ids == set(ids)
        finally:
            p.stop(2)
