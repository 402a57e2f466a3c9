"""Daily NDJSON files: append, read, list, info; torn lines; two processes appending."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path

from usageledger.journal.base import JournalItem
from usageledger.records import KIND_RUN, encode
from usageledger.sinks.base import OK, Reject
from usageledger.telemetry import NdjsonSink, NDJSONWriter, RunEvent, RunRecord
from usageledger.telemetry.models import RunWrite
from usageledger.telemetry.ndjson import KIND_EVENT

ROOT = Path(__file__).resolve().parents[2]


def test_append_reads_back_in_the_file_of_the_records_own_date(tmp_path):
    w = NDJSONWriter(tmp_path)
    rec = RunRecord("r1", "a", "j", start_time="2026-03-04T23:59:59+00:00",
                    updated_at="2026-03-04T23:59:59+00:00")
    ev = RunEvent("r1", "step", "2026-03-05T00:00:01+00:00", {"k": [1]}, "e1")
    assert w.append(rec).name == "events_20260304.ndjson"
    assert w.append(ev).name == "events_20260305.ndjson"
    w.append({"custom": True, "timestamp": "2026-03-05T10:00:00Z"})
    assert w.read_file("20260304") == [rec.to_dict()]
    assert w.read_file("2026-03-05") == [ev.to_dict(), {"custom": True, "timestamp": "2026-03-05T10:00:00Z"}]
    assert w.read_file(date(2026, 3, 5)) == w.read_file(datetime(2026, 3, 5, 12, tzinfo=UTC))
    assert w.read_file("20200101") == []
    assert [p.name for p in w.list_files()] == ["events_20260304.ndjson", "events_20260305.ndjson"]
    (tmp_path / "notes.txt").write_text("not ours")
    info = w.get_file_info()
    assert [(i["date"], i["lines"]) for i in info] == [("2026-03-04", 1), ("2026-03-05", 2)]
    assert info[0]["size_bytes"] == Path(info[0]["path"]).stat().st_size


def test_a_torn_line_is_closed_and_skipped_never_glued_to_the_next(tmp_path):
    w = NDJSONWriter(tmp_path)
    path = w.path_for("20260101")
    path.write_bytes(b'{"ok": 1}\n{"torn": "li')  # a writer died mid-line
    w.append_lines(path, [b'{"ok": 2}'])
    assert w.read_file("20260101") == [{"ok": 1}, {"ok": 2}]
    assert path.read_bytes().endswith(b'{"torn": "li\n{"ok": 2}\n')


def test_sink_dates_lines_by_their_timestamp_and_rejects_garbage(tmp_path):
    w = NDJSONWriter(tmp_path)
    run = RunWrite("r1", "a", "j", start_time="2026-01-01T10:00:00+00:00",
                   updated_at="2026-01-02T00:00:01+00:00", id="w1", seq=2)
    ev = RunEvent("r1", "e", "2026-01-01T10:00:05+00:00", None, "e1")
    batch = [JournalItem("w1", KIND_RUN, encode(run), 1), JournalItem("e1", KIND_EVENT, encode(ev), 1),
             JournalItem("x", "usage", b"{}", 1), JournalItem("y", KIND_RUN, b"{not json", 1)]
    results = NdjsonSink(w).send(batch)
    assert results["w1"] is OK and results["e1"] is OK
    assert isinstance(results["x"], Reject) and isinstance(results["y"], Reject)
    assert w.read_file("20260102") == [{"record_type": "run", **json.loads(encode(run))}]
    assert w.read_file("20260101")[0]["record_type"] == "event"


WRITER = """
import sys
from pathlib import Path
from usageledger.telemetry import NDJSONWriter
w = NDJSONWriter(sys.argv[1])
tag, n = sys.argv[2], int(sys.argv[3])
pad = tag * 70_000  # lines far above PIPE_BUF: unlocked appends would interleave
path = w.path_for("20260101")
for i in range(n):
    lines = [('{"w": "%s", "i": %d, "j": %d, "pad": "%s"}' % (tag, i, j, pad)).encode() for j in range(3)]
    w.append_lines(path, lines)
"""


def test_two_processes_appending_one_file_never_tear_or_interleave(tmp_path):
    n = 60
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), tag, str(n)], cwd=ROOT)
             for tag in ("a", "b")]
    for p in procs:
        assert p.wait(120) == 0
    raw = NDJSONWriter(tmp_path).path_for("20260101").read_bytes()
    lines = raw.split(b"\n")
    assert lines[-1] == b""
    seen: dict[str, list[tuple[int, int]]] = {"a": [], "b": []}
    for line in lines[:-1]:
        obj = json.loads(line)  # every line whole
        assert obj["pad"] == obj["w"] * 70_000
        seen[obj["w"]].append((obj["i"], obj["j"]))
    for tag in ("a", "b"):
        # each process's batches whole and in its own order
        assert seen[tag] == [(i, j) for i in range(n) for j in range(3)]


def test_appends_wait_for_the_file_lock_another_process_holds(tmp_path):
    import fcntl
    import os
    import time

    w = NDJSONWriter(tmp_path)
    path = w.path_for("20260101")
    w.append_lines(path, [b'{"first": 1}'])
    fd = os.open(path, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), "c", "1"], cwd=ROOT)
        time.sleep(1.0)
        assert proc.poll() is None  # blocked on our lock
        assert w.read_file("20260101") == [{"first": 1}]
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    assert proc.wait(60) == 0
    assert [line.get("w") for line in w.read_file("20260101")] == [None, "c", "c", "c"]
