"""Disk faults are real: a small tmpfs that fills up, a read-only mount. The host
application keeps running, stats and logs say what happened, nothing that could be kept
is lost. (CI runs as root; mounting needs it.)"""

from __future__ import annotations

import contextlib
import subprocess

from usageledger.pipeline import Pipeline
from usageledger.records import KIND_USAGE, make_usage_record

from .sinks import CollectSink


@contextlib.contextmanager
def tmpfs(path, size="200k", ro=False):
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        if ro:
            subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def big_record(i: int):
    return make_usage_record("openai", "gpt-4o", i, 1, payload={"blob": "x" * 2000})


def test_disk_full_moves_to_fallback_and_loses_nothing(tmp_path, caplog):
    with tmpfs(tmp_path / "small", size="256k") as small:
        sink = CollectSink()
        p = Pipeline(sink, journal_path=small / "j.db", fallback_dir=tmp_path / "fallback",
                     dispatch=False, flush_interval=0.01)
        ids = []
        for i in range(600):  # ~1.3 MB of payload: far past the 256 KiB mount
            r = big_record(i)
            p.submit(r.id, KIND_USAGE, r)  # never raises
            ids.append(r.id)
        assert p.recorder.write_pending(10)
        s = p.stats()
        assert s["recorder"]["write_errors"] >= 1
        assert s["recorder"]["fallback_active"] is True
        assert s["dropped"] == 0
        assert "refused" in caplog.text and "fallback" in caplog.text
        # the dispatcher drains both journals: everything arrives exactly once
        p.start_dispatch()
        assert p.flush(30)
        assert sorted(sink.received) == sorted(ids)
        p.stop(5)


def test_read_only_directory_uses_fallback_from_start(tmp_path, caplog):
    with tmpfs(tmp_path / "ro", ro=True) as ro:
        sink = CollectSink()
        p = Pipeline(sink, journal_path=ro / "j.db", fallback_dir=tmp_path / "fb", batch_interval=0.02)
        r = make_usage_record("p", "m", 1, 1)
        p.submit(r.id, KIND_USAGE, r)
        assert p.flush(10)
        assert sink.ids == {r.id}
        assert str(ro / "j.db") in caplog.text
        assert p.stats()["journal"].startswith(str(tmp_path / "fb"))
        p.stop(2)


def test_every_disk_refuses_then_memory_then_counted_drops(tmp_path, caplog):
    with tmpfs(tmp_path / "a", size="128k") as a, tmpfs(tmp_path / "b", size="128k") as b:
        sink = CollectSink()
        # no timed writer retries: a retry in progress takes the held rows out of memory for
        # its duration, and this test reads the counters at one instant
        p = Pipeline(sink, journal_path=a / "j.db", fallback_dir=b, dispatch=False,
                     max_buffer=100, flush_interval=3600)
        for i in range(500):
            r = big_record(i)
            p.submit(r.id, KIND_USAGE, r)
        p.recorder.write_pending(10)
        s = p.stats()
        held = s["recorder"]["held_in_memory"]
        assert 0 < held <= 100  # memory up to the bound
        assert s["dropped"] > 0  # then drops, counted
        assert "DROPPED" in caplog.text
        stored = sum(j.stats()["ready"] for j in p.recorder.journals)
        assert stored + held + s["dropped"] == 500  # every record accounted for
        p.stop(1)
