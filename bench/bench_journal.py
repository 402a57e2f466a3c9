"""Journal and hot path with a busy application. Run by hand:
`.venv/bin/python bench/bench_journal.py [--quick] [--only ops|hot|cpu]`.

1. ops: SqliteJournal append, claim and ack of 5,000 rows with 0, 1 and 4 CPU-bound
   threads in the process, beside the per-row statements the journal used before
   (executemany, UPDATE ... RETURNING fetched row by row), kept here as the baseline;
2. hot: enqueue() median and p99 with the pipeline delivering to a live receiver and
   with no delivery; the mean of back-to-back enqueue() calls against queue.Queue.put;
3. cpu: producer CPU (resource.getrusage: user + system of this process) per 100,000
   records end to end (enqueue, writer, dispatcher, HTTP to a receiver in another
   process), beside PostHog's capture and an OpenTelemetry BatchSpanProcessor with an
   exporter that does nothing.

Every figure is printed with its baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import queue
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_core import PAYLOAD, per_call  # noqa: E402
from tests.support.receiver import run_receiver  # noqa: E402
from usageledger.delivery import PersistentDelivery  # noqa: E402
from usageledger.journal import JournalItem, SqliteJournal  # noqa: E402


def row(label: str, value: str, baseline: str = "", ratio: str = "") -> None:
    print(f"| {label} | {value} | {baseline} | {ratio} |", flush=True)


class PerRowJournal(SqliteJournal):
    """The previous statements: one step (and one GIL hand-over) per row."""

    def append(self, items):
        sql = f"INSERT INTO items(id, kind, data, created) VALUES (?, ?, ?, {time.time():.6f})"
        with self._tx() as c:
            c.executemany(sql, items)

    def claim(self, n, owner):
        with self._tx() as c:
            rows = c.execute(
                "UPDATE items SET state=1, owner=?, attempts=attempts+1 WHERE rowid IN ("
                " SELECT rowid FROM items WHERE state=0 AND not_before<=? ORDER BY rowid LIMIT ?)"
                " RETURNING rowid, id, kind, data, attempts", (owner, time.time(), n)).fetchall()
        rows.sort()
        with self._claims_lock:
            for rowid, id_, *_ in rows:
                self._claims.setdefault(id_, []).append(rowid)
        return [JournalItem(r[1], r[2], bytes(r[3]), r[4]) for r in rows]

    def ack(self, ids):
        with self._claims_lock:
            rowids = [(r,) for i in ids for r in self._claims.pop(i, ())]
        with self._tx() as c:
            c.executemany("DELETE FROM items WHERE rowid=? AND state=1", rowids)
            c.execute("UPDATE counters SET value=value+? WHERE name='delivered'", (len(rowids),))


def _spin(stop: threading.Event) -> None:
    while not stop.is_set():
        x = 0
        for i in range(20_000):
            x += i * i


def busy_threads(n: int):
    stop = threading.Event()
    ts = [threading.Thread(target=_spin, args=(stop,), daemon=True) for _ in range(n)]
    for t in ts:
        t.start()

    def end() -> None:
        stop.set()
        for t in ts:
            t.join()

    return end


def bench_ops(tmp: Path, reps: int) -> None:
    payload = PAYLOAD | {"payload": {"input_tokens": 120, "output_tokens": 48, "note": "x" * 150}}
    from usageledger.records import encode

    items = [(f"id-{i:08d}", "raw", encode(payload)) for i in range(5000)]
    idle: dict[str, float] = {}
    for busy in (0, 1, 4):
        for cls in (SqliteJournal, PerRowJournal):
            j = cls(tmp / f"{cls.__name__}-{busy}.db")
            times: dict[str, list[float]] = {"append": [], "claim": [], "ack": []}
            end = busy_threads(busy)
            try:
                time.sleep(0.05)
                for _ in range(reps):
                    t0 = time.perf_counter()
                    j.append(items)
                    t1 = time.perf_counter()
                    got = j.claim(5000, "bench")
                    t2 = time.perf_counter()
                    j.ack([g.id for g in got])
                    t3 = time.perf_counter()
                    assert len(got) == 5000
                    for k, v in zip(times, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                        v and times[k].append(v)
            finally:
                end()
            j.close()
            name = "one statement per batch" if cls is SqliteJournal else "per-row statements (before)"
            for op, vals in times.items():
                med = statistics.median(vals) * 1e3
                key = f"{cls.__name__}-{op}"
                if busy == 0:
                    idle[key] = med
                row(f"{op} 5,000 rows, {busy} busy thread(s), {name}", f"{med:.1f} ms",
                    f"idle {idle[key]:.1f} ms", f"{med / idle[key]:.1f}x")


def bench_hot(url: str, tmp: Path, n: int) -> None:
    for deliver in (True, False):
        d = PersistentDelivery(db_path=tmp / f"hot-{deliver}.db", api_base=url, max_buffer=10_000_000,
                               batch_interval=0.05)
        if not deliver:
            d._pipeline.dispatcher.stop(5)  # journal only: nothing claims, nothing posts
        med, p99 = per_call(lambda d=d: d.enqueue(PAYLOAD), n)
        where = "delivering to a live receiver" if deliver else "no delivery running"
        row(f"enqueue(), single calls timed, {where}", f"median {med / 1000:.2f} us, p99 {p99 / 1000:.2f} us")
        d.stop(60)
    # back-to-back: the mean per call of a tight loop, against queue.Queue.put of the
    # same dicts in the same run
    d = PersistentDelivery(db_path=tmp / "loop.db", api_base=url, max_buffer=10_000_000, batch_interval=0.05)
    payloads = [dict(PAYLOAD) for _ in range(n)]
    enq = d.enqueue
    t0 = time.perf_counter()
    for p in payloads:
        enq(p)
    ours = (time.perf_counter() - t0) / n
    d.stop(120)
    q: queue.Queue = queue.Queue()
    put = q.put
    t0 = time.perf_counter()
    for p in payloads:
        put(p)
    base = (time.perf_counter() - t0) / n
    row(f"enqueue() mean over {n:,} back-to-back calls (delivering)", f"{ours * 1e6:.2f} us",
        f"queue.Queue.put {base * 1e6:.2f} us", f"{ours / base:.1f}x")


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def bench_cpu(url: str, tmp: Path, n: int) -> None:
    import logging

    logging.getLogger("posthog").setLevel(logging.CRITICAL)
    per = 100_000 / n
    c0 = _cpu()
    d = PersistentDelivery(db_path=tmp / "cpu.db", api_base=url, max_buffer=10_000_000, batch_interval=0.05,
                           max_batch_size=1000)
    for _ in range(n):
        d.enqueue(PAYLOAD)
    assert d.flush(300)
    d.stop(30)
    ours = (_cpu() - c0) * per
    import posthog

    c0 = _cpu()
    ph = posthog.Client("bench", host=url, flush_interval=0.5, max_queue_size=10_000_000)
    for _ in range(n):
        ph.capture("llm_call", distinct_id="u1", properties=PAYLOAD["payload"])
    ph.flush()
    ph.shutdown()
    posthog_s = (_cpu() - c0) * per
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class NoOp(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    c0 = _cpu()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(NoOp(), max_queue_size=n + 1))
    tracer = provider.get_tracer("bench")
    for _ in range(n):
        span = tracer.start_span("llm_call", attributes=PAYLOAD["payload"])
        span.end()
    provider.force_flush()
    provider.shutdown()
    otel = (_cpu() - c0) * per
    row("producer CPU per 100,000 records, end to end (enqueue + writer + dispatcher + HTTP)",
        f"{ours:.2f} s", f"OpenTelemetry BatchSpanProcessor, no-op exporter {otel:.2f} s", f"{ours / otel:.2f}x")
    row("PostHog Client.capture, same records, end to end", f"{posthog_s:.2f} s",
        f"ours {ours:.2f} s", f"{posthog_s / ours:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller counts, for a smoke run")
    ap.add_argument("--only", choices=["ops", "hot", "cpu"], help="run one part")
    args = ap.parse_args()
    print("| figure | measured | baseline (same run) | ratio |\n|---|---|---|---|")
    with tempfile.TemporaryDirectory() as d, run_receiver() as url:
        tmp = Path(d)
        if args.only in (None, "ops"):
            bench_ops(tmp, 3 if args.quick else 7)
        if args.only in (None, "hot"):
            bench_hot(url, tmp, 20_000 if args.quick else 200_000)
        if args.only in (None, "cpu"):
            bench_cpu(url, tmp, 20_000 if args.quick else 100_000)


if __name__ == "__main__":
    main()
