"""The writer keeps up while the application's own threads are CPU-bound.

sqlite3 releases and retakes the GIL around every statement step; a journal that steps
once per row lets every CPU-bound thread of the application cut in between rows, and a
5,000-row append stretched from milliseconds to seconds. Then the buffered window (records
lost to a SIGKILL) grows to seconds and the buffer fills until the callers write it
themselves (caller-runs), so the application pays.
"""

from __future__ import annotations

import queue
import threading
import time

import pytest

from usageledger.journal import SqliteJournal
from usageledger.pipeline import Pipeline
from usageledger.records import KIND_USAGE, make_usage_record

from .sinks import CollectSink

RATE = 10_000  # records per second
SECONDS = 2.0
FLUSH = 0.05


def _spin(stop: threading.Event) -> None:
    while not stop.is_set():  # pure bytecode: holds the GIL until the switch interval
        x = 0
        for i in range(20_000):
            x += i * i


#: queue.Queue.put on the idle 2-core reference machine (docs/architecture.md, section 8)
REFERENCE_PUT_NS = 920


def _slowdown() -> float:
    """How much slower than the idle reference machine this one is right now (>= 1): the
    suite runs on machines shared with other jobs, where every thread gets a fraction of
    a core."""
    q: queue.Queue = queue.Queue()
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter_ns()
        for i in range(20_000):
            q.put(i)
        best = min(best, (time.perf_counter_ns() - t) / 20_000)
    return max(best / REFERENCE_PUT_NS, 1.0)


@pytest.mark.parametrize("busy", [1, 4])
def test_records_are_committed_within_a_few_flush_intervals_with_busy_threads(tmp_path, busy):
    slow = _slowdown()
    sink = CollectSink()
    p = Pipeline(sink, journal_path=tmp_path / "j.db", flush_interval=FLUSH, batch_interval=0.05)
    records = [make_usage_record("openai", "gpt-4o", i, 1, payload={"k": "v" * 200})
               for i in range(int(RATE * SECONDS))]
    committed_at: list[tuple[float, int]] = []  # (when, records committed so far)
    total = 0
    notify = p.recorder._on_commit

    def on_commit(n: int) -> None:
        nonlocal total
        total += n
        committed_at.append((time.monotonic(), total))
        notify(n)

    p.recorder._on_commit = on_commit
    stop = threading.Event()
    spinners = [threading.Thread(target=_spin, args=(stop,), daemon=True) for _ in range(busy)]
    for t in spinners:
        t.start()
    enqueued_at: list[float] = []
    longest = 0.0
    try:
        t0 = time.monotonic()
        i = 0
        while i < len(records):
            due = min(int((time.monotonic() - t0) * RATE) + 1, len(records))
            while i < due:  # every record that is due by now, each call timed alone
                r = records[i]
                s = time.monotonic()
                p.submit(r.id, KIND_USAGE, r)
                e = time.monotonic()
                longest = max(longest, e - s)
                enqueued_at.append(s)
                i += 1
            time.sleep(0.0005)
        # every record committed: wait a generous while, then look at each one's lag
        deadline = time.monotonic() + 30
        while total < len(records) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        for t in spinners:
            t.join()
    assert total == len(records)
    lags = []
    k = 0
    for idx, enq in enumerate(enqueued_at):
        while committed_at[k][1] <= idx:  # first commit that includes record idx (FIFO)
            k += 1
        lags.append(committed_at[k][0] - enq)
    lags.sort()
    worst, p99 = lags[-1], lags[int(len(lags) * 0.99)]
    print(f"busy={busy}: commit lag p50 {lags[len(lags) // 2] * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms,"
          f" max {worst * 1e3:.1f} ms; longest enqueue {longest * 1e3:.2f} ms;"
          f" caller_runs {p.recorder.caller_runs}; machine {slow:.1f}x slower than the reference")
    # A few flush intervals: 10 (0.5 s) on the idle reference machine, scaled by how slow
    # this machine is now. Measured while writing this, with the load average at 12 on 2
    # cores (Queue.put 9x slower than the reference): lag p99 0.8-1.9 s at one and four
    # busy threads; the per-row journal took 1.5 s and 2.5 s and its callers wrote for it.
    bound = 10 * FLUSH * slow
    assert worst < bound, (f"a record waited {worst:.3f} s for its commit (p99 {p99:.3f} s;"
                           f" bound {bound:.2f} s, this machine {slow:.1f}x slower than the reference)")
    assert p.recorder.caller_runs == 0  # the callers never had to write for the writer
    # a call can lose the GIL to each spinning thread (5 ms switch interval) and the CPU
    # to the machine; a caller-runs write of a chunk took 1.9 s with the per-row journal
    assert longest < 0.25, f"an enqueue() call took {longest * 1e3:.1f} ms"
    assert p.flush(30)
    assert sink.ids == {r.id for r in records}
    p.stop(5)


def test_each_journal_operation_is_a_few_statements_whatever_the_batch_size(tmp_path):
    """The property behind the test above, free of timing: sqlite3 gives the GIL away at
    each statement step, so a batch must cost a fixed number of statements, not one per
    row (executemany ran one per row)."""
    per_size = []
    for n in (10, 5000):
        j = SqliteJournal(tmp_path / f"j{n}.db")
        statements: list[str] = []
        # the trace reports each statement run (and again each statement of a trigger
        # body, which runs inside the one statement that fired it)
        j._conn().set_trace_callback(statements.append)
        items = [(f"{n}-{i}", "usage", bytes([i % 256]) * (i % 7)) for i in range(n)]
        counts = {}

        def count(name, fn, *args, statements=statements, counts=counts):
            statements.clear()
            out = fn(*args)
            counts[name] = len(statements)
            return out

        count("append", j.append, items)
        got = count("claim", j.claim, n, "me")
        assert [(g.id, g.kind, g.data) for g in got] == items  # payload bytes exact, in order
        assert {g.attempts for g in got} == {1}
        half, quarter = n // 2, n // 4
        count("ack", j.ack, [g.id for g in got[:half]])
        count("retry", j.retry, [g.id for g in got[half:half + quarter]], "down", time.time() + 3600)
        count("dead", j.dead, [g.id for g in got[half + quarter:]], "poison")
        assert max(counts.values()) <= 8, (n, counts)  # one statement + its trigger body
        per_size.append(counts)
        s = j.stats()
        assert (s["ready"], s["inflight"], s["dead"]) == (quarter, 0, n - half - quarter)
        assert (s["delivered"], s["retried"]) == (half, quarter)
        assert [d["id"] for d in j.items("dead", limit=n)] == [g.id for g in got[half + quarter:]]
        j.close()
    assert per_size[0] == per_size[1]  # 10 rows or 5,000: the same statements


def test_one_id_twice_in_the_journal_is_claimed_and_settled_twice(tmp_path):
    j = SqliteJournal(tmp_path / "j.db")
    j.append([("a", "raw", b"1"), ("b", "raw", b"2"), ("a", "raw", b"3")])
    first = j.claim(1, "me")
    assert [(g.id, g.data) for g in first] == [("a", b"1")]
    rest = j.claim(10, "me")  # "a" again while the first "a" is still in flight
    assert [(g.id, g.data) for g in rest] == [("b", b"2"), ("a", b"3")]
    j.ack(["a", "b"])
    assert not j.has_pending() and j.stats()["delivered"] == 3
